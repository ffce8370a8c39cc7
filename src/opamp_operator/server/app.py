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
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from prometheus_client import generate_latest

from opamp_operator.opamp import wire
from opamp_operator.opamp.endpoint import AgentEndpoint, agent_endpoint
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import (
    AgentRecord,
    AgentState,
    ConnId,
    Event,
    EventKind,
    MiB,
    Refusal,
    Reply,
    ServerCore,
    at_least_one,
    error_reply,
    message_kind,
)
from opamp_operator.server.api import Access, ApiServer, Guard, ShowConfig, Unauthenticated
from opamp_operator.server.looplag import LagWatch
from opamp_operator.server.metrics import ServerMetrics
from opamp_operator.server.tls import ClientCertificate, TLSFiles, client_certificate
from opamp_operator.server.workers import ConfigWorkers

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
    """What one server process accepts, and for how long it waits, before it refuses a
    message or sheds load; each default is owned here (per-agent caps: AgentLimits).
    Sized for the chart's 2048 Mi memory limit: an idle server is ~80 MiB, a TLS agent
    ~57 KiB, a 16 MiB message ~80 MiB while it is decoded and kept (docs/benchmarks.md,
    docs/opamp-server.md)."""

    max_message_bytes: int = 16 * MiB
    """Largest message either way, after decompression. The spec recommends 64 MiB, but
    one 16 MiB effective config raised RSS by ~80 MiB, so a few 64 MiB messages would
    end a pod; a Collector config is rarely above a few hundred KiB."""
    max_in_flight_bytes: int = 64 * MiB
    """Bytes of messages being received or handled at once, over both transports: HTTP
    bodies are admitted by Content-Length before they are read (or charged as they
    arrive, chunked or gzip), WebSocket messages as their bytes arrive. The first
    UNCHARGED_BYTES of each body, and of what a WebSocket has sent and is not yet
    handled, are not charged, so heartbeats and status reports never wait for large
    messages. Past it: 503 + Retry-After, or WebSocket 1013."""
    max_websockets: int = 10_000
    """Open WebSockets; past it, new ones get 503 + Retry-After. 10,000 TLS agents hold
    ~560 MiB (a reconnect storm of them peaked at 697 MiB); raise it with the memory
    limit (~60 KiB per TLS agent)."""
    max_http_in_flight: int = 1_000
    """HTTP requests being handled at once, counted once their body has been read (a
    slow sender holds no slot); past it, 503 + Retry-After."""
    retry_after_min_seconds: int = 30
    """Shed requests are told to come back after a whole number of seconds drawn
    uniformly from [min, max) (Retry-After and retry_info alike), so a reconnect storm
    spreads out. The spec's minimum recommended retry interval is 30 s."""
    retry_after_max_seconds: int = 60
    """See retry_after_min_seconds; equal to it: no jitter."""
    header_timeout_seconds: float = 10.0
    """A connection must complete its TLS handshake within this, and its request headers
    (an HTTP request or a WebSocket upgrade) this long after that, or after the first
    byte of a later request on a kept-alive connection; else it is closed (slowloris)."""
    body_timeout_seconds: float = 30.0
    """An HTTP body, or a WebSocket message from its first byte (fragments and all), must
    arrive within this (408, or WebSocket close 1008). 16 MiB in 30 s is 4.5 Mbit/s."""
    keepalive_seconds: float = 60.0
    """An idle kept-alive HTTP connection is closed after this; longer than the 30 s an
    HTTP agent polls at by default, so polls reuse their connection."""
    first_message_timeout_seconds: float = 10.0
    """A WebSocket must carry its first AgentToServer within this (else close 1008)."""
    ws_ping_seconds: float = 30.0
    """A WebSocket silent this long is pinged, and closed (1006) when no pong comes back
    within half of it: a dead peer is let go within 45 s."""
    shutdown_seconds: float = 10.0
    """On shutdown every WebSocket is closed (1001) at once, and requests still being
    handled finish, each within this; both fit the chart's 30 s termination grace."""
    tick_seconds: float = 5.0
    """How often the core looks for stale and long-gone agents (ServerCore.tick)."""
    listen_backlog: int = 4096
    """Connections the kernel queues before the server accepts them (capped by
    net.core.somaxconn). aiohttp's 128 overflowed thousands of times in a reconnect
    storm of 10,000 agents, each dropped connect waiting out TCP's retry timer."""
    config_workers: int = 1
    """Worker processes per pool that parse, compare and render agents' configs, never
    on the event loop's process (server/workers.py): one pool judges drift for the
    status and rollout ticks and the read API, one renders configs and diffs for
    readers, so readers never delay the ticks."""
    config_budget_seconds: float = 30.0
    """One comparison or render of an agent's config must finish within this, else its
    worker is killed and replaced, and the config is reported as not comparable. The
    worst config the parser accepts takes ~6 s on 2 cores (benchmarks/drift_worst.py)."""
    config_worker_memory_bytes: int = 256 * MiB
    """Address space of each config worker; a call past it fails (MemoryError) and the
    config is reported as not comparable. The worst config the parser accepts peaked
    at 160 MiB (benchmarks/drift_worst.py cases, VmPeak)."""

    def __post_init__(self) -> None:
        at_least_one(
            self,
            "max_message_bytes",
            "max_in_flight_bytes",
            "max_websockets",
            "max_http_in_flight",
            "listen_backlog",
            "config_workers",
            "config_worker_memory_bytes",
        )
        for name in (
            "header_timeout_seconds",
            "body_timeout_seconds",
            "keepalive_seconds",
            "first_message_timeout_seconds",
            "ws_ping_seconds",
            "shutdown_seconds",
            "tick_seconds",
            "config_budget_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.retry_after_min_seconds <= self.retry_after_max_seconds:
            raise ValueError(
                "retry_after_min_seconds must be between 0 and retry_after_max_seconds"
            )

    def retry_after(self, rng: random.Random) -> int:
        """Seconds a shed request is told to wait: uniform in [min, max)."""
        low, high = self.retry_after_min_seconds, self.retry_after_max_seconds
        return rng.randrange(low, high) if high > low else low


def config_workers(
    limits: Limits, pool: str, failed: Callable[[str], None] = lambda reason: None
) -> ConfigWorkers:
    """A pool of config worker processes as `limits` bound them (started on first use)."""
    return ConfigWorkers(
        pool,
        processes=limits.config_workers,
        budget_seconds=limits.config_budget_seconds,
        memory_bytes=limits.config_worker_memory_bytes,
        failed=failed,
    )


UNCHARGED_BYTES = 64 * 1024
"""What the byte budget does not charge of each body, or of a WebSocket's unhandled bytes:
what aiohttp buffers per connection before a handler reads it anyway, and more than a
heartbeat or status report."""

OFFER_BATCH = 200
"""Offers made and sent between two yields to the loop (making 200 took ~3.4 ms here,
sending them more)."""
STANDBY_RETRY_AFTER_SECONDS = 5
"""What a standby replica tells agents: it is no overload, and the active replica (or this
one, taking over) can serve them at once; jittered up to twice as long."""

CLOSE_WAIT_SECONDS = 5.0
"""How long closing a WebSocket waits for the agent's close frame (aiohttp: 10 s)."""


class ByteBudget:
    """Bytes of messages being received or handled, across every connection (Limits.
    max_in_flight_bytes). Single-threaded: the event loop is its only user."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve `n` bytes; False, reserving nothing, when they do not fit."""
        if self.used + n > self.capacity:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class Charge:
    """One message's share of a ByteBudget, grown as its size becomes known and given
    back at once when it is done; the first UNCHARGED_BYTES are free."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.charged = 0

    def cover(self, size: int) -> bool:
        """Charge for a message of `size` bytes (so far); False, the charge unchanged,
        when the budget cannot take what is new. Never shrinks (see settle)."""
        need = size - UNCHARGED_BYTES - self.charged
        if need <= 0:
            return True
        if not self.budget.take(need):
            return False
        self.charged += need
        return True

    def settle(self, size: int) -> bool:
        """Charge for exactly `size` bytes: what was handled is given back first."""
        excess = self.charged - max(0, size - UNCHARGED_BYTES)
        if excess > 0:
            self.budget.give(excess)
            self.charged -= excess
        return self.cover(size)

    def release(self) -> None:
        self.budget.give(self.charged)
        self.charged = 0


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


def request_endpoint(request: web.Request, *, websocket: bool) -> AgentEndpoint:
    """How the agent behind `request` reached the server (opamp/endpoint.py)."""
    headers = request.headers
    return agent_endpoint(
        websocket=websocket,
        tls=request.secure,
        host=headers.get("Host"),
        target=request.raw_path,
        authorization="Authorization" in headers,
        forwarded_proto=headers.get("X-Forwarded-Proto"),
        forwarded_host=headers.get("X-Forwarded-Host"),
        forwarded_prefix=headers.get("X-Forwarded-Prefix"),
        forwarded=headers.get("Forwarded"),
    )


class ConnectionGuard(asyncio.Protocol):
    """Stands between a connection's transport and aiohttp's RequestHandler for what
    aiohttp has no setting for: a deadline for complete request headers (slowloris:
    aiohttp waits for headers as long as it keeps an idle connection) and, once the
    connection is a WebSocket, charging its messages to the byte budget as their bytes
    arrive, with a deadline to receive each in (aiohttp assembles a message, fragments
    and all, up to max_msg_size with no hook in between).

    Made per connection by the agents' listener (server/listeners.py); the application
    finds it as the transport's protocol. Everything else is passed through."""

    def __init__(self, handler: asyncio.Protocol, server: OpAMPServer) -> None:
        self._handler = handler
        self._server = server
        self._transport: asyncio.BaseTransport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting_first = False
        self._busy = False
        # Bytes after the end of the current request's headers (its body, or, before a
        # WebSocket handshake is answered, frames no client may send yet).
        self._headers_end = _HeadersEnd()
        self._ws: web.WebSocketResponse | None = None
        self._frames: wire.FrameCounter | None = None
        self._handled = 0
        self._charge = Charge(server.budget)
        self._dropping = False

    # ---- asyncio.Protocol, passed on -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._arm(self._server.limits.header_timeout_seconds, self._headers_late)
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._dropping:
            return
        if self._frames is not None:
            self._frames.feed(data)
            if not self._follow_messages():
                return
        else:
            self._headers_end.feed(data)
            if not self._busy and self._deadline is None:
                self._arm(self._server.limits.header_timeout_seconds, self._headers_late)
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._charge.release()
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    # ---- told by the application -----------------------------------------------------

    def request_started(self) -> None:
        """Its headers are complete: no header deadline while it is handled."""
        self._busy = True
        self._disarm()

    def request_done(self) -> None:
        self._busy = False
        self._headers_end = _HeadersEnd()

    def upgraded(self, ws: web.WebSocketResponse) -> None:
        """The handshake is answered: from here on the bytes are frames. A client that
        sent some before (RFC 6455 4.1 forbids it) cannot be followed: it is closed."""
        self._ws = ws
        self._frames = wire.FrameCounter()
        if self._headers_end.after:
            self._end_messages("protocol_error", WSCloseCode.PROTOCOL_ERROR)
            return
        self._awaiting_first = True
        self._arm(self._server.limits.first_message_timeout_seconds, self._first_message_late)

    def message_done(self, size: int) -> None:
        """A message of `size` payload bytes has been handled: they are free."""
        self._handled += size
        self._follow_messages()

    def _follow_messages(self) -> bool:
        """Charge what has arrived and not been handled, and give a message that has
        begun the body timeout to end; False when the connection was ended."""
        frames = self._frames
        assert frames is not None
        if not self._charge.settle(frames.data_bytes - self._handled):
            self._end_messages("shed_bytes", WSCloseCode.TRY_AGAIN_LATER)
            return False
        if self._awaiting_first and frames.data_bytes:
            self._awaiting_first = False  # begun: the body timeout governs it now
            self._disarm()
        if not frames.in_message:
            self._disarm()
        elif self._deadline is None:
            self._arm(self._server.limits.body_timeout_seconds, self._message_late)
        return True

    # ---- deadlines -------------------------------------------------------------------

    def _arm(self, seconds: float, then: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(seconds, then)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        transport = self._transport
        if self._busy or transport is None or transport.is_closing():
            return
        if self._headers_end.found:
            return  # complete: the request waits for the loop (a storm), not the client
        self._server.metrics.errors.labels("header_timeout").inc()
        transport.close()

    def _first_message_late(self) -> None:
        self._deadline = None
        self._end_messages("first_message_timeout", WSCloseCode.POLICY_VIOLATION)

    def _message_late(self) -> None:
        self._deadline = None
        self._end_messages("body_timeout", WSCloseCode.POLICY_VIOLATION)

    def _end_messages(self, reason: str, code: WSCloseCode) -> None:
        """Stop taking this WebSocket's bytes (none are buffered from here on), give the
        budget back and close the connection with `code`."""
        self._dropping = True
        self._disarm()
        self._charge.release()
        if self._ws is not None:
            self._server.end_websocket(self._ws, reason, code)


class _HeadersEnd:
    """Finds where a request's headers end (the first blank line) in the bytes that
    follow, and counts the bytes after it."""

    def __init__(self) -> None:
        self.after = 0
        self.found = False
        self._carry = b""

    def feed(self, data: bytes) -> None:
        if self.found:
            self.after += len(data)
            return
        seen = self._carry + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._carry = seen[-3:]
            return
        self.found = True
        self.after = len(seen) - end - 4


def connection_guard(request: web.Request) -> ConnectionGuard | None:
    """The guard of the request's connection; None when served without one (tests)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, ConnectionGuard) else None


class OpAMPServer:
    """Binds the core to aiohttp; one instance per process (or per test)."""

    def __init__(
        self,
        core: ServerCore,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        authenticate: Authenticator = certificate_identity,
        rng: random.Random | None = None,
    ) -> None:
        self.core = core
        self.authenticate = authenticate
        self.limits = limits or Limits()
        self.clock = clock
        self.metrics = ServerMetrics()
        self.budget = ByteBudget(self.limits.max_in_flight_bytes)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._sockets: dict[ConnId, web.WebSocketResponse] = {}
        # What each WebSocket authenticated with, and as whom: re-checked by revalidate().
        self._sessions: dict[ConnId, tuple[Credentials, AgentIdentity | None]] = {}
        self._revalidating: asyncio.Task[int] | None = None
        self._http_in_flight = 0
        self._listeners: list[EventListener] = []
        self._ready = False
        self._standby = False
        self._ticker: asyncio.Task[None] | None = None
        self._lag = LagWatch(self.metrics.loop_lag.observe)
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
        app = web.Application(
            client_max_size=self.limits.max_message_bytes,
            middlewares=[_track_requests],
            # For every runner of this app: bodies are decompressed by _read_body, and a
            # kept-alive connection may idle for keepalive_seconds (aiohttp: an hour).
            handler_args={
                "auto_decompress": False,
                "keepalive_timeout": self.limits.keepalive_seconds,
            },
        )
        app.router.add_route("*", OPAMP_PATH, self.handle_opamp)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        self._ticker = asyncio.create_task(self._tick_forever(), name="opamp-tick")
        self._lag.start()
        self._ready = True

    async def _on_shutdown(self, _: web.Application) -> None:
        """Close every WebSocket with 1001 (going away) so agents reconnect elsewhere."""
        self._ready = False
        if self._ticker is not None:
            self._ticker.cancel()
        await self._lag.stop()
        await self._close_all(b"server shutting down")

    async def _close_all(self, reason: bytes) -> None:
        """Every WebSocket at once, within Limits.shutdown_seconds. One at a time, each
        waiting for its agent (its close frame, or data it never reads to drain), the
        first agent that stopped reading held shutdown past the pod's termination grace."""
        sockets = list(self._sockets.values())
        if not sockets:
            return
        closing = asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY, message=reason) for ws in sockets),
            return_exceptions=True,
        )
        try:
            await asyncio.wait_for(closing, self.limits.shutdown_seconds)
        except TimeoutError:
            log.warning(
                "closing %d WebSockets took over %g s: the rest were dropped",
                len(sockets),
                self.limits.shutdown_seconds,
            )

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

    def _update_gauges(self) -> None:
        counts = dict.fromkeys(AgentState, 0)
        for agent in self.core.agents.values():
            counts[agent.state] += 1
        for state, n in counts.items():
            self.metrics.agents.labels(state.value).set(n)
        self.metrics.connections.set(len(self._sockets))
        self.metrics.kept_bytes.set(self.core.kept_bytes)
        self.metrics.in_flight_bytes.set(self.budget.used)
        self.metrics.http_in_flight.set(self._http_in_flight)

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
        """Send changed desired configs to WebSocket agents now; returns how many. The
        loop is given back every OFFER_BATCH messages: for a change that reaches 10,000
        agents, building the messages alone held it 0.17 s in one go, growing with the
        fleet."""
        sent = 0
        for made, (conn, msg) in enumerate(self.core.offers_to_push(), 1):
            ws = self._sockets.get(conn)
            if ws is not None and not ws.closed:
                await self._send_ws(ws, msg)
                sent += 1
            if made % OFFER_BATCH == 0:
                await asyncio.sleep(0)
        return sent

    # ---- OpAMP -----------------------------------------------------------------------

    async def handle_opamp(self, request: web.Request) -> web.StreamResponse:
        if self._standby:
            retry = self._rng.randrange(
                STANDBY_RETRY_AFTER_SECONDS, 2 * STANDBY_RETRY_AFTER_SECONDS
            )
            return self._unavailable("standby", "this operator replica is on standby", retry)
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
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity" and encoding not in wire.CONTENT_ENCODINGS:
            self.metrics.errors.labels("content_encoding").inc()
            raise web.HTTPUnsupportedMediaType(
                text=f"unsupported Content-Encoding {encoding!r}: gzip, deflate or none"
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
        limits = self.limits
        length = request.content_length
        if length is not None and length > limits.max_message_bytes:
            return self._too_large(f"a {length}-byte body")  # refused before reading it
        charge = Charge(self.budget)
        try:
            if length is not None and not charge.cover(length):
                return self._shed("bytes")
            body = await self._receive_body(request, charge)
            if isinstance(body, web.Response):
                return body
            if self._http_in_flight >= limits.max_http_in_flight:
                return self._shed("http")
            self._http_in_flight += 1
            try:
                return self._http_reply(request, identity, body)
            finally:
                self._http_in_flight -= 1
        finally:
            charge.release()

    async def _receive_body(self, request: web.Request, charge: Charge) -> bytes | web.Response:
        """The body within the body timeout, or the response refusing it."""
        seconds = self.limits.body_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                return await self._read_body(request, charge)
        except TimeoutError:
            self.metrics.errors.labels("body_timeout").inc()
            response = web.Response(status=408, text=f"body not received within {seconds:g} s")
            response.force_close()
            return response
        except wire.WireError as exc:
            return self._http_bad_request(str(exc))

    async def _read_body(self, request: web.Request, charge: Charge) -> bytes | web.Response:
        """The body as it arrives, decompressed here a bounded step at a time (aiohttp's
        own decompression is off: a refused gzip bomb would still be inflated while it
        drains the rest), charged to the budget as it grows: a chunked or compressed body
        has no size to admit it by. A refusal is returned as the response to send."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        inflater = None if encoding == "identity" else wire.Inflater(encoding)
        chunks: list[bytes] = []
        size = 0
        while raw := await request.content.readany():
            for chunk in inflater.feed(raw) if inflater is not None else (raw,):
                chunks.append(chunk)
                size += len(chunk)
                if size > self.limits.max_message_bytes:
                    return self._too_large("the decompressed body")
                if not charge.cover(size):
                    return self._shed("bytes")
                if inflater is not None:
                    await asyncio.sleep(0)  # inflating never waits on the socket: yield
        if inflater is not None:
            inflater.finish()
        return b"".join(chunks)

    def _http_reply(
        self, request: web.Request, identity: AgentIdentity | None, body: bytes
    ) -> web.Response:
        self.metrics.message("in", "http", len(body))
        try:
            msg = wire.decode_agent_message(body)
        except wire.WireError as exc:
            return self._http_bad_request(str(exc))
        self.metrics.agent_message(message_kind(msg))
        peer = request.remote or ""
        endpoint = request_endpoint(request, websocket=False)
        reply = self.core.receive(
            msg, self.clock(), peer=peer, identity=identity, endpoint=endpoint
        )
        if reply.refusal is Refusal.TOO_LARGE:
            self.metrics.errors.labels(reply.refusal.value).inc()
            text = reply.message.error_response.error_message
            response = web.Response(
                status=413, body=wire.encode_http(reply.message), content_type=PROTOBUF
            )
            log.info("refused a message from %s: %s", peer, text)
            return response
        if reply.refusal is Refusal.FULL:
            return self._unavailable(
                reply.refusal.value, reply.message.error_response.error_message
            )
        self._after_reply(reply)
        payload = wire.encode_http(reply.message)
        if len(payload) > self.limits.max_message_bytes:
            log.error("not sending a %d-byte ServerToAgent: over the limit", len(payload))
            return self._unavailable("response_too_large", "the reply is over the size limit")
        self.metrics.message("out", "http", len(payload))
        response = web.Response(body=payload, content_type=PROTOBUF)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response

    def _too_large(self, what: str) -> web.Response:
        """413 (the spec's answer; the agent must not retry it), connection closed so the
        rest of the body is not read."""
        self.metrics.errors.labels("too_large").inc()
        text = f"{what} is over the limit of {self.limits.max_message_bytes} bytes"
        body = wire.encode_http(error_reply(pb.ServerErrorResponseType_BadRequest, text))
        response = web.Response(status=413, body=body, content_type=PROTOBUF)
        response.force_close()
        return response

    def _http_bad_request(self, text: str) -> web.Response:
        self.metrics.errors.labels("bad_request").inc()
        body = wire.encode_http(error_reply(pb.ServerErrorResponseType_BadRequest, text))
        return web.Response(status=400, body=body, content_type=PROTOBUF)

    def _shed(self, what: str) -> web.Response:
        """Past a limit: 503 + Retry-After, and the same as a ServerErrorResponse."""
        texts = {
            "http": "server is at its limit of HTTP requests in flight",
            "websocket": "server is at its WebSocket limit",
            "bytes": "server is at its limit of message bytes in flight",
        }
        return self._unavailable(f"shed_{what}", texts[what])

    def _unavailable(self, reason: str, text: str, retry: int | None = None) -> web.Response:
        self.metrics.errors.labels(reason).inc()
        retry = self.limits.retry_after(self._rng) if retry is None else retry
        body = wire.encode_http(error_reply(pb.ServerErrorResponseType_Unavailable, text, retry))
        response = web.Response(
            status=503, body=body, content_type=PROTOBUF, headers={"Retry-After": str(retry)}
        )
        response.force_close()
        return response

    async def _websocket(
        self, request: web.Request, presented: Credentials, identity: AgentIdentity | None
    ) -> web.StreamResponse:
        if len(self._sockets) >= self.limits.max_websockets:
            return self._shed("websocket")
        # No permessage-deflate: a compressed message would reach the budget's byte count
        # (ConnectionGuard) smaller than it is; OpAMP clients do not ask for it.
        ws = web.WebSocketResponse(
            max_msg_size=self.limits.max_message_bytes,
            heartbeat=self.limits.ws_ping_seconds,
            compress=False,
            timeout=CLOSE_WAIT_SECONDS,
        )
        await ws.prepare(request)
        guard = connection_guard(request)
        if guard is not None:
            guard.upgraded(ws)
        now = self.clock()
        endpoint = request_endpoint(request, websocket=True)
        conn = self.core.open(now, peer=request.remote or "", identity=identity, endpoint=endpoint)
        self._sockets[conn] = ws
        self._sessions[conn] = (presented, identity)
        try:
            try:
                # Behind a guard, its deadline: bytes arrived in time count, read or not.
                frame = await ws.receive(
                    timeout=None if guard is not None else self.limits.first_message_timeout_seconds
                )
            except TimeoutError:
                self.metrics.errors.labels("first_message_timeout").inc()
                seconds = self.limits.first_message_timeout_seconds
                await ws.close(
                    code=WSCloseCode.POLICY_VIOLATION,
                    message=f"no AgentToServer within {seconds:g} s".encode(),
                )
                return ws
            while await self._ws_frame(conn, ws, frame, request.remote):
                if guard is not None:
                    guard.message_done(len(frame.data))
                frame = await ws.receive()
        finally:
            self._sockets.pop(conn, None)
            self._sessions.pop(conn, None)
            self._publish(self.core.close(conn, self.clock()))
        return ws

    async def _ws_frame(
        self, conn: ConnId, ws: web.WebSocketResponse, frame: WSMessage, peer: str | None
    ) -> bool:
        """Handle one frame; False when the connection ends."""
        if frame.type == WSMsgType.BINARY:
            return await self._ws_message(conn, ws, frame.data)
        if frame.type == WSMsgType.TEXT:
            self.metrics.errors.labels("text_frame").inc()
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"OpAMP uses binary frames")
        elif frame.type == WSMsgType.ERROR:
            self.metrics.errors.labels(_ws_error_reason(ws, frame)).inc()
            log.info("WebSocket from %s failed: %s", peer, ws.exception())
        return False

    async def _ws_message(self, conn: ConnId, ws: web.WebSocketResponse, data: bytes) -> bool:
        """Handle one message; False when the connection must end."""
        self.metrics.message("in", "websocket", len(data))
        try:
            msg = wire.decode_agent_message(wire.split_ws_frame(data))
        except wire.WireError as exc:
            self.metrics.errors.labels("bad_request").inc()
            log.info("closing WebSocket %d: %s", conn, exc)
            await self._send_ws(ws, error_reply(pb.ServerErrorResponseType_BadRequest, str(exc)))
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=str(exc)[:120].encode())
            return False
        self.metrics.agent_message(message_kind(msg))
        reply = self.core.receive(msg, self.clock(), conn=conn)
        if reply.refusal is Refusal.TOO_LARGE:
            self.metrics.errors.labels(reply.refusal.value).inc()
            await self._send_ws(ws, reply.message)
            await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"over a per-agent limit")
            return False
        if reply.refusal is Refusal.FULL:
            await self._end(ws, reply.refusal.value, WSCloseCode.TRY_AGAIN_LATER)
            return False
        self._after_reply(reply)
        await self._send_ws(ws, reply.message)
        if reply.close:
            await ws.close()
            return False
        return True

    def end_websocket(self, ws: web.WebSocketResponse, reason: str, code: WSCloseCode) -> None:
        """Close `ws` from outside its handler (ConnectionGuard), soon."""
        self._spawn_close(self._end(ws, reason, code))

    async def _end(self, ws: web.WebSocketResponse, reason: str, code: WSCloseCode) -> None:
        """Count `reason` and close `ws` with `code`; 1013 (try again later) after an
        UNAVAILABLE error_response with retry_info, as the spec's throttling asks."""
        self.metrics.errors.labels(reason).inc()
        if code == WSCloseCode.TRY_AGAIN_LATER:
            retry = self.limits.retry_after(self._rng)
            text = f"server is at a limit ({reason}); retry in {retry} s"
            await self._send_ws(
                ws, error_reply(pb.ServerErrorResponseType_Unavailable, text, retry)
            )
        if not ws.closed:
            await ws.close(code=code, message=reason.encode())

    async def _send_ws(self, ws: web.WebSocketResponse, msg: pb.ServerToAgent) -> None:
        payload = wire.encode_ws(msg)
        if len(payload) > self.limits.max_message_bytes:
            self.metrics.errors.labels("response_too_large").inc()
            log.error("not sending a %d-byte ServerToAgent: over the limit", len(payload))
            return
        self.metrics.message("out", "websocket", len(payload))
        with contextlib.suppress(ConnectionResetError):
            await ws.send_bytes(payload)

    def _after_reply(self, reply: Reply) -> None:
        if reply.message.HasField("remote_config"):
            self.metrics.config_offers.inc()
        for name in reply.trimmed:
            self.metrics.errors.labels(f"{name}_too_large").inc()
        self._publish(reply.events)
        if any(e.kind in (EventKind.CONNECTED, EventKind.DISCONNECTED) for e in reply.events):
            # Only the count at hand: counting agents by state walks them all, which per
            # connect made a connect storm quadratic (36% of the server's CPU at 10,000
            # agents). The by-state gauge is counted when /metrics is scraped.
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

    def config_workers(self, pool: str) -> ConfigWorkers:
        """A pool of config worker processes under this server's limits, its failures
        counted in /metrics."""
        failures = self.metrics.config_worker_failures
        return config_workers(self.limits, pool, lambda reason: failures.labels(pool, reason).inc())

    def api(self, guard: Guard, show_config: ShowConfig, all_agents: Access) -> ApiServer:
        return ApiServer(
            agents=lambda: self.core.agents,
            desired=self.core.desired.config_for,
            metrics=self.metrics_payload,
            ready=self.not_ready,
            guard=guard,
            show_config=show_config,
            all_agents=all_agents,
        )


def _ws_error_reason(ws: web.WebSocketResponse, frame: WSMessage) -> str:
    if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
        return "too_large"
    if isinstance(frame.data, TimeoutError):
        return "ping_timeout"  # aiohttp's heartbeat: no pong within half the interval
    return "ws_error"


@web.middleware
async def _track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell the connection's guard when a request's headers are complete and when it has
    been handled (a WebSocket: when it closes)."""
    guard = connection_guard(request)
    if guard is None:
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_done()
