"""`opamp-operator serve`: the OpAMP server with fleets from a file, no Kubernetes."""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from opamp_operator.fleet.drift import masked_config_text
from opamp_operator.opamp.session import CoreSettings, ServerCore
from opamp_operator.server import listeners
from opamp_operator.server.api import (
    ApiListen,
    Guard,
    LoopbackGuard,
    PathAccess,
    TokenGuard,
    shown_off_loop,
)
from opamp_operator.server.app import Limits, Listen, OpAMPServer
from opamp_operator.standalone.fleets import FileFleets

log = logging.getLogger(__name__)


def serve_core_settings(heartbeat_seconds: int | None) -> CoreSettings:
    """The session core for `serve`: the heartbeat interval offered to agents whose fleet
    names none; None (the core's default) offers none. Agents are judged by the core's
    default interval until they confirm an offer (ServerCore._judge_heartbeat)."""
    return replace(CoreSettings(), offer_heartbeat_seconds=heartbeat_seconds)


@dataclass(frozen=True)
class ServeOptions:
    """Everything `opamp-operator serve` is told, as the settings groups that own each
    default."""

    config: Path
    """The fleets file (standalone/fleets.py)."""
    listen: Listen = field(default_factory=Listen)
    api: ApiListen = field(default_factory=ApiListen)
    limits: Limits = field(default_factory=Limits)
    core: CoreSettings = field(default_factory=CoreSettings)
    reload_seconds: float = 2.0
    """How often the fleets file is checked for changes."""


class ApiExposedError(ValueError):
    """The read API would listen beyond loopback with nothing guarding it."""


def api_guard(api: ApiListen) -> Guard:
    """A token file guards the API wherever it listens; without one it may only listen
    on loopback, where whoever can connect is already on the machine."""
    if api.token_file is not None:
        return TokenGuard.from_file(api.token_file)
    if not api.loopback:
        raise ApiExposedError(
            f"the API would listen on {api.host} with no credential required: give "
            "--api-token-file, or --api-host 127.0.0.1"
        )
    return LoopbackGuard()


def build(options: ServeOptions) -> tuple[OpAMPServer, FileFleets]:
    fleets = FileFleets(options.config)
    core = ServerCore(options.core, desired=fleets)
    return OpAMPServer(core, options.limits), fleets


async def _watch(server: OpAMPServer, fleets: FileFleets, every: float) -> None:
    """Poll the file (no inotify dependency); a change queues the offers it implies."""
    while True:
        await asyncio.sleep(every)
        if fleets.reload():
            log.info("fleets changed: offering the new configs")
            server.core.desired_changed()


async def serve(options: ServeOptions, started: asyncio.Event | None = None) -> None:
    guard = api_guard(options.api)
    server, fleets = build(options)
    renders = server.config_workers("renders")
    scratch = tempfile.TemporaryDirectory(prefix="opamp-operator-serve-")
    sites = await listeners.start(
        server,
        options.listen,
        server.api(
            guard,
            shown_off_loop(masked_config_text, renders),
            PathAccess("/api/v1/agents"),
        ).app(),
        options.api,
        Path(scratch.name),
        self_sign_api=not options.api.loopback,
    )
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
        await sites.close()
        renders.close()
        scratch.cleanup()
