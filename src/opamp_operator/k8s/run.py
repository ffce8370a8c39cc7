"""`opamp-operator run`: kopf and the OpAMP server in one asyncio process."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import kopf
from kubernetes import config as k8s_config

from opamp_operator.fleet.drift import masked_config_text
from opamp_operator.k8s import peering
from opamp_operator.k8s.access import AgentTokenReviewer, KubernetesGuard, cluster_client_ca
from opamp_operator.k8s.api import FleetAPI, fleet_access
from opamp_operator.k8s.handlers import register
from opamp_operator.k8s.peering import PeeringWatch
from opamp_operator.k8s.settings import (
    AccessSettings,
    AgentTokenSettings,
    HandlerSettings,
    PeeringSettings,
)
from opamp_operator.k8s.state import OperatorState
from opamp_operator.k8s.webhook import WebhookOptions, webhook_server
from opamp_operator.opamp.session import CoreSettings, ServerCore
from opamp_operator.server import listeners
from opamp_operator.server.api import ApiListen, shown_off_loop
from opamp_operator.server.app import Limits, Listen, OpAMPServer
from opamp_operator.server.listeners import Listeners

log = logging.getLogger(__name__)


def operator_core_settings() -> CoreSettings:
    """The session core as the operator runs it: agents that accept connection settings,
    in no fleet or in one that names no interval, are offered the interval the core
    assumes agents keep (30 s); a fleet's spec.heartbeatIntervalSeconds overrides it
    (OperatorState.heartbeat_for)."""
    core = CoreSettings()
    return replace(core, offer_heartbeat_seconds=int(core.default_heartbeat_seconds))


@dataclass(frozen=True)
class RunOptions:
    """Everything `opamp-operator run` is told, as the settings groups that own each
    default."""

    namespaces: tuple[str, ...] = ()
    """Watch only these namespaces; empty: cluster-wide."""
    listen: Listen = field(default_factory=Listen)
    api: ApiListen = field(default_factory=ApiListen)
    access: AccessSettings = field(default_factory=AccessSettings)
    agent_tokens: AgentTokenSettings = field(default_factory=AgentTokenSettings)
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


def kopf_settings(options: RunOptions, identity: str, scratch: Path) -> kopf.OperatorSettings:
    """kopf as this operator runs it: progress in status, peering when named, the
    admission webhook when asked."""
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.INFO
    # Handler progress and the last handled spec live in status, never in annotations:
    # Argo CD and Flux own the metadata and spec of the objects they apply.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    if options.peering.name is not None:
        settings.peering.mandatory = True
        settings.peering.lifetime = options.peering.lifetime
        settings.peering.priority = options.peering.priority or peering.random_priority()
        log.info(
            "peering %s as %s, priority %d",
            options.peering.name,
            identity,
            settings.peering.priority,
        )
    if options.webhook is not None:
        settings.admission.server = webhook_server(options.webhook, scratch)
        settings.admission.managed = options.webhook.configuration
    return settings


async def serve_opamp(
    options: RunOptions, state: OperatorState, identity: str, scratch: Path
) -> tuple[OpAMPServer, Listeners, PeeringWatch | None]:
    """The OpAMP server and the read API, listening; on standby behind a peering watch."""
    core = ServerCore(options.core, desired=state)
    state.core = core
    server = OpAMPServer(core, options.limits, authenticate=state.authenticate)
    state.judges, state.renders = server.config_workers("judges"), server.config_workers("renders")
    state.credentials_changed = server.revalidate
    state.reviewer = AgentTokenReviewer(
        options.agent_tokens, lambda result: server.metrics.token_reviews.labels(result).inc()
    )
    # Every agent of every fleet: for whoever may list fleets cluster-wide. Not a
    # nonResourceURL under /api: the default system:discovery role grants /api/* to
    # every authenticated user.
    api = server.api(
        KubernetesGuard(options.access),
        shown_off_loop(masked_config_text, state.renders),
        fleet_access("list"),
    )
    api_app = api.app()
    FleetAPI(state, api.context).add_routes(api_app)
    watch: PeeringWatch | None = None
    if options.peering.name is not None:
        server.set_standby(True)
        watch = PeeringWatch(
            options.peering.name,
            identity,
            options.namespaces,
            on_change=lambda active: server.set_standby(not active),
        )
    client_ca = await asyncio.to_thread(cluster_client_ca)
    sites = await listeners.start(
        server,
        options.listen,
        api_app,
        options.api,
        scratch,
        self_sign_api=True,
        user_client_ca=client_ca,
    )
    return server, sites, watch


async def run(options: RunOptions) -> None:
    load_kubernetes_credentials()
    state = OperatorState()
    identity = peering.new_identity()
    scratch = tempfile.TemporaryDirectory(prefix="opamp-operator-")
    server, sites, watch = await serve_opamp(options, state, identity, Path(scratch.name) / "api")
    registry = kopf.OperatorRegistry()
    handlers = replace(options.handlers, webhook=options.webhook is not None)
    register(registry, state, server, handlers, options.agent_tokens)

    @kopf.on.cleanup(registry=registry)
    async def close_listeners(**_: Any) -> None:
        """Agents told to go (close 1001) while kopf stops: it gives every task started
        after it, agents' WebSocket handlers included, 5 s to end before it returns."""
        log.info("shutting down: telling WebSocket agents to reconnect (close 1001)")
        await sites.close()

    watching = None
    if watch is not None:
        await asyncio.to_thread(watch.ensure)
        watching = asyncio.create_task(watch.run())
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(options, identity, Path(scratch.name) / "webhook"),
            clusterwide=not options.namespaces,
            namespaces=options.namespaces,
            standalone=options.peering.name is None,
            peering_name=options.peering.name,
            identity=cast(Any, identity),
            # No stop_flag: kopf stops on SIGTERM/SIGINT itself, and a flag never set
            # left its waiter task pending, which kopf then gave 5 s before every exit.
        )
    finally:
        if watching is not None:
            watching.cancel()
        await sites.close()
        state.close()
        scratch.cleanup()
