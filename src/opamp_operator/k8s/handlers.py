"""kopf registration: which event of which object calls which part of the shell.

The parts themselves: fleets.py (a fleet's spec into the state), fleet_status.py (the
status tick), rollouts.py (ConfigRollouts), webhook.py (admission). Nothing here decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import FLEETS_PLURAL, GROUP, VERSION
from opamp_operator.k8s import reads, webhook
from opamp_operator.k8s.access import KubernetesGuard, admission_user
from opamp_operator.k8s.fleet_status import FleetStatus
from opamp_operator.k8s.fleets import FleetReconciler
from opamp_operator.k8s.gates import pod_view
from opamp_operator.k8s.rollouts import ROLLOUTS, RolloutHandlers
from opamp_operator.k8s.settings import AgentTokenSettings, HandlerSettings
from opamp_operator.k8s.state import OperatorState
from opamp_operator.server.app import OpAMPServer
from opamp_operator.server.tls import read_ca_bundle

FLEETS = (GROUP, VERSION, FLEETS_PLURAL)
# A failed fleet or rollout handler is retried this soon, not after kopf's 60 s: the
# usual failures pass quickly (a conflict, an apiserver restart, or — on clusters with
# OwnerReferencesPermissionEnforcement — a 403 "cannot find RESTMapping" for a
# CollectorFleet whose CRD the apiserver's admission mapper has not picked up yet).
RETRY_SECONDS = 10.0


def register(
    registry: kopf.OperatorRegistry,
    state: OperatorState,
    server: OpAMPServer,
    settings: HandlerSettings,
    agent_tokens: AgentTokenSettings | None = None,
) -> None:
    """Attach every handler to `registry` (no module-level decorators: tests and the
    CLI build their own registries)."""
    rollouts = RolloutHandlers(state, settings.rollout_startup_grace)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs) or kopf.login_with_service_account(**kwargs)

    @kopf.on.event("pods", registry=registry)
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """Async: a deletion re-checks sessions, on the loop (see fleet_deleted)."""
        view = pod_view(body)
        if event["type"] == "DELETED":
            state.pods.pop(view.key, None)
            state.gone[view.key] = view
            state.pod_deleted(view.uid)
        else:
            state.pods[view.key] = view

    audience = (agent_tokens or AgentTokenSettings()).audiences[0]
    _register_fleets(registry, state, rollouts, settings, audience)
    _register_rollouts(registry, rollouts, settings)
    if settings.webhook:
        _register_webhook(registry)


def _register_fleets(
    registry: kopf.OperatorRegistry,
    state: OperatorState,
    rollouts: RolloutHandlers,
    settings: HandlerSettings,
    token_audience: str,
) -> None:
    agent_ca = read_ca_bundle(settings.agent_ca_file) if settings.agent_ca_file else None
    fleets = FleetReconciler(state, rollouts, settings.agent_endpoint, token_audience, agent_ca)
    rollouts.workload = fleets.reconcile_workload
    status = FleetStatus(state, settings)

    @kopf.on.resume(*FLEETS, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.create(*FLEETS, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.update(*FLEETS, field="spec", registry=registry, backoff=RETRY_SECONDS)
    async def fleet_changed(
        body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
    ) -> None:
        await fleets.reconcile(body, patch, logger)

    @kopf.on.delete(*FLEETS, registry=registry, optional=True)
    async def fleet_deleted(body: kopf.Body, **_: Any) -> None:
        """Async, like every handler that changes the state: kopf runs sync handlers in
        threads, where the offers and session checks it queues find no loop."""
        state.drop_fleet(f"{body.metadata.namespace}/{body.metadata.name}")

    @kopf.on.event("configmaps", registry=registry)
    async def config_map_changed(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        await fleets.config_map_changed(body, logger)

    @kopf.timer(*FLEETS, interval=settings.status_interval, registry=registry)
    async def write_status(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await status.tick(body, patch)


def _register_rollouts(
    registry: kopf.OperatorRegistry, rollouts: RolloutHandlers, settings: HandlerSettings
) -> None:
    @kopf.on.resume(*ROLLOUTS, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.create(*ROLLOUTS, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.update(*ROLLOUTS, registry=registry, backoff=RETRY_SECONDS)
    async def rollout_changed(body: kopf.Body, **_: Any) -> None:
        """Spec and control annotations act at once, not at the next tick."""
        await rollouts.tick(body)

    @kopf.on.delete(*ROLLOUTS, registry=registry, optional=True)
    async def rollout_deleted(body: kopf.Body, **_: Any) -> None:
        await rollouts.forget(body)

    @kopf.timer(*ROLLOUTS, interval=settings.rollout_interval, registry=registry)
    async def rollout_tick(body: kopf.Body, **_: Any) -> None:
        await rollouts.tick(body)


def _register_webhook(registry: kopf.OperatorRegistry) -> None:
    """One handler: the author's permissions first (fail closed), then the spec (fail
    open); see webhook.py. Its own guard, so admission answers are kept only briefly."""
    guard = KubernetesGuard(webhook.AUTHOR_ACCESS)

    @kopf.on.validate(
        *FLEETS,
        id="validate",
        operations=["CREATE", "UPDATE"],
        ignore_failures=True,
        registry=registry,
    )
    async def validate_fleet(
        *,
        spec: kopf.Spec,
        userinfo: Mapping[str, Any],
        namespace: str | None,
        name: str | None,
        logger: kopf.Logger,
        old: kopf.Body | None = None,
        operation: str | None = None,
        **_: Any,
    ) -> None:
        old_spec = old.spec if operation == "UPDATE" and old is not None else None
        checks = webhook.author_checks(namespace or "", spec, old_spec)
        refusal = await webhook.check_author(guard.allowed, admission_user(userinfo), checks)
        if refusal is not None:
            message, code = refusal
            raise kopf.AdmissionError(message[:4096], code=code)
        try:
            problem = await asyncio.to_thread(
                webhook.fleet_problems,
                spec,
                namespace or "",
                name or "",
                reads.config_map_value,
            )
        except ApiException as exc:
            logger.warning(
                "webhook: cannot validate %s/%s (%s); admitted", namespace, name, exc.status
            )
            return
        if problem is not None:
            raise kopf.AdmissionError(problem[:4096], code=422)
