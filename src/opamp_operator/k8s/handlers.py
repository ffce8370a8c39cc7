"""kopf handlers: a thin shell that reads fleets, pods and ConfigMaps into the operator
state, keeps config revisions, and writes aggregated status on a timer (never per
heartbeat)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from opamp_operator.api.models import (
    AGENT_READY_CONDITION,
    GROUP,
    VERSION,
    CollectorFleetSpec,
    DriftPolicy,
)
from opamp_operator.fleet.conditions import KState, Why, kstatus
from opamp_operator.fleet.conditions import merge as merge_conditions
from opamp_operator.fleet.health import (
    Reason,
    agent_ready_condition,
    conditions,
    summarize,
)
from opamp_operator.fleet.mapping import FleetSelector, MappingResult, SelectorError
from opamp_operator.fleet.remediation import Action, plan_remediation
from opamp_operator.fleet.validation import format_problems, validate_config
from opamp_operator.fleet.views import PodView
from opamp_operator.k8s import revisions, webhook, workload
from opamp_operator.k8s.rollouts import ROLLOUTS, RolloutHandlers
from opamp_operator.k8s.settings import HandlerSettings
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.ids import uid_str
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.server.app import OpAMPServer

log = logging.getLogger(__name__)
FLEETS = (GROUP, VERSION, "collectorfleets")
# A failed fleet or rollout handler is retried this soon, not after kopf's 60 s: the
# usual failures pass quickly (a conflict, an apiserver restart, or — on clusters with
# OwnerReferencesPermissionEnforcement — a 403 "cannot find RESTMapping" for a
# CollectorFleet whose CRD the apiserver's admission mapper has not picked up yet).
RETRY_SECONDS = 10.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_view(body: kopf.Body) -> PodView:
    status, spec, meta = body.get("status", {}), body.get("spec", {}), body.metadata
    gates = tuple(g.get("conditionType", "") for g in spec.get("readinessGates", []) or [])
    return PodView(
        namespace=meta.namespace or "",
        name=meta.name or "",
        uid=meta.uid or "",
        ip=status.get("podIP", "") or "",
        labels=dict(meta.labels),
        node=spec.get("nodeName", "") or "",
        phase=status.get("phase", "") or "",
        readiness_gates=gates,
    )


def _resolve_config(namespace: str, spec: CollectorFleetSpec) -> str:
    """The Collector config text; raises ValueError with a message for the status."""
    source = spec.config
    if source.inline is not None:
        return source.inline
    ref = source.config_map_ref
    if ref is None:
        raise ValueError("spec.config has neither inline nor configMapRef")
    try:
        cm = k8s.CoreV1Api().read_namespaced_config_map(ref.name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise ValueError(f"ConfigMap {namespace}/{ref.name} not found") from None
        raise
    data = cm.data or {}
    if ref.key not in data:
        raise ValueError(f"ConfigMap {namespace}/{ref.name} has no key {ref.key!r}")
    return str(data[ref.key])


def _resolve_token(namespace: str, spec: CollectorFleetSpec) -> bytes | None:
    """sha256 of the fleet's agent token; raises ValueError with a message for the status.
    Only `get` on the one Secret named: the operator never lists Secrets."""
    ref = spec.auth_secret_ref
    if ref is None:
        return None
    try:
        secret = k8s.CoreV1Api().read_namespaced_secret(ref.name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise ValueError(f"Secret {namespace}/{ref.name} not found") from None
        if exc.status == 403:
            raise ValueError(f"the operator may not read Secret {namespace}/{ref.name}") from None
        raise
    data = secret.data or {}
    if ref.key not in data:
        raise ValueError(f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
    token = base64.b64decode(data[ref.key]).decode(errors="replace").strip()
    if not token:
        raise ValueError(f"Secret {namespace}/{ref.name} key {ref.key!r} is empty")
    return hashlib.sha256(token.encode()).digest()


async def _read_token(record: FleetRecord) -> None:
    try:
        record.token_digest = await asyncio.to_thread(_resolve_token, record.namespace, record.spec)
        record.auth_error = None
    except ValueError as exc:
        # Keep a token already known: a Secret briefly missing must not lock agents out.
        record.auth_error = str(exc)
    record.token_read_at = time.monotonic()


def _read_config_map(namespace: str, name: str, key: str) -> str | None:
    try:
        cm = k8s.CoreV1Api().read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    value = (cm.data or {}).get(key)
    return None if value is None else str(value)


def _validate(text: str) -> str | None:
    """What the Collector would refuse, as one message for the Stalled condition."""
    problems = validate_config(text)
    return format_problems(problems) if problems else None


def _ensure_revision(body: kopf.Body, record: FleetRecord) -> tuple[str, bool]:
    """Keep the config as a ControllerRevision; returns its name and whether it was
    created now."""
    if record.config is None or record.config_text is None:
        raise ValueError("a fleet without a valid config has no revision")
    apps: Any = k8s.AppsV1Api()
    selector = f"{revisions.FLEET_LABEL}={record.name}"
    listed = apps.list_namespaced_controller_revision(record.namespace, label_selector=selector)
    existing = [revisions.parse(r.to_dict()) for r in listed.items]
    plan = revisions.plan(
        record.name, existing, record.desired_hash, record.spec.revision_history_limit
    )
    obj = revisions.revision_object(body, plan.current, record.config_text)
    if plan.create:
        apps.create_namespaced_controller_revision(record.namespace, obj)
    elif any(r.name == plan.current.name and r.revision != plan.current.revision for r in existing):
        # Back to an older config: its object moves to the newest number. Not a patch: the
        # apiserver re-encodes `data` on any update and then refuses it as changed
        # ("data: field is immutable"). The bytes are the same, so delete and create.
        apps.delete_namespaced_controller_revision(plan.current.name, record.namespace)
        apps.create_namespaced_controller_revision(record.namespace, obj)
    for name in plan.prune:
        apps.delete_namespaced_controller_revision(name, record.namespace)
    return plan.current.name, plan.create


class FleetHandlers:
    """The handlers' logic, with the state and the server they act on."""

    def __init__(
        self, state: OperatorState, server: OpAMPServer, settings: HandlerSettings
    ) -> None:
        self.state = state
        self.server = server
        self.settings = settings
        self.rollouts = RolloutHandlers(state, server, settings.rollout_startup_grace)
        # Pod conditions last written, so a pod is patched only when its gate changes.
        self._gates: dict[str, tuple[str, str]] = {}

    async def reconcile(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
        """Read the fleet's spec and config, keep its revision, offer changes at once."""
        meta = body.metadata
        namespace, name = meta.namespace or "", meta.name or ""
        try:
            spec = CollectorFleetSpec.model_validate(dict(body.spec))
            selector = FleetSelector.from_label_selector(
                namespace,
                name,
                meta.creation_timestamp or 0.0,
                spec.selector.model_dump(by_alias=True),
            )
        except (ValidationError, SelectorError) as exc:
            patch.status["conditions"] = _stalled(body, f"invalid spec: {exc}")
            return
        generation = int(meta.get("generation", 0))
        selector = dataclasses.replace(selector, requires_token=spec.auth_secret_ref is not None)
        record = FleetRecord(namespace, name, meta.uid or "", generation, selector, spec)
        await _read_token(record)
        try:
            record.config_text = await asyncio.to_thread(_resolve_config, namespace, spec)
            record.config_error = _validate(record.config_text)
        except ValueError as exc:
            record.config_error = str(exc)
        created = False
        if record.config_error is None and record.config_text is not None:
            record.config = RemoteConfig.single(record.config_text.encode())
            record.revision, created = await asyncio.to_thread(_ensure_revision, body, record)
        try:
            await workload.reconcile_workload(body, record, self.settings.agent_endpoint)
        except workload.TemplateError as exc:
            record.workload_error = f"spec.template: {exc}"
            kopf.warn(body, reason="TemplateInvalid", message=record.workload_error[:1024])
        previous = self.state.fleets.get(record.key)
        # Before anything is offered: which agents a governing rollout keeps on the stable
        # revision (after a restart, only the rollout's status knows).
        await self.rollouts.load_for_fleet(record, previous, dict(body.get("status", {})))
        self.state.put_fleet(record)
        if previous is None or previous.desired_hash != record.desired_hash:
            # Not on a restart's resume: the revision is old news then.
            if record.config is not None and (created or previous is not None):
                assignment = self.state.assignment or self.state.refresh()
                live = sum(1 for v in assignment.mapping_for(record.key).agents.values() if v.live)
                kopf.info(
                    body,
                    reason="ConfigRevision",
                    message=f"config revision {record.revision} ({record.desired_hash[:12]}); "
                    f"offered to {live} connected agents",
                )
        logger.info("fleet %s reconciled: revision %s", record.key, record.revision)

    async def config_map_changed(self, body: kopf.Body, logger: kopf.Logger) -> None:
        namespace, name = body.metadata.namespace or "", body.metadata.name or ""
        for record in self.state.fleets_using_config_map(namespace, name):
            fleet = await asyncio.to_thread(
                k8s.CustomObjectsApi().get_namespaced_custom_object,
                GROUP,
                VERSION,
                record.namespace,
                "collectorfleets",
                record.name,
            )
            await self.reconcile(kopf.Body(cast(kopf.RawBody, fleet)), kopf.Patch(), logger)

    async def write_readiness_gates(self, record: FleetRecord, mapping: MappingResult) -> int:
        """Set the agent-ready condition on the fleet's pods that declare that readiness
        gate, so a rollout of a new Collector image waits for OpAMP health. Returns how
        many pods were patched."""
        patched = 0
        for key, pod in mapping.pods.items():
            if AGENT_READY_CONDITION not in pod.readiness_gates:
                continue
            uid = mapping.agent_of.get(key)
            agent = mapping.agents.get(uid) if uid is not None else None
            expected_hash = self.state.expected(record, uid)[1] if uid is not None else ""
            cond = agent_ready_condition(agent, expected_hash, AGENT_READY_CONDITION)
            if self._gates.get(key) == (cond["status"], cond["reason"]):
                continue
            body = {"status": {"conditions": [{**cond, "lastTransitionTime": _now()}]}}
            try:
                await asyncio.to_thread(
                    k8s.CoreV1Api().patch_namespaced_pod_status, pod.name, pod.namespace, body
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                continue
            self._gates[key] = (cond["status"], cond["reason"])
            patched += 1
        return patched

    async def write_status(self, body: kopf.Body, patch: kopf.Patch) -> None:
        """Aggregate the fleet's agents; patch status only when something changed."""
        key = f"{body.metadata.namespace}/{body.metadata.name}"
        record = self.state.fleets.get(key)
        if record is None:
            return
        if (
            record.spec.auth_secret_ref is not None
            and time.monotonic() - record.token_read_at > self.settings.token_refresh_seconds
        ):
            await _read_token(record)
        assignment = self.state.refresh()
        mapping = assignment.mapping_for(key)
        await self.write_readiness_gates(record, mapping)
        drift = self.state.drift_of(record, mapping.agents)
        if record.spec.drift_policy == DriftPolicy.REMEDIATE:
            await self.remediate(body, record, mapping, drift)
        health = summarize(record.selector, mapping, record.desired_hash, drift)
        problem = record.problem_reason
        new_conditions = conditions(
            health,
            record.generation,
            int(body.metadata.get("generation", 0)),
            Why(*problem) if problem is not None else None,
        )
        old_status = dict(body.get("status", {}))
        merged = merge_conditions(old_status.get("conditions", []), new_conditions, _now())
        status: dict[str, Any] = {
            **health.to_status(),
            "observedGeneration": record.generation,
            "conditions": merged,
            "desiredRevision": record.revision,
            "desiredHash": record.desired_hash or None,
            "stableRevision": record.stable[0] or None,
            "stableHash": record.stable[1] or None,
            "agentsUnauthenticated": len(assignment.unauthenticated.get(key, ())),
            "overlappingFleets": sorted(
                {f for o in assignment.overlaps.get(key, ()) for f in o.fleets if f != key}
            ),
        }
        if {k: old_status.get(k) for k in status} != status:
            patch.status.update(status)
            _announce(body, old_status.get("conditions", []), merged)
            _announce_counts(body, old_status, status)

    async def remediate(
        self,
        body: kopf.Body,
        record: FleetRecord,
        mapping: MappingResult,
        drift: dict[str, bool | None],
    ) -> None:
        """Policy Remediate: re-offer the desired config to drifted agents, then restart
        those that accept it, then give up and say so (see fleet/remediation.py)."""
        core = self.state.core
        if core is None:
            return
        raw = {uid_str(uid): agent for uid, agent in core.agents.items()}
        live = {uid: v for uid, v in drift.items() if uid in raw and raw[uid].live}
        can_restart = {
            uid: raw[uid].can(pb.AgentCapabilities_AcceptsRestartCommand) for uid in live
        }
        plan = plan_remediation(
            live,
            self.state.remediation.get(record.key, {}),
            record.desired_hash,
            can_restart,
            now=time.monotonic(),
            settings=self.settings.remediation,
        )
        self.state.remediation[record.key] = dict(plan.attempts)
        for uid, action in plan.actions.items():
            if action is Action.REOFFER:
                core.reoffer_config(raw[uid].instance_uid)
            else:
                core.request_restart(raw[uid].instance_uid)

        def pods(uids: Iterable[str]) -> str:
            names = sorted(mapping.pod_of.get(uid, uid) for uid in uids)
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

        by_action = {a: [u for u, x in plan.actions.items() if x is a] for a in Action}
        if by_action[Action.REOFFER]:
            kopf.event(
                body,
                type="Normal",
                reason="DriftRemediating",
                message=f"re-offered the desired config to {len(by_action[Action.REOFFER])} "
                f"drifted agents: {pods(by_action[Action.REOFFER])}",
            )
        if by_action[Action.RESTART]:
            kopf.event(
                body,
                type="Normal",
                reason="DriftRemediating",
                message=f"drift outlived the re-offer; restarting "
                f"{len(by_action[Action.RESTART])} agents: {pods(by_action[Action.RESTART])}",
            )
        if plan.remediated:
            kopf.event(
                body,
                type="Normal",
                reason="Remediated",
                message=f"{len(plan.remediated)} agents run the desired config again: "
                f"{pods(plan.remediated)}",
            )
        if plan.gave_up:
            kopf.event(
                body,
                type="Warning",
                reason="RemediationFailed",
                message=f"drift persists on {len(plan.gave_up)} agents after re-offer"
                f" and restart; a local config may override the fleet's: {pods(plan.gave_up)}",
            )


def register(
    registry: kopf.OperatorRegistry,
    state: OperatorState,
    server: OpAMPServer,
    settings: HandlerSettings,
) -> None:
    """Attach every handler to `registry` (no module-level decorators: tests and the
    CLI build their own registries)."""
    handlers = FleetHandlers(state, server, settings)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs) or kopf.login_with_service_account(**kwargs)

    @kopf.on.event("pods", registry=registry)
    def pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        view = pod_view(body)
        if event["type"] == "DELETED":
            state.pods.pop(view.key, None)
        else:
            state.pods[view.key] = view

    @kopf.on.resume(*FLEETS, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.create(*FLEETS, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.update(*FLEETS, field="spec", registry=registry, backoff=RETRY_SECONDS)
    async def fleet_changed(
        body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
    ) -> None:
        await handlers.reconcile(body, patch, logger)

    @kopf.on.delete(*FLEETS, registry=registry, optional=True)
    def fleet_deleted(body: kopf.Body, **_: Any) -> None:
        state.drop_fleet(f"{body.metadata.namespace}/{body.metadata.name}")

    @kopf.on.resume(*ROLLOUTS, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.create(*ROLLOUTS, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.update(*ROLLOUTS, registry=registry, backoff=RETRY_SECONDS)
    async def rollout_changed(body: kopf.Body, **_: Any) -> None:
        """Spec and control annotations act at once, not at the next tick."""
        await handlers.rollouts.tick(body)

    @kopf.on.delete(*ROLLOUTS, registry=registry, optional=True)
    async def rollout_deleted(body: kopf.Body, **_: Any) -> None:
        await handlers.rollouts.forget(body)

    @kopf.timer(*ROLLOUTS, interval=settings.rollout_interval, registry=registry)
    async def rollout_tick(body: kopf.Body, **_: Any) -> None:
        await handlers.rollouts.tick(body)

    @kopf.on.event("configmaps", registry=registry)
    async def config_map_changed(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        await handlers.config_map_changed(body, logger)

    if settings.webhook:

        @kopf.on.validate(
            *FLEETS,
            id="validate",
            operations=["CREATE", "UPDATE"],
            ignore_failures=True,
            registry=registry,
        )
        def validate_fleet(
            spec: kopf.Spec, namespace: str | None, name: str | None, **_: Any
        ) -> None:
            problem = webhook.fleet_problems(spec, namespace or "", name or "", _read_config_map)
            if problem is not None:
                raise kopf.AdmissionError(problem[:4096], code=422)

    @kopf.timer(*FLEETS, interval=settings.status_interval, registry=registry)
    async def write_status(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await handlers.write_status(body, patch)


# Status counts whose rise is announced, with the Event's reason and wording.
_COUNT_EVENTS = (
    ("configFailed", "ConfigFailed", "agents report the config FAILED"),
    ("drifted", "DriftDetected", "agents run something other than the desired config"),
    ("unhealthy", "AgentsUnhealthy", "agents are unhealthy, disconnected or silent"),
)


_WORST_REASONS = {
    "configFailed": {Reason.CONFIG_FAILED.value},
    "drifted": {Reason.DRIFTED.value},
    "unhealthy": {Reason.UNHEALTHY.value, Reason.DISCONNECTED.value, Reason.STALE.value},
}


def _announce_counts(body: kopf.Body, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A Warning Event when the number of failed, drifted or unhealthy agents rises; the
    worst agents' reasons name who (one Event per status write, never per agent)."""
    for key, reason, text in _COUNT_EVENTS:
        before, after = int(old.get(key) or 0), int(new.get(key) or 0)
        if after > before:
            who = [
                w.get("pod") or w.get("instanceUid", "")
                for w in new.get("worstAgents", [])
                if w.get("reason") in _WORST_REASONS[key]
            ]
            named = f" (e.g. {', '.join(who[:5])})" if who else ""
            kopf.event(
                body,
                type="Warning",
                reason=reason,
                message=f"{after} {text}, was {before}{named}"[:1024],
            )


def _stalled(body: kopf.Body, message: str) -> list[dict[str, Any]]:
    old = dict(body.get("status", {})).get("conditions", [])
    generation = int(body.metadata.get("generation", 0))
    new = kstatus(KState.STALLED, Why("InvalidSpec", message), generation)
    return merge_conditions(old, new, _now())


def _announce(body: kopf.Body, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """A Kubernetes Event for every condition whose status changed."""
    before = {c.get("type"): c.get("status") for c in old}
    for cond in new:
        if before.get(cond["type"]) != cond["status"]:
            kind = (
                "Normal" if (cond["type"] == "Ready") == (cond["status"] == "True") else "Warning"
            )
            kopf.event(
                body,
                type=kind,
                reason=f"{cond['type']}{cond['status']}",
                message=f"{cond['reason']}: {cond.get('message', '')}"[:1024],
            )
