"""kopf shell of ConfigRollout: read the rollout and its fleet's agents, run the planner
(fleet/rollout.py) on a timer, persist its progress in status, then let the fleet's
agents have the revision the planner gives them (docs/rollout.md).

Order matters for restarts: status is written before the membership it records takes
effect, so a crash in between repeats an offer and never loses or repeats a step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from opamp_operator.api.models import GROUP, VERSION, ConfigRolloutSpec, RolloutGates
from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.conditions import KState, Why, kstatus
from opamp_operator.fleet.conditions import merge as merge_conditions
from opamp_operator.fleet.text import truncate
from opamp_operator.fleet.validation import ConfigSyntaxError, load_yaml, used_component_types
from opamp_operator.k8s.state import FleetRecord, Governance, OperatorState, RolloutRef
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.server.app import OpAMPServer

log = logging.getLogger(__name__)
ROLLOUTS = (GROUP, VERSION, "configrollouts")
CONTROLS = ("promote", "abort", "retry")
FAILING_LIMIT = 10
# Status keys the planner owns: a key it drops is written as null (merge patch).
_PROGRESS_KEYS = (
    "phase",
    "pauseReason",
    "message",
    "currentStep",
    "stepArmed",
    "cutoff",
    "attempt",
    "desiredRevision",
    "desiredHash",
    "stableRevision",
    "stableHash",
    "startedAt",
    "stepStartedAt",
    "bakeStartedAt",
    "pausedAt",
    "pauseUntil",
    "finishedAt",
    "steps",
    "controls",
)


def control_annotation(name: str) -> str:
    return f"{GROUP}/{name}"


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gates(base: planner.Gates, override: RolloutGates | None) -> planner.Gates:
    """`base` with the fields the spec sets (same names in the model and the planner)."""
    if override is None:
        return base
    return dataclasses.replace(base, **override.model_dump(exclude_none=True))


def to_policy(spec: ConfigRolloutSpec) -> planner.Policy:
    """The spec as the planner's plain data."""
    defaults = _gates(planner.Gates(), spec.gates)
    steps = []
    for step in spec.steps:
        pause = step.pause
        steps.append(
            planner.Step(
                agents=step.agents,
                percent=step.percent,
                attributes=dict(step.selector.attributes) if step.selector else {},
                pod_labels=dict(step.selector.pod_labels) if step.selector else {},
                pause_seconds=float(pause.seconds) if pause and pause.seconds else None,
                pause_until_promoted=bool(pause and pause.until_promoted),
                gates=_gates(defaults, step.gates),
            )
        )
    return planner.Policy(
        steps=tuple(steps),
        on_failure=planner.OnFailure(spec.on_failure),
        paused=spec.paused,
        preflight=spec.preflight.enabled,
        block_on_unreported=spec.preflight.block_on_unreported,
    )


def controls_of(annotations: Mapping[str, str]) -> planner.Controls:
    return planner.Controls(
        **{name: str(annotations.get(control_annotation(name), "")) for name in CONTROLS}
    )


def config_components(text: str | None) -> dict[str, frozenset[str]]:
    """The component types a config defines, per plural kind (for preflight)."""
    if text is None:
        return {}
    try:
        config = load_yaml(text)
    except ConfigSyntaxError:
        return {}
    return {kind: frozenset(types) for kind, types in used_component_types(config).items()}


