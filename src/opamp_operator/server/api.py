"""The server's second listener: the read API, /metrics and the probes, away from the port
agents reach.

Agent data (attributes, effective configs, drift diffs) is readable only by someone a
`Guard` authenticates and authorizes: under `run`, Kubernetes itself (TokenReview and
SubjectAccessReview, as controller-runtime's secure metrics filter and kube-rbac-proxy
do; k8s/access.py); under `serve`, a static bearer token. /healthz and /readyz stay
unauthenticated, as on controller-runtime's probe port: they say nothing about agents.

Fail closed: a handler that returns without having asked the guard about the request
is answered 403, so a route added without an authorization check leaks nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from opamp_operator.opamp.attributes import to_dict
from opamp_operator.opamp.configs import RemoteConfig, files_of
from opamp_operator.opamp.ids import uid_str
from opamp_operator.opamp.packages import package_report
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import AgentRecord
from opamp_operator.server.tls import TLSFiles
from opamp_operator.server.workers import ConfigWorkers, WorkerError

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
_AUTHORIZED = web.RequestKey("opamp_operator.authorized", bool)


@dataclass(frozen=True)
class ApiListen:
    """Where the read API, /metrics and the probes listen, and over what."""

    host: str = "127.0.0.1"
    """Loopback by default; the chart listens on every interface for Prometheus."""
    port: int = 8443
    """The API port (controller-runtime's secure metrics port)."""
    tls: TLSFiles = field(default_factory=TLSFiles)
    """Certificate files; without them `run` serves a self-signed certificate."""
    token_file: Path | None = None
    """`serve`: the bearer token its API requires (required off loopback)."""

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a listener on `host`."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class User:
    """Who a request authenticated as, in Kubernetes' terms (authentication.k8s.io)."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Sorted (key, values) pairs: hashable, so a user can key the review caches."""


@dataclass(frozen=True)
class ResourceAccess:
    """A verb on a namespaced object, as a SubjectAccessReview's resourceAttributes."""

    verb: str
    group: str
    resource: str
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True)
class PathAccess:
    """A verb on a path, as a SubjectAccessReview's nonResourceAttributes (/metrics)."""

    path: str
    verb: str = "get"


Access = ResourceAccess | PathAccess


class Unauthenticated(Exception):  # noqa: N818 - read as a verdict, like aiohttp's HTTPxxx
    """A credential was refused (not merely absent): by an API Guard, or by the agents'
    port's Authenticator (server/app.py)."""


_USER = web.RequestKey("opamp_operator.user", User)


class Guard(Protocol):
    """Who may read what. `authenticate` returns None for a request without credentials
    and raises Unauthenticated for one whose credentials are refused."""

    async def authenticate(self, request: web.Request) -> User | None: ...

    async def allowed(self, user: User, access: Access) -> bool: ...


class TokenGuard:
    """`serve`'s guard: one static bearer token, read from a file at start; whoever
    holds it may read everything."""

    def __init__(self, token: str) -> None:
        if not token.strip():
            raise ValueError("the API token file is empty")
        self._digest = hashlib.sha256(token.strip().encode()).digest()

    @classmethod
    def from_file(cls, path: Path) -> TokenGuard:
        return cls(path.read_text())

    async def authenticate(self, request: web.Request) -> User | None:
        token = bearer_token(request)
        if token is None:
            return None
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest):
            raise Unauthenticated("the bearer token is not the API token")
        return User("api-token")

    async def allowed(self, user: User, access: Access) -> bool:
        return True


class LoopbackGuard:
    """`serve` on a loopback address without a token: whoever can reach loopback is
    already on the machine, as with a kubelet's read-only port bound to localhost."""

    async def authenticate(self, request: web.Request) -> User | None:
        return User("loopback")

    async def allowed(self, user: User, access: Access) -> bool:
        return True


