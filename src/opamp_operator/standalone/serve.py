"""`opamp-operator serve`: the OpAMP server with fleets from a file, no Kubernetes."""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web

from opamp_operator.fleet.drift import masked_config_text
from opamp_operator.fleet.rollout_status import RolloutTiming
from opamp_operator.opamp.session import CoreSettings, ServerCore
from opamp_operator.server import listeners
from opamp_operator.server.api import (
    ApiListen,
    ApiServer,
    Guard,
    LoopbackGuard,
    PathAccess,
    TokenGuard,
    shown_off_loop,
)
from opamp_operator.server.app import Limits, Listen, OpAMPServer
from opamp_operator.standalone.fleets import FileFleets
from opamp_operator.standalone.rollouts import ServeRollouts, StateDir

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
    state_dir: Path | None = None
    """Where fleets' stable revisions and rollouts' progress are kept; fleets may have
    a `rollout` only with one (standalone/rollouts.py)."""
    rollout: RolloutTiming = field(default_factory=RolloutTiming)


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


def build(options: ServeOptions) -> tuple[OpAMPServer, FileFleets, ServeRollouts | None]:
    fleets = FileFleets(options.config, staged=options.state_dir is not None)
    core = ServerCore(options.core, desired=fleets)
    rollouts = (
        ServeRollouts(fleets, core, StateDir(options.state_dir), options.rollout)
        if options.state_dir is not None
        else None
    )
    return OpAMPServer(core, options.limits), fleets, rollouts


async def _watch(server: OpAMPServer, fleets: FileFleets, every: float) -> None:
    """Poll the file (no inotify dependency); a change queues the offers it implies."""
    while True:
        await asyncio.sleep(every)
        if fleets.reload():
            log.info("fleets changed: offering the new configs")
            server.core.desired_changed()


async def _plan(rollouts: ServeRollouts, every: float) -> None:
    """Each fleet's rollout planned every `every` seconds, the plan's own time included
    (at 10,000 agents a sleep after each tick drifted 0.2-0.7 s)."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        due = max(due + every, loop.time())
        await asyncio.sleep(due - loop.time())
        await rollouts.tick_off_loop()


def _rollout_routes(api: ApiServer, rollouts: ServeRollouts | None) -> list[web.RouteDef]:
    """GET /api/v1/rollouts: each staged fleet's rollout status (a ConfigRollout's keys),
    behind the API's guard."""
    access = PathAccess("/api/v1/rollouts")

    async def list_rollouts(request: web.Request) -> web.Response:
        await api.context.require(request, access)
        found = rollouts.statuses() if rollouts is not None else {}
        listed = [{"fleet": name, **status} for name, status in sorted(found.items())]
        return web.json_response({"rollouts": listed, "count": len(listed)})

    return [web.get("/api/v1/rollouts", list_rollouts)]


async def serve(options: ServeOptions, started: asyncio.Event | None = None) -> None:
    guard = api_guard(options.api)
    server, fleets, rollouts = build(options)
    renders = server.config_workers("renders")
    scratch = tempfile.TemporaryDirectory(prefix="opamp-operator-serve-")
    api = server.api(
        guard, shown_off_loop(masked_config_text, renders), PathAccess("/api/v1/agents")
    )
    app = api.app()
    app.add_routes(_rollout_routes(api, rollouts))
    if rollouts is not None:
        rollouts.tick()  # the persisted holds in force before any agent is answered
    sites = await listeners.start(
        server,
        options.listen,
        app,
        options.api,
        Path(scratch.name),
        self_sign_api=not options.api.loopback,
    )
    tasks = [asyncio.create_task(_watch(server, fleets, options.reload_seconds))]
    if rollouts is not None:
        tasks.append(asyncio.create_task(_plan(rollouts, options.rollout.interval)))
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
        for task in tasks:
            task.cancel()
        await sites.close()
        renders.close()
        scratch.cleanup()