def rollout_conditions(
    decision: planner.Decision | None, generation: int, problem: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """kstatus: Ready when Succeeded; Reconciling while it moves; Stalled when it stopped
    on a failure, a preflight block, or a spec that references nothing usable."""
    if problem is not None or decision is None:
        reason, message = problem or ("Unknown", "")
        return kstatus(KState.STALLED, Why(reason, message), generation)
    progress = decision.progress
    phase = planner.Phase(progress.phase)
    message = progress.message or phase.value
    if decision.preflight is not None and decision.preflight.blocked:
        return kstatus(KState.STALLED, Why("PreflightFailed", message), generation)
    if phase is planner.Phase.SUCCEEDED:
        return kstatus(KState.READY, Why("Succeeded", message), generation)
    if phase in (planner.Phase.FAILED, planner.Phase.ROLLED_BACK, planner.Phase.ABORTED):
        return kstatus(KState.STALLED, Why(phase.value, message), generation)
    return kstatus(KState.PROGRESSING, Why(phase.value, message), generation)


def fleet_problem(progress: planner.Progress) -> tuple[str, str] | None:
    """What the governed fleet's conditions say while the rollout stopped short."""
    phase = planner.Phase(progress.phase)
    if phase not in (planner.Phase.FAILED, planner.Phase.ROLLED_BACK, planner.Phase.ABORTED):
        return None
    revision = f"{progress.desired_revision} ({progress.desired_hash[:12]})"
    stable = progress.stable_revision
    said = {
        planner.Phase.ROLLED_BACK: f"rolled back revision {revision}; every agent runs "
        f"stable revision {stable}",
        planner.Phase.ABORTED: f"was aborted on revision {revision}; every agent runs "
        f"stable revision {stable}",
        planner.Phase.FAILED: f"failed on revision {revision} and holds: agents it has not "
        f"reached run stable revision {stable}",
    }[phase]
    return f"Rollout{phase.value}", f"the ConfigRollout {said}: {progress.message}"


class RolloutHandlers:
    def __init__(
        self, state: OperatorState, server: OpAMPServer, startup_grace: float = 15.0
    ) -> None:
        self.state = state
        self.server = server
        # A step armed right after a start would size itself on the few agents that have
        # reconnected so far: until the grace is over, the persisted progress only holds.
        self.startup_grace = startup_grace
        self._started = time.monotonic()
        self._planned: set[str] = set()  # rollouts this process has planned already
        self._locks: dict[str, asyncio.Lock] = {}
        # ControllerRevision name -> config text; a name is content-addressed (revisions.py).
        self._texts: dict[str, str] = {}

    # ---- reading the world -----------------------------------------------------------

    def _revision_text(self, namespace: str, name: str) -> str | None:
        cached = self._texts.get(name)
        if cached is not None:
            return cached
        try:
            obj = k8s.AppsV1Api().read_namespaced_controller_revision(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = obj.data if isinstance(obj.data, Mapping) else {}
        text = data.get("config")
        if not isinstance(text, str):
            return None
        self._texts[name] = text
        return text

    async def governance(
        self,
        record: FleetRecord,
        rollout: str,
        progress: planner.Progress,
        membership: planner.Membership,
    ) -> Governance:
        """The fleet's stable bytes come from its ControllerRevision: a rollback offers
        exactly what agents ran before."""
        text: str | None
        if progress.stable_hash == record.desired_hash:
            text = record.config_text
        elif progress.stable_revision:
            text = await asyncio.to_thread(
                self._revision_text, record.namespace, progress.stable_revision
            )
        else:
            text = None
        config = RemoteConfig.single(text.encode()) if text is not None else None
        if config is not None and config.hash.hex() != progress.stable_hash:
            log.error(
                "revision %s of %s does not hash to %s; offering the desired config",
                progress.stable_revision,
                record.key,
                progress.stable_hash[:12],
            )
            text, config = None, None
        return Governance(
            rollout=rollout,
            membership=membership,
            stable_revision=progress.stable_revision,
            stable_hash=progress.stable_hash,
            stable_text=text,
            stable_config=config,
            problem=fleet_problem(progress),
        )

    async def load_for_fleet(
        self, record: FleetRecord, previous: FleetRecord | None, fleet_status: Mapping[str, Any]
    ) -> None:
        """Before a (re)reconciled fleet offers anything: the governance its rollout's
        persisted status implies. On an operator restart this is the only source."""
        namespace = record.namespace
        custom: Any = k8s.CustomObjectsApi()
        try:
            listed: dict[str, Any] = await asyncio.to_thread(
                custom.list_namespaced_custom_object, GROUP, VERSION, namespace, ROLLOUTS[2]
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            # The ConfigRollout CRD is not installed: nothing can govern the fleet.
            record.governance = None
            return
        for obj in listed.get("items", []):
            self._remember(obj)
        ref = self.state.governing_rollout(record.key)
        if ref is None:
            record.governance = None
            return
        obj = next(o for o in listed["items"] if o["metadata"]["name"] == ref.name)
        try:
            spec = ConfigRolloutSpec.model_validate(obj.get("spec") or {})
        except ValidationError:
            record.governance = None
            return
        status = obj.get("status") or {}
        if status.get("desiredHash"):
            progress = planner.Progress.from_status(status)
        elif previous is not None and previous.governance is not None:
            record.governance = previous.governance
            return
        else:
            stable = (
                str(fleet_status.get("stableRevision") or ""),
                str(fleet_status.get("stableHash") or ""),
            )
            if not stable[1] and previous is not None:
                stable = previous.stable
            progress = planner.initial_progress(
                planner.Revision(record.revision or "", record.desired_hash),
                *stable,
                planner.Controls(),
            )
        membership = planner.membership(to_policy(spec), progress)
        record.governance = await self.governance(record, ref.key, progress, membership)

    def _remember(self, obj: Mapping[str, Any]) -> RolloutRef | None:
        meta = obj.get("metadata") or {}
        fleet = ((obj.get("spec") or {}).get("fleetRef") or {}).get("name")
        if not fleet:
            return None
        ref = RolloutRef(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            fleet=f"{meta.get('namespace', '')}/{fleet}",
            created=str(meta.get("creationTimestamp") or ""),
        )
        self.state.rollouts[ref.key] = ref
        return ref

    def _agents(self, record: FleetRecord) -> list[planner.RolloutAgent]:
        """The fleet's live agents, with what the gates and preflight need."""
        assignment = self.state.assignment or self.state.refresh()
        mapping = assignment.mapping_for(record.key)
        views = self.state.refresh_views(mapping.agents)
        drift = self.state.drift_of(record, views)
        agents = []
        for uid, view in views.items():
            if not view.live:
                continue
            pod_key = mapping.pod_of.get(uid, "")
            pod = mapping.pods.get(pod_key) if pod_key else None
            agents.append(
                planner.RolloutAgent(
                    uid=uid,
                    pod=pod_key,
                    attributes=view.attributes,
                    pod_labels=pod.labels if pod is not None else {},
                    accepts_remote_config=view.accepts_remote_config,
                    healthy=view.healthy,
                    health_error=view.health_error,
                    config_status=view.remote_config_status,
                    config_hash=view.remote_config_hash,
                    config_error=view.remote_config_error,
                    drifted=drift.get(uid),
                    components=view.components,
                    connected_at=view.connected_at,
                )
            )
        return agents

    # ---- the tick --------------------------------------------------------------------

    async def tick(self, body: kopf.Body) -> None:
        meta = body.metadata
        key = f"{meta.namespace}/{meta.name}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            await self._tick(body)

    async def _tick(self, body: kopf.Body) -> None:
        meta = body.metadata
        namespace, name = meta.namespace or "", meta.name or ""
        key = f"{namespace}/{name}"
        generation = int(meta.get("generation", 0))
        old_status = dict(body.get("status", {}))
        try:
            spec = ConfigRolloutSpec.model_validate(dict(body.spec))
        except ValidationError as exc:
            await self._write_problem(body, old_status, ("InvalidSpec", f"invalid spec: {exc}"))
            return
        ref = self._remember(body)
        fleet_key = f"{namespace}/{spec.fleet_ref.name}"
        record = self.state.fleets.get(fleet_key)
        if record is None and await self._fleet_exists(namespace, spec.fleet_ref.name):
            return  # not reconciled yet (e.g. right after a start): its handler comes first
        if record is None:
            await self._write_problem(
                body,
                old_status,
                ("FleetNotFound", f"CollectorFleet {fleet_key} does not exist"),
            )
            return
        governing = self.state.governing_rollout(fleet_key)
        if ref is None or governing is None or governing.key != key:
            other = governing.key if governing is not None else "?"
            await self._write_problem(
                body,
                old_status,
                ("Conflict", f"CollectorFleet {fleet_key} is governed by ConfigRollout {other}"),
            )
            return
        if record.config is None or not record.revision:
            await self._write_problem(
                body,
                old_status,
                (
                    "FleetNotReady",
                    f"CollectorFleet {fleet_key} has no valid config revision: "
                    f"{record.problem or 'not reconciled yet'}",
                ),
            )
            return
        policy = to_policy(spec)
        controls = controls_of(meta.annotations)
        desired = planner.Revision(
            record.revision, record.desired_hash, config_components(record.config_text)
        )
        if old_status.get("desiredHash"):
            progress = planner.Progress.from_status(old_status)
            if key not in self._planned and time.monotonic() - self._started < self.startup_grace:
                governance = await self.governance(
                    record, key, progress, planner.membership(policy, progress)
                )
                self.state.set_governance(record, governance)
                return
        else:
            progress = planner.initial_progress(desired, *record.stable, controls)
        self._planned.add(key)
        agents = self._agents(record)
        decision = planner.plan(policy, progress, desired, agents, time.time(), controls)
        status = self._status(decision, agents, generation, old_status)
        if any(old_status.get(k) != v for k, v in status.items()):
            await self._patch_status(namespace, name, status)
        membership = decision.membership
        governance = await self.governance(record, key, decision.progress, membership)
        self.state.set_governance(record, governance)
        for event in decision.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])

    def _status(
        self,
        decision: planner.Decision,
        agents: list[planner.RolloutAgent],
        generation: int,
        old: Mapping[str, Any],
    ) -> dict[str, Any]:
        progress = decision.progress.to_status()
        status: dict[str, Any] = {k: progress.get(k) for k in _PROGRESS_KEYS}
        status.update({k: v for k, v in progress.items() if k not in status})
        preflight = decision.preflight
        status.update(
            {
                "observedGeneration": generation,
                "conditions": merge_conditions(
                    old.get("conditions", []), rollout_conditions(decision, generation), _now_iso()
                ),
                "agents": sum(1 for a in agents if a.accepts_remote_config),
                "unmanaged": decision.unmanaged,
                "preflight": (
                    {
                        "blocked": preflight.blocked,
                        "missing": [
                            {"component": c, "agents": n}
                            for c, n in sorted(preflight.missing.items(), key=lambda x: -x[1])
                        ][:20],
                        "unreported": preflight.unreported,
                        "checked": preflight.checked,
                    }
                    if preflight is not None
                    else None
                ),
                "failingAgents": [
                    {
                        "instanceUid": f.uid,
                        "pod": f.pod,
                        "reason": f.reason,
                        "message": truncate(f.message),
                    }
                    for f in decision.failing[:FAILING_LIMIT]
                ],
            }
        )
        stopped = (planner.Phase.FAILED, planner.Phase.ROLLED_BACK, planner.Phase.ABORTED)
        if not decision.failing and planner.Phase(decision.progress.phase) in stopped:
            # After a rollback nobody is a member any more: the culprits stay on record.
            status["failingAgents"] = list(old.get("failingAgents") or [])
        return status

    async def _write_problem(
        self, body: kopf.Body, old: Mapping[str, Any], problem: tuple[str, str]
    ) -> None:
        """A rollout that cannot act says why, and changes nothing else."""
        generation = int(body.metadata.get("generation", 0))
        status = {
            "observedGeneration": generation,
            "conditions": merge_conditions(
                old.get("conditions", []),
                rollout_conditions(None, generation, problem),
                _now_iso(),
            ),
        }
        if any(old.get(k) != v for k, v in status.items()):
            await self._patch_status(
                body.metadata.namespace or "", body.metadata.name or "", status
            )

    async def _fleet_exists(self, namespace: str, name: str) -> bool:
        custom: Any = k8s.CustomObjectsApi()
        try:
            await asyncio.to_thread(
                custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                "collectorfleets",
                name,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await asyncio.to_thread(
            k8s.CustomObjectsApi().patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            ROLLOUTS[2],
            name,
            {"status": status},
        )

    async def forget(self, body: kopf.Body) -> None:
        """A deleted rollout no longer governs: its fleet offers its desired revision to
        every agent again."""
        key = f"{body.metadata.namespace}/{body.metadata.name}"
        ref = self.state.rollouts.pop(key, None)
        self._locks.pop(key, None)
        if ref is None:
            return
        record = self.state.fleets.get(ref.fleet)
        if (
            record is not None
            and record.governance is not None
            and record.governance.rollout == key
        ):
            self.state.set_governance(record, None)
