"""`opamp-operator run`: kopf and the OpAMP server in one asyncio process."""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import kopf
from aiohttp import web
from kubernetes import config as k8s_config

from opamp_operator.k8s import peering
from opamp_operator.k8s.api import FleetAPI
from opamp_operator.k8s.handlers import register
from opamp_operator.k8s.peering import PeeringWatch
from opamp_operator.k8s.settings import HandlerSettings, PeeringSettings
from opamp_operator.k8s.state import OperatorState
from opamp_operator.k8s.webhook import WebhookOptions, webhook_server
from opamp_operator.opamp.session import CoreSettings, ServerCore
from opamp_operator.server.app import Limits, Listen, OpAMPServer

log = logging.getLogger(__name__)


def operator_core_settings() -> CoreSettings:
    """The session core as the operator runs it: agents that accept connection settings
    are offered the heartbeat interval the core assumes for them, so every agent's is
    known."""
    core = CoreSettings()
    return replace(core, offer_heartbeat_seconds=int(core.default_heartbeat_seconds))


@dataclass(frozen=True)
class RunOptions:
    """Everything `opamp-operator run` is told, as the settings groups that own each
    default."""

    namespaces: tuple[str, ...] = ()
    """Watch only these namespaces; empty: cluster-wide."""
    listen: Listen = field(default_factory=Listen)
    limits: Limits = field(default_factory=Limits)
    core: CoreSettings = field(default_factory=operator_core_settings)
    handlers: HandlerSettings = field(default_factory=HandlerSettings)
    peering: PeeringSettings = field(default_factory=PeeringSettings)
    webhook: WebhookOptions | None = None
    """Serve the validating admission webhook; None: off (`handlers.webhook` follows)."""


def load_kubernetes_credentials() -> None:
    """The kubernetes client the handlers use for reads and writes kopf does not do:
    in-cluster service account first, then $KUBECONFIG / ~/.kube/config."""
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]


async def run(options: RunOptions) -> None:
    load_kubernetes_credentials()
    state = OperatorState()
    core = ServerCore(options.core, desired=state)
    state.core = core
    server = OpAMPServer(core, options.limits, authenticate=state.authenticate)
    app = server.app()
    FleetAPI(state).add_routes(app)
    watch: PeeringWatch | None = None
    identity = peering.new_identity()
    peering_name = options.peering.name
    if peering_name is not None:
        server.set_standby(True)
        watch = PeeringWatch(
            peering_name,
            identity,
            options.namespaces,
            on_change=lambda active: server.set_standby(not active),
        )
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    listen = options.listen
    await web.TCPSite(runner, listen.host, listen.port).start()
    log.info("OpAMP server on %s:%d/v1/opamp", listen.host, listen.port)

    registry = kopf.OperatorRegistry()
    register(
        registry,
        state,
        server,
        replace(options.handlers, webhook=options.webhook is not None),
    )
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.INFO
    # Handler progress and the last handled spec live in status, never in annotations:
    # Argo CD and Flux own the metadata and spec of the objects they apply.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    if peering_name is not None:
        settings.peering.mandatory = True
        settings.peering.lifetime = options.peering.lifetime
        settings.peering.priority = options.peering.priority or peering.random_priority()
        log.info("peering %s as %s, priority %d", peering_name, identity, settings.peering.priority)
    scratch = tempfile.TemporaryDirectory(prefix="opamp-operator-webhook-")
    if options.webhook is not None:
        settings.admission.server = webhook_server(options.webhook, Path(scratch.name))
        settings.admission.managed = options.webhook.configuration
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watching = None
    if watch is not None:
        await asyncio.to_thread(watch.ensure)
        watching = asyncio.create_task(watch.run())
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=not options.namespaces,
            namespaces=options.namespaces,
            standalone=peering_name is None,
            peering_name=peering_name,
            identity=cast(Any, identity),
            stop_flag=stop,
        )
    finally:
        if watching is not None:
            watching.cancel()
        log.info("shutting down: telling WebSocket agents to reconnect (close 1001)")
        await runner.cleanup()
        scratch.cleanup()
