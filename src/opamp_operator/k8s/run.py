"""`opamp-operator run`: kopf and the OpAMP server in one asyncio process."""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import kopf
from aiohttp import web
from kubernetes import config as k8s_config

from opamp_operator.fleet.remediation import RemediationSettings
from opamp_operator.k8s import peering
from opamp_operator.k8s.api import FleetAPI
from opamp_operator.k8s.handlers import register
from opamp_operator.k8s.peering import PeeringWatch
from opamp_operator.k8s.settings import HandlerSettings
from opamp_operator.k8s.state import OperatorState
from opamp_operator.k8s.webhook import WebhookOptions, webhook_server
from opamp_operator.opamp.session import CoreSettings, ServerCore
from opamp_operator.server.app import DEFAULT_PORT, Limits, OpAMPServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    host: str = "0.0.0.0"  # noqa: S104 - agents connect from other pods
    port: int = DEFAULT_PORT
    peering: str | None = None  # kopf peering name for an active/standby pair
    peering_priority: int | None = None  # None: random, so identical replicas differ
    peering_lifetime: int = 60  # seconds a silent replica is still presumed alive
    status_interval: float = 5.0
    rollout_interval: float = 2.0
    rollout_startup_grace: float = 15.0
    heartbeat_seconds: int | None = 30
    agent_endpoint: str | None = None
    remediation_wait_seconds: float = 30.0
    webhook: WebhookOptions | None = None
    limits: Limits = field(default_factory=Limits)


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
    core = ServerCore(
        CoreSettings(offer_heartbeat_seconds=options.heartbeat_seconds), desired=state
    )
    state.core = core
    server = OpAMPServer(core, options.limits, authenticate=state.authenticate)
    app = server.app()
    FleetAPI(state).add_routes(app)
    watch: PeeringWatch | None = None
    identity = peering.new_identity()
    if options.peering is not None:
        server.set_standby(True)
        watch = PeeringWatch(
            options.peering,
            identity,
            options.namespaces,
            on_change=lambda active: server.set_standby(not active),
        )
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, options.host, options.port).start()
    log.info("OpAMP server on %s:%d/v1/opamp", options.host, options.port)

    registry = kopf.OperatorRegistry()
    register(
        registry,
        state,
        server,
        HandlerSettings(
            status_interval=options.status_interval,
            rollout_interval=options.rollout_interval,
            rollout_startup_grace=options.rollout_startup_grace,
            agent_endpoint=options.agent_endpoint,
            remediation=RemediationSettings(wait_seconds=options.remediation_wait_seconds),
            webhook=options.webhook is not None,
        ),
    )
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.INFO
    # Handler progress and the last handled spec live in status, never in annotations:
    # Argo CD and Flux own the metadata and spec of the objects they apply.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    if options.peering is not None:
        settings.peering.mandatory = True
        settings.peering.lifetime = options.peering_lifetime
        settings.peering.priority = options.peering_priority or peering.random_priority()
        log.info(
            "peering %s as %s, priority %d", options.peering, identity, settings.peering.priority
        )
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
            standalone=options.peering is None,
            peering_name=options.peering,
            identity=cast(Any, identity),
            stop_flag=stop,
        )
    finally:
        if watching is not None:
            watching.cancel()
        log.info("shutting down: telling WebSocket agents to reconnect (close 1001)")
        await runner.cleanup()
        scratch.cleanup()