def bearer_of(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer` header, for the API and the agents' port
    alike; None without a header; any other scheme is refused (Unauthenticated)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def bearer_token(request: web.Request) -> str | None:
    """The request's bearer token; None without an Authorization header."""
    return bearer_of(request.headers.get("Authorization"))


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _unauthorized(message: str) -> web.Response:
    return _error(401, message, **{"WWW-Authenticate": 'Bearer realm="opamp-operator"'})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(guard: Guard) -> Middleware:
    """Authenticate every request but the probes; answer 403 for a handler that never
    asked `authorize`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        try:
            user = await guard.authenticate(request)
        except Unauthenticated as exc:
            return _unauthorized(str(exc))
        if user is None:
            return _unauthorized("this API needs a bearer token or a client certificate")
        request[_USER] = user
        request[_AUTHORIZED] = False
        try:
            response = await handler(request)
        except web.HTTPForbidden as exc:
            return _error(403, exc.text or "forbidden")
        if not request[_AUTHORIZED]:
            log.error("%s %s answered without an authorization check", request.method, request.path)
            return _error(403, "forbidden")
        return response

    return middleware


RENDERS_PER_USER = 2
"""Requests that render an agent's config (masked, or a diff) one user may have in flight;
more get 429 + Retry-After. Renders run on a worker pool of their own (seconds each at
the parser's caps): without a bound, one reader could keep it busy for every other."""


class ApiContext:
    """What a read API handler asks: may this request's user do `access`? And may they
    start one more render?"""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self._rendering: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def rendering(self, request: web.Request) -> AsyncIterator[None]:
        """Around a request that renders configs: 429 + Retry-After when its user already
        has RENDERS_PER_USER in flight (as the apiserver's priority and fairness answers
        a user over their share)."""
        name = request[_USER].name
        if self._rendering[name] >= RENDERS_PER_USER:
            raise web.HTTPTooManyRequests(
                headers={"Retry-After": "1"},
                text=f"{name} already has {RENDERS_PER_USER} config renders in flight; "
                "retry after 1 s",
            )
        self._rendering[name] += 1
        try:
            yield
        finally:
            self._rendering[name] -= 1
            if not self._rendering[name]:
                del self._rendering[name]

    async def may(self, request: web.Request, access: Access) -> bool:
        request[_AUTHORIZED] = True
        return await self.guard.allowed(request[_USER], access)

    async def require(self, request: web.Request, access: Access) -> None:
        """403 unless the user may; the message names the missing permission as
        kube-rbac-proxy does, so an admin knows what to grant."""
        if not await self.may(request, access):
            user: User = request[_USER]
            raise web.HTTPForbidden(text=f"{user.name} cannot {describe(access)}")


def describe(access: Access) -> str:
    if isinstance(access, PathAccess):
        return f"{access.verb} path {access.path}"
    what = f"{access.resource}.{access.group}" if access.group else access.resource
    named = f" {access.name}" if access.name else ""
    where = f" in namespace {access.namespace}" if access.namespace else " cluster-wide"
    return f"{access.verb} {what}{named}{where}"


class ApiServer:
    """The probes, /metrics and the raw agents listing of one OpAMP server, behind a
    guard; the operator adds its fleet routes (k8s/api.py) to the same application."""

    def __init__(
        self,
        *,
        agents: Callable[[], Mapping[bytes, AgentRecord]],
        desired: Callable[[AgentRecord], RemoteConfig | None],
        metrics: Callable[[], bytes],
        ready: Callable[[], str | None],
        guard: Guard,
        show_config: ShowConfig,
        all_agents: Access,
    ) -> None:
        """`show_config` turns an effective config into what may be shown: secrets
        masked (fleet.drift.masked_config_text, off the loop: shown_off_loop); this
        layer does not parse configs.
        `all_agents` is the permission the raw agent routes need: they show every agent
        of every fleet, mapped or not."""
        self._agents = agents
        self._all_agents = all_agents
        self._show_config = show_config
        self._desired = desired
        self._metrics = metrics
        self._ready = ready
        self.context = ApiContext(guard)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[guarded(self.context.guard)])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/api/v1/agents", self.list_agents)
        app.router.add_get("/api/v1/agents/{uid}", self.get_agent)
        return app

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.Response:
        why_not = self._ready()
        if why_not is not None:
            raise web.HTTPServiceUnavailable(text=why_not)
        return web.Response(text="ok")

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        await self.context.require(request, PathAccess("/metrics"))
        return web.Response(body=self._metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def list_agents(self, request: web.Request) -> web.Response:
        """Every agent the server knows, mapped or not: the whole agent port's view, so
        a cluster-level grant rather than any one fleet's."""
        await self.context.require(request, self._all_agents)
        agents = [agent_json(a, self._desired(a)) for a in self._agents().values()]
        agents.sort(key=lambda a: str(a["instance_uid"]))
        return web.json_response({"agents": agents, "count": len(agents)})

    async def get_agent(self, request: web.Request) -> web.Response:
        await self.context.require(request, self._all_agents)
        wanted = request.match_info["uid"].replace("-", "").lower()
        for agent in self._agents().values():
            if agent.instance_uid.hex() == wanted:
                out = agent_json(agent, self._desired(agent))
                if agent.effective_config is not None:
                    async with self.context.rendering(request):
                        out["effective_config"] = {
                            name: await self._show_config(f.body.decode(errors="replace"))
                            for name, f in files_of(agent.effective_config.config_map).items()
                        }
                return web.json_response(out)
        raise web.HTTPNotFound(text=f"no agent with instance_uid {request.match_info['uid']}")


ShowConfig = Callable[[str], Awaitable[str]]


async def rendered(workers: ConfigWorkers, render: Callable[..., str], *args: Any) -> str:
    """render(*args) on a config worker: rendering an agent's config parses it (seconds
    at the parser's caps), which must not hold the loop that answers agents. What a
    reader is shown when it cannot finish in the worker's bounds says why."""
    try:
        return await workers.run(render, *args)
    except WorkerError as exc:
        return f"# not shown: rendering it {exc}\n"


def shown_off_loop(show: Callable[[str], str], workers: ConfigWorkers) -> ShowConfig:
    """`show` (a module-level function: it is pickled) as a ShowConfig, on `workers`."""

    async def run(text: str) -> str:
        return await rendered(workers, show, text)

    return run


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="seconds")


def _package_statuses(statuses: pb.PackageStatuses | None) -> dict[str, Any] | None:
    """What the agent reports of its packages (bounded: session.STATUS_BYTES), by name."""
    if statuses is None:
        return None
    packages = {}
    for name in sorted(statuses.packages):
        report = package_report(statuses, name)
        assert report is not None
        packages[name] = {
            "status": report.state.value if report.state is not None else None,
            "version": report.has_version,
            "offered_version": statuses.packages[name].server_offered_version,
            "offered_hash": report.offered_hash,
            "error_message": report.error,
        }
    return {
        "all_packages_hash": statuses.server_provided_all_packages_hash.hex(),
        "error_message": statuses.error_message,
        "packages": packages,
    }


def _settings_status(status: pb.ConnectionSettingsStatus | None) -> dict[str, str] | None:
    if status is None:
        return None
    return {
        "status": pb.ConnectionSettingsStatuses.Name(status.status).removeprefix(
            "ConnectionSettingsStatuses_"
        ),
        "hash": status.last_connection_settings_hash.hex(),
        "error_message": status.error_message,
    }


def agent_json(agent: AgentRecord, desired: RemoteConfig | None = None) -> dict[str, Any]:
    """The read API's view of an agent; hashes in hex, attributes as plain values.

    `drifted` here means the agent does not run the config the server wants for it (it
    reported another hash, or failed to apply it); comparing effective configs
    semantically is the fleet layer's job.
    """
    description = agent.description
    status = agent.remote_config_status
    health = agent.health
    out: dict[str, Any] = {
        "instance_uid": uid_str(agent.instance_uid),
        "transport": agent.transport.value,
        "state": agent.state.value,
        "connected": agent.connected,
        "stale": agent.stale,
        "peer": agent.peer,
        "identifying_attributes": to_dict(description.identifying_attributes)
        if description
        else {},
        "non_identifying_attributes": (
            to_dict(description.non_identifying_attributes) if description else {}
        ),
        "capabilities": agent.capabilities,
        "health": (
            {"healthy": health.healthy, "status": health.status, "last_error": health.last_error}
            if health
            else None
        ),
        "remote_config_status": (
            {
                "status": pb.RemoteConfigStatuses.Name(status.status).removeprefix(
                    "RemoteConfigStatuses_"
                ),
                "hash": status.last_remote_config_hash.hex(),
                "error_message": status.error_message,
            }
            if status
            else None
        ),
        "desired_config_hash": desired.hash.hex() if desired else None,
        "drifted": desired is not None
        and (
            status is None
            or status.last_remote_config_hash != desired.hash
            or status.status != pb.RemoteConfigStatuses_APPLIED
        ),
        "offered_config_hash": agent.offered_config_hash.hex()
        if agent.offered_config_hash
        else None,
        "effective_config_hash": agent.effective_config_hash.hex()
        if agent.effective_config_hash
        else None,
        "connected_at": _iso(agent.connected_at),
        "last_seen": _iso(agent.last_seen),
        "sequence_num": agent.sequence_num,
        "messages": agent.messages,
        "heartbeat_seconds": agent.heartbeat_seconds,
        "offered_heartbeat_seconds": agent.offered_heartbeat_seconds,
        "connection_settings_status": _settings_status(agent.connection_settings_status),
        "offered_packages_hash": agent.offered_packages_hash.hex()
        if agent.offered_packages_hash
        else None,
        "package_statuses": _package_statuses(agent.package_statuses),
    }
    components = agent.available_components
    if components is not None:
        out["available_components"] = {
            kind: sorted(details.sub_component_map)
            for kind, details in components.components.items()
        }
    return out
