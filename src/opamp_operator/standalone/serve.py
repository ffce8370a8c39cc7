"""`opamp-operator serve`: the OpAMP server with fleets from a file, no Kubernetes."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from opamp_operator.opamp.session import CoreSettings, ServerCore
from opamp_operator.server.app import DEFAULT_PORT, Limits, OpAMPServer
from opamp_operator.standalone.fleets import FileFleets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    config: Path
    host: str = "0.0.0.0"  # noqa: S104 - a server for agents on other machines
    port: int = DEFAULT_PORT
    heartbeat_seconds: int | None = None
    reload_seconds: float = 2.0
    limits: Limits = field(default_factory=Limits)


def build(options: ServeOptions) -> tuple[OpAMPServer, FileFleets]:
    fleets = FileFleets(options.config)
    core = ServerCore(
        CoreSettings(
            offer_heartbeat_seconds=options.heartbeat_seconds,
            default_heartbeat_seconds=float(options.heartbeat_seconds or 30),
        ),
        desired=fleets,
    )
    return OpAMPServer(core, options.limits), fleets


async def _watch(server: OpAMPServer, fleets: FileFleets, every: float) -> None:
    """Poll the file (no inotify dependency); push changed configs to WebSocket agents."""
    while True:
        await asyncio.sleep(every)
        if fleets.reload():
            pushed = await server.push_offers()
            log.info("fleets changed: pushed new configs to %d WebSocket agents", pushed)


async def serve(options: ServeOptions, started: asyncio.Event | None = None) -> None:
    server, fleets = build(options)
    runner = web.AppRunner(server.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port)
    await site.start()
    log.info("OpAMP server on %s:%d%s", options.host, options.port, "/v1/opamp")
    watcher = asyncio.create_task(_watch(server, fleets, options.reload_seconds))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if started is not None:
        started.set()
    try:
        await stop.wait()
        log.info("shutting down: telling WebSocket agents to reconnect (close 1001)")
    finally:
        watcher.cancel()
        await runner.cleanup()
