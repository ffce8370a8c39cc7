"""The OpAMP endpoint over aiohttp: WebSocket and plain HTTP on one path (/v1/opamp),
over TLS when given a certificate (server/tls.py).

The transports only move bytes and enforce limits; every protocol decision is made by
the sans-I/O core (opamp.session.ServerCore). This listener serves nothing else: the
read API, /metrics and the probes are on a second one (server/api.py), behind
authentication, because every agent can reach this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import generate_latest

from opamp_operator.opamp import wire
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import (
    AgentRecord,
    AgentState,
    ConnId,
    Event,
    EventKind,
    Reply,
    ServerCore,
    error_reply,
    message_kind,
)
from opamp_operator.server.api import Access, ApiServer, Guard, Unauthenticated
from opamp_operator.server.metrics import ServerMetrics
from opamp_operator.server.tls import ClientCertificate, TLSFiles, client_certificate

log = logging.getLogger(__name__)

OPAMP_PATH = "/v1/opamp"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Listen:
    """Where agents reach the server (/v1/opamp and nothing else), and over what."""

    host: str = "0.0.0.0"  # noqa: S104 - agents connect from other pods and machines
    """Listen address; every interface by default."""
    port: int = 4320
    """Listen port."""
    tls: TLSFiles = field(default_factory=TLSFiles)
    """Certificate, key and client CA; without a certificate, plaintext (ws://, http://)."""


@dataclass(frozen=True)
class Limits:
    """What one server process accepts before it sheds load or refuses a message."""

    max_message_bytes: int = 64 * 1024 * 1024
    """Largest message either way, after decompression. The spec recommends 64 MiB; a
    Collector config is rarely above a few hundred KiB."""
    max_websockets: int = 50_000
    """Open WebSockets; past it, new ones get 503 + Retry-After."""
    max_http_in_flight: int = 1_000
    """HTTP requests being handled at once; past it, 503 + Retry-After."""
    retry_after_seconds: int = 5
    """The Retry-After (and retry_info) a shed or standby request is given."""
    tick_seconds: float = 5.0
    """How often the core looks for stale and long-gone agents (ServerCore.tick)."""
    listen_backlog: int = 4096
    """Connections the kernel queues before the server accepts them (capped by
    net.core.somaxconn). aiohttp's 128 overflowed thousands of times in a reconnect
    storm of 10,000 agents, each dropped connect waiting out TCP's retry timer."""


EventListener = Callable[[Event, AgentRecord | None], None]


@dataclass(frozen=True)
class Credentials:
    """What a connection presented: its Authorization header and the client certificate
    TLS verified (each None when absent)."""

    authorization: str | None = None
    certificate: ClientCertificate | None = None


# A connection's credentials (and, when re-checking an open WebSocket, who it was
# authenticated as) → who the agent is (None: anonymous); raises Unauthenticated to
# refuse it. Async: a credential may need a round trip (a TokenReview), which must not
# block the loop.
Authenticator = Callable[[Credentials, AgentIdentity | None], Awaitable[AgentIdentity | None]]


async def certificate_identity(
    credentials: Credentials, _: AgentIdentity | None
) -> AgentIdentity | None:
    """The Authenticator without fleets to check tokens against (`serve`): a verified
    client certificate's names, else anonymous; an Authorization header proves nothing."""
    certificate = credentials.certificate
    return AgentIdentity(certificate=certificate.names) if certificate is not None else None


def credentials(request: web.Request) -> Credentials:
    transport = request.transport
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    return Credentials(request.headers.get("Authorization"), client_certificate(peercert))


class OpAMPServer:
    """Binds the core to aiohttp; one instance per process (or per test)."""

    def __init__(
        self,
        core: ServerCore,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        authenticate: Authenticator = certificate_identity,
    ) -> None:
        self.core = core
        self.authenticate = authenticate
        self.limits = limits or Limits()
        self.clock = clock
        self.metrics = ServerMetrics()
        self._sockets: dict[ConnId, web.WebSocketResponse] = {}
        # What each WebSocket authenticated with, and as whom: re-checked by revalidate().
        self._sessions: dict[ConnId, tuple[Credentials, AgentIdentity | None]] = {}
        self._revalidating: asyncio.Task[int] | None = None
        self._http_in_flight = 0
        self._listeners: list[EventListener] = []
        self._ready = False
        self._standby = False
        self._ticker: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._offers_due = False
        self._flusher: asyncio.Task[None] | None = None
        core.wake = self._wake

    # ---- wiring ----------------------------------------------------------------------

    def subscribe(self, listener: EventListener) -> None:
        """Called with every state event (the fleet layer debounces on top of this)."""
        self._listeners.append(listener)

    def _publish(self, events: Iterable[Event]) -> None:
        for event in events:
            agent = self.core.agents.get(event.instance_uid)
            for listener in self._listeners:
                listener(event, agent)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_message_bytes)
        app.router.add_route("*", OPAMP_PATH, self.handle_opamp)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        self._ticker = asyncio.create_task(self._tick_forever(), name="opamp-tick")
        self._ready = True

    async def _on_shutdown(self, _: web.Application) -> None:
        """Close every WebSocket with 1001 (going away) so agents reconnect elsewhere."""
        self._ready = False
        if self._ticker is not None:
            self._ticker.cancel()
        await self._close_all(b"server shutting down")

    async def _close_all(self, reason: bytes) -> None:
        for ws in list(self._sockets.values()):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=reason)

    def revalidate(self) -> None:
        """Re-check, soon, the credentials of every WebSocket (see `revalidated`)."""
        if self._revalidating is None or self._revalidating.done():
            self._revalidating = asyncio.get_running_loop().create_task(self.revalidated())

    async def revalidated(self) -> int:
        """Close (1008, policy violation) every WebSocket whose credentials no longer
        authenticate it as the identity it connected as: a token rotated or revoked, a
        fleet deleted, a pod deleted under its ServiceAccount token. HTTP agents
        authenticate on every request and need nothing here. Returns how many closed."""
        revoked: list[tuple[web.WebSocketResponse, str]] = []
        for conn, (creds, identity) in list(self._sessions.items()):
            if creds.authorization is None and creds.certificate is None:
                continue  # anonymous: nothing granted, nothing to revoke
            try:
                now_as = await self.authenticate(creds, identity)
            except Unauthenticated as exc:
                why = str(exc)
            else:
                if now_as == identity:
                    continue
                why = "the credentials now identify someone else"
            if conn in self._sockets:
                revoked.append((self._sockets[conn], why))
        for ws, why in revoked:
            self.metrics.errors.labels("revoked").inc()
            self._spawn_close(
                ws.close(code=WSCloseCode.POLICY_VIOLATION, message=why[:120].encode())
            )
        return len(revoked)

    def _spawn_close(self, closing: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def set_standby(self, standby: bool) -> None:
        """A standby replica (see k8s/peering.py) is not ready and turns agents away;
        becoming standby closes the WebSockets it holds (1001) so agents go to the
        active replica."""
        if standby and not self._standby:
            self._spawn_close(self._close_all(b"standby replica"))
        self._standby = standby

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.tick_seconds)
            self._publish(self.core.tick(self.clock()))
            self._update_gauges()

    def _update_gauges(self) -> None:
        counts = dict.fromkeys(AgentState, 0)
        for agent in self.core.agents.values():
            counts[agent.state] += 1
        for state, n in counts.items():
            self.metrics.agents.labels(state.value).set(n)
        self.metrics.connections.set(len(self._sockets))

    def _wake(self) -> None:
        """The core has offers to send: flush them from a task of their own, coalescing
        every wake that comes while one flush is queued or running."""
        self._offers_due = True
        if self._flusher is not None and not self._flusher.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop, so no WebSocket to send on; HTTP agents get it in a reply
        self._flusher = loop.create_task(self._flush_offers())

    async def _flush_offers(self) -> None:
        while self._offers_due:
            self._offers_due = False
            await self.push_offers()

    async def offers_flushed(self) -> None:
        """Wait until every offer queued so far has been sent (tests, shutdown)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def push_offers(self) -> int:
        """Send changed desired configs to WebSocket agents now; returns how many."""
        sent = 0
        for conn, msg in self.core.pending_offers():
            ws = self._sockets.get(conn)
            if ws is not None and not ws.closed:
                await self._send_ws(ws, msg)
                sent += 1
        return sent

    # ---- OpAMP -----------------------------------------------------------------------

    async def handle_opamp(self, request: web.Request) -> web.StreamResponse:
        if self._standby:
            return self._unavailable("standby", "this operator replica is on standby")
        presented = credentials(request)
        try:
            identity = await self.authenticate(presented, None)
        except Unauthenticated as exc:
            return self._unauthorized(str(exc))
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, presented, identity)
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(
                request.method, ["POST"], text="OpAMP over HTTP uses POST"
            )
        if request.content_type != PROTOBUF:
            self.metrics.errors.labels("content_type").inc()
            raise web.HTTPUnsupportedMediaType(
                text=f"OpAMP over HTTP needs Content-Type: {PROTOBUF}, got {request.content_type!r}"
            )
        return await self._http(request, identity)

    def _unauthorized(self, text: str) -> web.Response:
        """401 before any OpAMP exchange (WebSocket upgrade or HTTP POST alike), as the
        spec's transports expect; the reason is in a ServerErrorResponse too."""
        self.metrics.errors.labels("unauthorized").inc()
        body = wire.encode_http(error_reply(pb.ServerErrorResponseType_BadRequest, text))
        return web.Response(
            status=401,
            body=body,
            content_type=PROTOBUF,
            headers={"WWW-Authenticate": 'Bearer realm="opamp"'},
        )

    async def _http(
        self, request: web.Request, identity: AgentIdentity | None
    ) -> web.StreamResponse:
        if self._http_in_flight >= self.limits.max_http_in_flight:
            return self._shed("http")
        self._http_in_flight += 1
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                self.metrics.errors.labels("too_large").inc()
                raise web.HTTPRequestEntityTooLarge(
                    max_size=self.limits.max_message_bytes,
                    actual_size=request.content_length or 0,
                    text=f"AgentToServer larger than {self.limits.max_message_bytes} bytes",
                ) from None
            except (zlib.error, gzip.BadGzipFile, EOFError) as exc:
                return self._http_bad_request(f"request body is not valid gzip: {exc}")
            self.metrics.messages.labels("in", "http").inc()
            self.metrics.bytes.labels("in", "http").inc(len(body))
            try:
                msg = wire.decode_agent_message(body)
            except wire.WireError as exc:
                return self._http_bad_request(str(exc))
            self.metrics.agent_messages.labels(message_kind(msg)).inc()
            peer = request.remote or ""
            reply = self.core.receive(msg, self.clock(), peer=peer, identity=identity)
            self._after_reply(reply)
            payload = wire.encode_http(reply.message)
            self.metrics.messages.labels("out", "http").inc()
            self.metrics.bytes.labels("out", "http").inc(len(payload))
            response = web.Response(body=payload, content_type=PROTOBUF)
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                response.enable_compression()
            return response
        finally:
            self._http_in_flight -= 1

    def _http_bad_request(self, text: str) -> web.Response:
        self.metrics.errors.labels("bad_request").inc()
        body = wire.encode_http(error_reply(pb.ServerErrorResponseType_BadRequest, text))
        return web.Response(status=400, body=body, content_type=PROTOBUF)

    def _shed(self, transport: str) -> web.Response:
        """Past the limit: 503 + Retry-After, and the same as a ServerErrorResponse."""
        return self._unavailable(f"shed_{transport}", "server is at its connection limit")

    def _unavailable(self, reason: str, text: str) -> web.Response:
        self.metrics.errors.labels(reason).inc()
        retry = self.limits.retry_after_seconds
        body = wire.encode_http(error_reply(pb.ServerErrorResponseType_Unavailable, text, retry))
        return web.Response(
            status=503, body=body, content_type=PROTOBUF, headers={"Retry-After": str(retry)}
        )

    async def _websocket(
        self, request: web.Request, presented: Credentials, identity: AgentIdentity | None
    ) -> web.StreamResponse:
        if len(self._sockets) >= self.limits.max_websockets:
            return self._shed("websocket")
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_message_bytes)
        await ws.prepare(request)
        now = self.clock()
        conn = self.core.open(now, peer=request.remote or "", identity=identity)
        self._sockets[conn] = ws
        self._sessions[conn] = (presented, identity)
        try:
            async for frame in ws:
                if frame.type == WSMsgType.BINARY:
                    if not await self._ws_message(conn, ws, frame.data):
                        break
                elif frame.type == WSMsgType.TEXT:
                    self.metrics.errors.labels("text_frame").inc()
                    await ws.close(
                        code=WSCloseCode.UNSUPPORTED_DATA, message=b"OpAMP uses binary frames"
                    )
                    break
                elif frame.type == WSMsgType.ERROR:
                    self.metrics.errors.labels("too_large" if _too_big(ws) else "ws_error").inc()
                    log.info("WebSocket from %s failed: %s", request.remote, ws.exception())
                    break
        finally:
            self._sockets.pop(conn, None)
            self._sessions.pop(conn, None)
            self._publish(self.core.close(conn, self.clock()))
        return ws

    async def _ws_message(self, conn: ConnId, ws: web.WebSocketResponse, data: bytes) -> bool:
        """Handle one frame; False when the connection must end."""
        self.metrics.messages.labels("in", "websocket").inc()
        self.metrics.bytes.labels("in", "websocket").inc(len(data))
        try:
            msg = wire.decode_agent_message(wire.split_ws_frame(data))
        except wire.WireError as exc:
            self.metrics.errors.labels("bad_request").inc()
            log.info("closing WebSocket %d: %s", conn, exc)
            await self._send_ws(ws, error_reply(pb.ServerErrorResponseType_BadRequest, str(exc)))
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=str(exc)[:120].encode())
            return False
        self.metrics.agent_messages.labels(message_kind(msg)).inc()
        reply = self.core.receive(msg, self.clock(), conn=conn)
        self._after_reply(reply)
        await self._send_ws(ws, reply.message)
        if reply.close:
            await ws.close()
            return False
        return True

    async def _send_ws(self, ws: web.WebSocketResponse, msg: pb.ServerToAgent) -> None:
        payload = wire.encode_ws(msg)
        if len(payload) > self.limits.max_message_bytes:
            self.metrics.errors.labels("response_too_large").inc()
            log.error("not sending a %d-byte ServerToAgent: over the limit", len(payload))
            return
        self.metrics.messages.labels("out", "websocket").inc()
        self.metrics.bytes.labels("out", "websocket").inc(len(payload))
        with contextlib.suppress(ConnectionResetError):
            await ws.send_bytes(payload)

    def _after_reply(self, reply: Reply) -> None:
        if reply.message.HasField("remote_config"):
            self.metrics.config_offers.inc()
        self._publish(reply.events)
        if any(e.kind in (EventKind.CONNECTED, EventKind.DISCONNECTED) for e in reply.events):
            # Only the count at hand: counting agents by state walks them all, which per
            # connect made a connect storm quadratic (36% of the server's CPU at 10,000
            # agents). The by-state gauge is refreshed on the tick and on each scrape.
            self.metrics.connections.set(len(self._sockets))

    # ---- what the API listener shows ------------------------------------------------

    def not_ready(self) -> str | None:
        """Why /readyz fails, or None when ready."""
        if not self._ready:
            return "not ready"
        if self._standby:
            return "standby"
        return None

    def metrics_payload(self) -> bytes:
        self._update_gauges()
        return generate_latest(self.metrics.registry)

    def api(self, guard: Guard, show_config: Callable[[str], str], all_agents: Access) -> ApiServer:
        return ApiServer(
            agents=lambda: self.core.agents,
            desired=self.core.desired.config_for,
            metrics=self.metrics_payload,
            ready=self.not_ready,
            guard=guard,
            show_config=show_config,
            all_agents=all_agents,
        )


def _too_big(ws: web.WebSocketResponse) -> bool:
    return ws.close_code == WSCloseCode.MESSAGE_TOO_BIG
