"""The transports of a simulated agent: one asyncio task per agent, no threads.

WebSocket agents hold one connection each (no compression, no keepalive pings: OpAMP
heartbeats do that job and each ping task costs memory at 10,000 agents). HTTP agents
share one aiohttp ClientSession and poll at the heartbeat interval. Agents that accept
packages download them with that same session (created for them over WebSocket too), a
bounded number at once per process, hashing the file as it streams in (nothing is kept).
All protocol decisions are made by `AgentCore`; this module moves bytes, keeps time and
counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.protocol import State
from websockets.typing import Data

from opamp_operator import __version__
from opamp_operator.opamp import wire
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.simulator.protocol import (
    AgentCore,
    AgentOptions,
    ConfigOffered,
    ConfigReported,
    FullStateAcked,
    InstanceUidChanged,
    PackageInstalled,
    PackageInstallFailed,
    PackageOffer,
    PackagesOffered,
    Part,
    ProtocolError,
    Reaction,
    ServerError,
    backoff_delay,
    parse_retry_after,
    uid_text,
)
from opamp_operator.simulator.settings import SimulationSettings
from opamp_operator.simulator.stats import SimulationStats

log = logging.getLogger("opamp_operator.simulator")

USER_AGENT = f"opamp-operator-simulator/{__version__}"
# opamp-go compresses a response only when Accept-Encoding is exactly "gzip"
HTTP_HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Accept-Encoding": "gzip",
    "User-Agent": USER_AGENT,
}


@dataclass
class Fleet:
    """What all agents of one simulation share."""

    settings: SimulationSettings
    options: AgentOptions
    stats: SimulationStats
    clock: Callable[[], float]
    rng: random.Random
    session: aiohttp.ClientSession | None = None
    ssl_context: ssl.SSLContext | None = None
    """Shared by every TLS connection; None over plaintext."""
    download_slots: asyncio.Semaphore | None = None
    """Package downloads under way at once in this process (accept_packages only)."""


class ResponseTooLargeError(Exception):
    """A response body over the configured limit; it is discarded, not processed."""


class DownloadError(Exception):
    """A package download that did not give a file; the message is the InstallFailed
    error the agent reports."""


def _server_error_name(value: int) -> str:
    try:
        return pb.ServerErrorResponseType.Name(value)
    except ValueError:
        return f"ServerErrorResponseType_{value}"


class SimulatedAgent:
    """One agent: `run()` connects, reports, reacts and reconnects until cancelled.

    Cancelling the task is the clean shutdown: the agent sends AgentDisconnect (and on
    WebSocket closes the connection) before the task ends.
    """

    __slots__ = ("_downloads", "_launched", "_online", "_wake", "core", "fleet", "index")

    def __init__(self, index: int, fleet: Fleet, instance_uid: bytes | None = None) -> None:
        self.index = index
        self.fleet = fleet
        self.core = AgentCore(index, fleet.options, instance_uid)
        self._launched: float | None = None
        self._online = False
        # Created with the first package download: the downloads under way, and the
        # event a finished one sets so the agent reports at once instead of at its next
        # heartbeat.
        self._downloads: set[asyncio.Task[None]] | None = None
        self._wake: asyncio.Event | None = None

    @property
    def instance_uid(self) -> bytes:
        return self.core.instance_uid

    async def run(self) -> None:
        self._launched = self.fleet.clock()
        try:
            while True:
                try:
                    if self.fleet.settings.transport == "ws":
                        await self._run_ws()
                    else:
                        await self._run_http()
                except Exception as exc:
                    # a bug here must cost one agent a restart, not the whole simulation
                    log.exception("%s: agent loop failed; restarting it", self.core.pod_name)
                    self.fleet.stats.error("agent loop failed", f"{self.core.pod_name}: {exc!r}")
                    self.fleet.stats.agent_disconnected(self.index, self.fleet.clock())
                    self.core.disconnected()
                    await asyncio.sleep(self._backoff(3))
        finally:
            # downloads end with the agent, before the shared session closes
            downloads = list(self._downloads or ())
            for task in downloads:
                task.cancel()
            if downloads:
                await asyncio.gather(*downloads, return_exceptions=True)

    def _backoff(self, failures: int) -> float:
        s = self.fleet.settings
        return backoff_delay(failures, s.backoff_initial, s.backoff_max, self.fleet.rng.random())

    def _record(self, reaction: Reaction) -> None:
        stats, now = self.fleet.stats, self.fleet.clock()
        for event in reaction.events:
            if isinstance(event, FullStateAcked):
                latency = None if self._launched is None else now - self._launched
                stats.full_state_acked(self.index, now, latency)
            elif isinstance(event, ConfigOffered):
                stats.config_offered(self.index, event.config_hash, now)
            elif isinstance(event, ConfigReported):
                stats.config_reported(
                    self.index, event.config_hash, event.status, event.error_message, now
                )
            elif isinstance(event, InstanceUidChanged):
                stats.instance_uid_changes += 1
            elif isinstance(event, ServerError):
                stats.server_error(_server_error_name(event.type), event.message)
            elif isinstance(event, ProtocolError):
                stats.error("bad message from server", f"{self.core.pod_name}: {event.message}")
            elif isinstance(event, PackagesOffered):
                for offer in event.downloads:
                    stats.package_offered(self.index, offer, now)
                    self._start_download(offer)
            elif isinstance(event, PackageInstalled):
                stats.package_installed(self.index, event.offer, now)
            elif isinstance(event, PackageInstallFailed):
                stats.package_failed(self.index, event.offer, event.error, now)
        if reaction.throttled:
            stats.agent_throttled(self.index, now)

    # Packages

    def _start_download(self, offer: PackageOffer) -> None:
        if self._downloads is None:
            self._downloads = set()
            self._wake = asyncio.Event()
        task = asyncio.create_task(self._download(offer), name=f"{self.core.pod_name}-download")
        self._downloads.add(task)
        task.add_done_callback(self._downloads.discard)

    async def _download(self, offer: PackageOffer) -> None:
        """Fetch the file, then let the core install it (or fail it) and wake the agent to
        report; a download the server has since offered something else for is dropped by
        the core."""
        digest: bytes | None = None
        error: str | None = None
        slots = self.fleet.download_slots
        assert slots is not None, "agents that accept packages need the fleet's download slots"
        async with slots:
            self.fleet.stats.package_downloads += 1
            try:
                digest = await self._fetch(offer)
            except DownloadError as exc:
                error = str(exc)
            except TimeoutError:
                timeout = self.fleet.settings.package_download_timeout
                error = f"download from {offer.url} timed out after {timeout:g} s"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                error = f"download from {offer.url} failed: {type(exc).__name__}: {exc}"
        self._record(Reaction(self.core.package_fetched(offer, digest, error)))
        if self._wake is not None:
            self._wake.set()

    async def _fetch(self, offer: PackageOffer) -> bytes:
        """GET the file with the offered headers, within the timeout and the size limit;
        its SHA-256."""
        fleet = self.fleet
        session, settings, stats = fleet.session, fleet.settings, fleet.stats
        assert session is not None, "agents that accept packages need the fleet's ClientSession"
        limit = settings.max_package_bytes
        timeout = aiohttp.ClientTimeout(total=settings.package_download_timeout)
        headers = {"User-Agent": USER_AGENT, **dict(offer.headers)}
        async with session.get(offer.url, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                status = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
                raise DownloadError(f"download from {offer.url} failed: {status}")
            if resp.content_length is not None and resp.content_length > limit:
                raise DownloadError(f"package file of {resp.content_length} bytes: over {limit}")
            sha256, size = hashlib.sha256(), 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                stats.package_download_bytes += len(chunk)
                if size > limit:
                    raise DownloadError(f"package file from {offer.url} is over {limit} bytes")
                sha256.update(chunk)
        return sha256.digest()

    async def _idle(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a package download finishes meanwhile."""
        wake = self._wake
        if wake is None:
            await asyncio.sleep(seconds)
            return
        try:
            async with asyncio.timeout(seconds):
                await wake.wait()
        except TimeoutError:
            pass
        wake.clear()

    async def _recv_or_wake(self, ws: ClientConnection, wake: asyncio.Event) -> Data | None:
        """The next frame, or None once a finished download woke the agent to report.

        Cancelling websockets' recv() loses nothing: a frame it was about to return
        stays for the next call, which must not start before the cancelled one ended.
        """
        if wake.is_set():
            wake.clear()
            return None
        recv = asyncio.ensure_future(ws.recv())
        recv.add_done_callback(_consume)
        woken = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait((recv, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not recv.done():
                recv.cancel()
                await asyncio.wait((recv,))
        wake.clear()
        return None if recv.cancelled() else recv.result()

    # WebSocket

    async def _run_ws(self) -> None:
        failures = 0
        while True:
            connected, throttled = await self._ws_attempt()
            if connected and throttled is None:
                failures = 0
            if throttled is not None and throttled.retry_after is not None:
                await asyncio.sleep(throttled.retry_after)
            else:
                await asyncio.sleep(self._backoff(failures))
            failures += 1

    async def _ws_attempt(self) -> tuple[bool, Reaction | None]:
        """Connect and converse until the connection ends: whether it connected, and the
        reaction that throttled it, if the server did."""
        settings = self.fleet.settings
        try:
            ws = await connect(
                settings.url,
                ssl=self.fleet.ssl_context,
                compression=None,
                ping_interval=None,
                proxy=None,
                user_agent_header=USER_AGENT,
                open_timeout=settings.open_timeout,
                close_timeout=settings.goodbye_timeout,
                max_size=settings.max_message_bytes,
                max_queue=4,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (429, 503):
                # an overloaded server may refuse the upgrade and say when to come back
                self.fleet.stats.agent_throttled(self.index, self.fleet.clock())
                retry = parse_retry_after(exc.response.headers.get("Retry-After"))
                return False, Reaction(throttled=True, retry_after=retry)
            self.fleet.stats.connect_failed(f"HTTP {status}", f"{settings.url}: {exc}")
            return False, None
        except (OSError, TimeoutError, WebSocketException) as exc:
            self.fleet.stats.connect_failed(type(exc).__name__, f"{settings.url}: {exc}")
            return False, None
        # the handshake request is not needed again (`response` must stay: the connection
        # tells the handshake from later frames by it)
        ws.request = None
        return True, await self._ws_session(ws)

    async def _ws_session(self, ws: ClientConnection) -> Reaction | None:
        """One connection until it drops; the reaction that throttled it, if any."""
        fleet, core = self.fleet, self.core
        fleet.stats.agent_connected(self.index, fleet.clock())
        core.connected()
        try:
            reaction = await self._ws_converse(ws)
            await self._ws_goodbye(ws)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._ws_goodbye(ws)
            raise
        except ConnectionClosed as exc:
            log.debug("%s: connection closed: %s", core.pod_name, exc)
            return None
        except (OSError, TimeoutError, WebSocketException) as exc:
            fleet.stats.error("websocket", f"{core.pod_name}: {type(exc).__name__}: {exc}")
            return None
        except Exception as exc:
            log.exception("%s: unexpected error on the WebSocket", core.pod_name)
            fleet.stats.error("unexpected", f"{core.pod_name}: {exc!r}")
            return None
        finally:
            fleet.stats.agent_disconnected(self.index, fleet.clock())
            core.disconnected()
            if ws.state is not State.CLOSED:
                ws.transport.abort()
        return reaction

    async def _ws_converse(self, ws: ClientConnection) -> Reaction:
        """Send what is pending, wait for the server or the next heartbeat, repeat; returns
        the reaction that throttled the agent.

        Frames live only inside the helpers, so an idle agent keeps no message alive.
        """
        while True:
            await self._ws_flush(ws)
            throttled = await self._ws_receive(ws)
            if throttled is not None:
                return throttled

    async def _ws_flush(self, ws: ClientConnection) -> None:
        now = self.fleet.clock()
        self.core.tick(now)
        if self.core.wants_to_send:
            heartbeat = self.core.pending == Part.HEARTBEAT
            data = wire.encode_ws(self.core.next_message(now))
            await ws.send(data)
            self.fleet.stats.sent(len(data), heartbeat=heartbeat)
            self.fleet.stats.awaiting_reply(self.index, now)

    async def _ws_receive(self, ws: ClientConnection) -> Reaction | None:
        """Wait until a frame arrives or tick() is due; the reaction only if it throttled."""
        fleet, core, stats = self.fleet, self.core, self.fleet.stats
        wake = self._wake
        try:
            async with asyncio.timeout(core.seconds_until_wakeup(fleet.clock())):
                if wake is None or not (self._downloads or wake.is_set()):
                    frame = await ws.recv()
                else:
                    received = await self._recv_or_wake(ws, wake)
                    if received is None:
                        return None
                    frame = received
        except TimeoutError:
            return None
        stats.received(len(frame))
        stats.replied(self.index, fleet.clock())
        if isinstance(frame, str):
            stats.error("bad message from server", f"{core.pod_name}: text frame, not binary")
            return None
        reaction = core.receive(frame, websocket=True, now=fleet.clock())
        self._record(reaction)
        return reaction if reaction.throttled else None

    async def _ws_goodbye(self, ws: ClientConnection) -> None:
        """AgentDisconnect, then the close handshake; best effort, bounded in time."""
        if ws.state is not State.OPEN:
            return
        data = wire.encode_ws(self.core.disconnect_message(self.fleet.clock()))
        try:
            async with asyncio.timeout(self.fleet.settings.goodbye_timeout):
                await ws.send(data)
                self.fleet.stats.goodbyes_sent += 1
                await ws.close()
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.debug("%s: goodbye failed: %s", self.core.pod_name, exc)

    # Plain HTTP

    async def _run_http(self) -> None:
        fleet, core = self.fleet, self.core
        core.poll_fallback = fleet.settings.heartbeat
        core.connected()
        failures = 0
        try:
            while True:
                now = fleet.clock()
                core.tick(now)
                if not core.wants_to_send:
                    await self._idle(core.seconds_until_wakeup(now) or 0.0)
                    continue
                wait = await self._http_exchange(failures)
                if wait is None:
                    failures = 0
                    continue
                self._http_offline()
                await asyncio.sleep(wait)
                failures += 1
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if self._online:
                await self._http_goodbye()
                self._http_offline()
            raise

    def _http_offline(self) -> None:
        """No answer (or Unavailable): what was sent may be lost, so resend full state."""
        if self._online:
            self._online = False
            self.fleet.stats.agent_disconnected(self.index, self.fleet.clock())
        self.core.disconnected()

    async def _http_exchange(self, failures: int) -> float | None:
        """POST what is pending and react to the answer; how long to wait before the next
        attempt if the server did not answer or throttled, else None."""
        fleet, core, stats = self.fleet, self.core, self.fleet.stats
        heartbeat = core.pending == Part.HEARTBEAT
        msg = core.next_message(fleet.clock())
        body = wire.encode_http(msg)
        stats.sent(len(body), heartbeat=heartbeat)
        stats.awaiting_reply(self.index, fleet.clock())
        try:
            payload = await self._post(msg, body)
        except ResponseTooLargeError as exc:
            stats.error("response too large", f"{core.pod_name}: {exc}")
            return None
        except _ThrottledError as exc:
            stats.agent_throttled(self.index, fleet.clock())
            return exc.retry_after
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            stats.connect_failed(type(exc).__name__, f"{fleet.settings.url}: {exc}")
            return self._backoff(failures)
        if not self._online:
            self._online = True
            stats.agent_connected(self.index, fleet.clock())
        stats.received(len(payload))
        stats.replied(self.index, fleet.clock())
        reaction = core.receive(payload, websocket=False, now=fleet.clock())
        self._record(reaction)
        if reaction.throttled:
            return self._backoff(failures) if reaction.retry_after is None else reaction.retry_after
        return None

    async def _post(self, msg: pb.AgentToServer, body: bytes) -> bytes:
        session = self.fleet.session
        assert session is not None, "HTTP agents need the fleet's ClientSession"
        settings = self.fleet.settings
        headers = {**HTTP_HEADERS, "OpAMP-Instance-UID": uid_text(msg.instance_uid)}
        async with asyncio.timeout(settings.request_timeout):
            async with session.post(settings.url, data=body, headers=headers) as resp:
                if resp.status in (429, 503):
                    retry = parse_retry_after(resp.headers.get("Retry-After"))
                    raise _ThrottledError(retry if retry is not None else self._backoff(0))
                # a 400 may carry a ServerToAgent with a BadRequest error_response for the core
                carries_reply = (
                    resp.status == 400 and resp.content_type == HTTP_HEADERS["Content-Type"]
                )
                if resp.status != 200 and not carries_reply:
                    text = (await resp.content.read(200)).decode(errors="replace")
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=text.strip()
                    )
                if resp.headers.get("Content-Encoding", "").lower() == "gzip":
                    self.fleet.stats.gzip_responses += 1
                return await _read_limited(resp, settings.max_message_bytes)

    async def _http_goodbye(self) -> None:
        msg = self.core.disconnect_message(self.fleet.clock())
        try:
            async with asyncio.timeout(self.fleet.settings.goodbye_timeout):
                await self._post(msg, wire.encode_http(msg))
            self.fleet.stats.goodbyes_sent += 1
        except (
            aiohttp.ClientError,
            OSError,
            TimeoutError,
            ResponseTooLargeError,
            _ThrottledError,
        ) as exc:
            log.debug("%s: goodbye failed: %s", self.core.pod_name, exc)


def _consume(task: asyncio.Future[Data]) -> None:
    """Retrieve what a recv() task ended with even when nobody asks (the agent was
    cancelled meanwhile), so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class _ThrottledError(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"throttled for {retry_after:.1f}s")
        self.retry_after = retry_after


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The (decompressed) body, refusing more than `limit` bytes as the spec requires."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ResponseTooLargeError(f"response body over {limit} bytes discarded")
        chunks.append(chunk)
    return b"".join(chunks)
