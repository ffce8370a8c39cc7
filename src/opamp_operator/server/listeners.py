"""Both of a server's listeners, started and stopped together by `run` and `serve`: the
agents' port (OpAMP only) and the API port (read API, /metrics, probes)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web
from yarl import URL

from opamp_operator.server.api import ApiListen, is_loopback
from opamp_operator.server.app import OPAMP_PATH, ConnectionGuard, Listen, OpAMPServer
from opamp_operator.server.tls import ReloadingTLS, self_signed

log = logging.getLogger(__name__)


@dataclass
class Listeners:
    opamp: web.AppRunner
    api: web.AppRunner
    tls: list[ReloadingTLS] = field(default_factory=list)
    _watchers: list[asyncio.Task[None]] = field(default_factory=list)
    _closed: bool = False

    def follow(self, tls: ReloadingTLS) -> None:
        """Reload `tls` from its files for as long as the listeners run."""
        self.tls.append(tls)
        self._watchers.append(asyncio.create_task(tls.watch(), name="tls-reload"))

    async def close(self) -> None:
        """The agents' port first (its shutdown closes every WebSocket with 1001), so the
        probes keep answering until agents have been told to go. Once: `run` closes
        them as kopf cleans up, and again in a `finally` that also covers a failed start."""
        if self._closed:
            return
        self._closed = True
        for task in self._watchers:
            task.cancel()
        await self.opamp.cleanup()
        await self.api.cleanup()


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite for the agents' port, with each connection behind a
    ConnectionGuard (header deadline, WebSocket byte budget) and the TLS handshake
    bounded by the header timeout: aiohttp's own site has a hook for neither."""

    __slots__ = ("_host", "_opamp", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        opamp: OpAMPServer,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        backlog: int,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._opamp = opamp
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return str(URL.build(scheme=scheme, host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        handlers = self._runner.server
        assert handlers is not None, "the runner is set up before its sites"
        opamp = self._opamp
        self._server = await asyncio.get_running_loop().create_server(
            lambda: ConnectionGuard(handlers(), opamp),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=(
                opamp.limits.header_timeout_seconds if self._ssl_context else None
            ),
        )


def _api_tls(api: ApiListen, scratch: Path, self_sign: bool) -> ReloadingTLS | None:
    if api.tls.enabled:
        return ReloadingTLS(api.tls)
    if not self_sign:
        return None
    wildcard = api.host in {"", "0.0.0.0", "::"}  # noqa: S104
    hosts = ["localhost", "127.0.0.1"] + ([] if wildcard else [api.host])
    cert, key, _ = self_signed(scratch, hosts, "API")
    log.info("API: self-signed certificate (give --api-tls-cert-file to use your own)")
    return ReloadingTLS(replace(api.tls, cert_file=cert, key_file=key))


async def _site(runner: web.AppRunner, host: str, port: int, tls: ReloadingTLS | None) -> None:
    await runner.setup()
    context: ssl.SSLContext | None = tls.context if tls is not None else None
    await web.TCPSite(runner, host, port, ssl_context=context).start()


async def start(
    server: OpAMPServer,
    listen: Listen,
    api_app: web.Application,
    api: ApiListen,
    scratch: Path,
    *,
    self_sign_api: bool,
    user_client_ca: str | None = None,
) -> Listeners:
    """Listen on both ports. `self_sign_api`: serve the API over TLS even without
    certificate files; `user_client_ca`: PEM CAs whose client certificates identify API
    users (the cluster's, under `run`)."""
    opamp_tls = ReloadingTLS(listen.tls) if listen.tls.enabled else None
    api_tls = _api_tls(api, scratch, self_sign_api)
    if api_tls is not None and user_client_ca:
        api_tls.context.load_verify_locations(cadata=user_client_ca)
        api_tls.context.verify_mode = ssl.CERT_OPTIONAL
    limits = server.limits
    listeners = Listeners(
        # No access log on the agents' port: a line per HTTP poll (10,000 agents at 30 s:
        # 333 lines a second) tells nothing opamp_messages_total does not count.
        web.AppRunner(
            server.app(),
            handle_signals=False,
            shutdown_timeout=limits.shutdown_seconds,
            access_log=None,
        ),
        web.AppRunner(api_app, handle_signals=False),
    )
    for tls in (opamp_tls, api_tls):
        if tls is not None:
            listeners.follow(tls)
    await listeners.opamp.setup()
    await GuardedSite(
        listeners.opamp,
        server,
        listen.host,
        listen.port,
        ssl_context=opamp_tls.context if opamp_tls is not None else None,
        backlog=limits.listen_backlog,
    ).start()
    await _site(listeners.api, api.host, api.port, api_tls)
    scheme = "wss/https" if opamp_tls else "ws/http"
    log.info("OpAMP (%s) on %s:%d%s", scheme, listen.host, listen.port, OPAMP_PATH)
    if opamp_tls is None and not is_loopback(listen.host):
        log.warning(
            "the agents' port %s:%d is plaintext: fleet tokens and configs cross the network "
            "in clear, and agents cannot tell this server from an impostor. Give it "
            "--tls-cert-file/--tls-key-file, unless a mesh encrypts the traffic",
            listen.host,
            listen.port,
        )
    log.info("API (%s) on %s:%d", "https" if api_tls else "http", api.host, api.port)
    return listeners
