"""kopf shell of ConfigRollout: read the rollout and its fleet's agents, run the planner
(fleet/rollout.py) on a timer, persist its progress in status, then let the fleet's
agents have the revision the planner gives them (docs/rollout.md).

Order matters for restarts: status is written before the membership it records takes
effect, so a crash in between repeats an offer and never loses or repeats a step.

This module decides nothing: whether a rollout is planned and what its status says are
fleet/rollout_status.py's, every move the planner's. It reads (k8s/reads.py), writes
status, emits the planner's Events and hands governance to `OperatorState`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes import client as k8s
from pydantic import ValidationError

from opamp_operator.api.models import (
    FLEETS_PLURAL,
    GROUP,
    ROLLOUTS_PLURAL,
    VERSION,
    ConfigRolloutSpec,
    FleetTemplate,
    WorkloadKind,
)
from opamp_operator.api.policy import stored_package, to_policy
from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.conditions import now_iso
from opamp_operator.fleet.pod_rollout import (
    PodStaging,
    config_membership,
    daemon_set_slots,
    deployment_slots,
    population,
    staging,
)
from opamp_operator.fleet.rollout_agents import (
    Placement,
    config_components,
    revision_status,
    rollout_agent,
)
from opamp_operator.fleet.rollout_status import (
    Facts,
    blocker,
    fleet_problem,
    holds,
    known_stable,
    problem_status,
    rollout_status,
    status_patch,
)
from opamp_operator.fleet.versions import revision_hash, version_status
from opamp_operator.fleet.views import PodView
from opamp_operator.k8s import reads, workload
from opamp_operator.k8s.events import emit
from opamp_operator.k8s.state import FleetRecord, Governance, OperatorState, RolloutRef
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.packages import PackageOffer

log = logging.getLogger(__name__)
ROLLOUTS = (GROUP, VERSION, ROLLOUTS_PLURAL)


def control_annotation(name: str) -> str:
    return f"{GROUP}/{name}"


def controls_of(annotations: Mapping[str, str]) -> planner.Controls:
    return planner.Controls(
        **{
            name: str(annotations.get(control_annotation(name), ""))
            for name in planner.CONTROL_NAMES
        }
    )


@dataclass(frozen=True)
class StoredRevision:
    """What a ControllerRevision holds: the config text, spec.version JSON (None: no
    package) and spec.template JSON (None: not template mode)."""

    config: str
    version: str | None = None
    template: str | None = None


@dataclass(frozen=True)
class StableRevision:
    """The stable revision as a rollback offers and renders it."""

    text: str
    package: PackageOffer | None = None
    template: FleetTemplate | None = None

    @property
    def template_hash(self) -> str:
        return self.template.digest() if self.template is not None else ""


def validated(obj: Mapping[str, Any]) -> tuple[ConfigRolloutSpec | None, str | None]:
    """A rollout's spec, or why it is invalid."""
    try:
        return ConfigRolloutSpec.model_validate(dict(obj.get("spec") or {})), None
    except ValidationError as exc:
        return None, str(exc)


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class RolloutHandlers:
    def __init__(
        self,
        state: OperatorState,
        startup_grace: float,
        workload: Callable[[kopf.Body, FleetRecord], Awaitable[bool]] | None = None,
    ) -> None:
        """`workload`: renders a template-mode fleet's workloads (the fleet reconciler's),
        Events going to the body given."""
        self.state = state
        self.workload = workload
        # Template fleets whose workloads a staged template change still moves (a
        # step's pods, a canary to delete): followed each tick until settled.
        self._settling: set[str] = set()
        # A step armed right after a start would size itself on the few agents that have
        # reconnected so far: until the grace is over, the persisted progress only holds.
        self.startup_grace = startup_grace
        self._started = time.monotonic()
        self._planned: set[str] = set()  # rollouts this process has planned already
        self._locks: dict[str, asyncio.Lock] = {}
        # ControllerRevision name -> (config text, spec.version JSON or None); a name is
        # content-addressed (revisions.py).
        self._texts: dict[str, StoredRevision] = {}
        # Rollout key -> (the resourceVersion this process last wrote a status over,
        # the status it wrote): see `_status`.
        self._wrote: dict[str, tuple[str | None, dict[str, Any]]] = {}

    # ---- reading the world -----------------------------------------------------------

    def _revision(self, namespace: str, name: str) -> StoredRevision | None:
        if name not in self._texts:
            obj = reads.controller_revision(namespace, name)
            data = obj.data if obj is not None and isinstance(obj.data, Mapping) else {}
            text, version, template = (data.get(k) for k in ("config", "version", "template"))
            if not isinstance(text, str) or not all(
                isinstance(v, str | None) for v in (version, template)
            ):
                return None
            self._texts[name] = StoredRevision(text, version, template)
        return self._texts[name]

    async def _stable(
        self, record: FleetRecord, progress: planner.Progress
    ) -> StableRevision | None:
        """The stable revision's config bytes, package and pod template: a rollback
        offers exactly what agents ran before, in the pods they ran in."""
        if progress.stable_hash == record.revision_hash:
            if not record.config_text:
                return None
            return StableRevision(record.config_text, record.package, record.spec.template)
        if not progress.stable_revision:
            return None
        stored = await asyncio.to_thread(self._revision, record.namespace, progress.stable_revision)
        if stored is None:
            return None
        try:
            template = stored.template
            return StableRevision(
                stored.config,
                stored_package(stored.version),
                FleetTemplate.model_validate_json(template) if template is not None else None,
            )
        except (ValidationError, ValueError) as exc:
            log.error("revision %s of %s: %s", progress.stable_revision, record.key, exc)
            return None

    def _staging(
        self,
        record: FleetRecord,
        stable: StableRevision | None,
        policy: planner.Policy,
        progress: planner.Progress,
    ) -> PodStaging | None:
        """The staging of a template change (fleet/pod_rollout.py), or None."""
        desired = record.spec.template
        if desired is None or stable is None or stable.template is None:
            return None
        if stable.template.kind != desired.kind:
            return None  # a change of kind replaces the workload: nothing to stage
        daemon_set = desired.kind == WorkloadKind.DAEMON_SET
        slots = (
            daemon_set_slots(self._pods(record), self._pods(record, gone=True))
            if daemon_set
            else deployment_slots(desired.replicas)
        )
        return staging(
            daemon_set=daemon_set,
            desired=record.template_hash,
            stable=stable.template_hash,
            phase=progress.phase,
            current=progress.desired_hash == record.revision_hash,
            membership=planner.membership(policy, progress),
            slots=slots,
        )

    def _pods(self, record: FleetRecord, gone: bool = False) -> list[PodView]:
        """The fleet's workload pods, as the pod watch has them; `gone`: those it saw
        deleted lately instead."""
        pods = self.state.gone.values() if gone else self.state.pods.values()
        return [p for p in pods if workload.is_workload_pod(p, record)]

    async def governance(
        self, record: FleetRecord, rollout: str, policy: planner.Policy, progress: planner.Progress
    ) -> Governance:
        """The rollout's hold on its fleet; the stable bytes from its ControllerRevision.
        While it stages a template change, its members are the pods of the desired
        template (fleet/pod_rollout.py)."""
        stable = await self._stable(record, progress)
        config = RemoteConfig.single(stable.text.encode()) if stable is not None else None
        if stable is not None and config is not None:
            found = revision_hash(config.hash.hex(), stable.package, stable.template_hash)
            if found != progress.stable_hash:
                log.error(
                    "revision %s of %s does not hash to %s; offering the desired revision",
                    progress.stable_revision,
                    record.key,
                    progress.stable_hash[:12],
                )
                stable, config = None, None
        membership = planner.membership(policy, progress)
        pods = self._staging(record, stable, policy, progress)
        if pods is not None:
            membership = config_membership(pods, progress.desired_hash, workload.TEMPLATE_LABEL)
        return Governance(
            rollout=rollout,
            membership=membership,
            stable_revision=progress.stable_revision,
            stable_hash=progress.stable_hash,
            stable_text=stable.text if stable is not None else None,
            stable_config=config,
            stable_package=stable.package if stable is not None else None,
            stable_template=stable.template if stable is not None else None,
            pods=pods,
            problem=fleet_problem(progress),
        )

    async def _govern(
        self, record: FleetRecord, rollout: str, policy: planner.Policy, p: planner.Progress
    ) -> None:
        """Hands the fleet the membership `p` stands for (set_governance queues offers)."""
        self.state.set_governance(record, await self.governance(record, rollout, policy, p))

    async def load_for_fleet(
        self, record: FleetRecord, previous: FleetRecord | None, fleet_status: Mapping[str, Any]
    ) -> None:
        """Before a (re)reconciled fleet offers anything: the governance its rollout's
        persisted status implies. On an operator restart this is the only source."""
        listed = await asyncio.to_thread(reads.custom_objects, record.namespace, ROLLOUTS_PLURAL)
        for item in listed or []:  # None: the ConfigRollout CRD is not installed
            self._remember(item)
        ref = self.state.governing_rollout(record.key) if listed is not None else None
        found = [o for o in listed or [] if ref is not None and _key(o) == ref.key]
        obj = found[0] if found else None
        record.governance = (
            await self._loaded(record, previous, fleet_status, ref, obj)
            if ref is not None and obj is not None
            else None
        )

    async def _loaded(
        self,
        record: FleetRecord,
        previous: FleetRecord | None,
        fleet_status: Mapping[str, Any],
        ref: RolloutRef,
        obj: Mapping[str, Any],
    ) -> Governance | None:
        spec, _ = validated(obj)
        if spec is None:
            return None
        progress = planner.persisted(obj.get("status") or {})
        if progress is None and previous is not None and previous.governance is not None:
            return previous.governance
        if progress is None:
            stable = known_stable(fleet_status, previous.stable if previous is not None else None)
            desired = planner.Revision(record.revision or "", record.revision_hash)
            progress = planner.initial_progress(desired, *stable, planner.Controls())
        return await self.governance(record, ref.key, to_policy(spec), progress)

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

    async def _agents(
        self, record: FleetRecord, pods: PodStaging | None
    ) -> list[planner.RolloutAgent]:
        """The fleet's live agents, with what the gates and preflight need; while a
        template change is staged (`pods`), its slots (fleet/pod_rollout.py)."""
        assignment = self.state.assignment or self.state.refresh()
        mapping = assignment.mapping_for(record.key)
        unverified = set(assignment.unverified.get(record.key, ()))
        views = self.state.refresh_views(mapping.agents)
        drift = await self.state.drift_of(record, views)
        agents = {}
        for uid, view in views.items():
            if not view.live:
                continue
            pod_key = mapping.pod_of.get(uid, "")
            pod = mapping.pods.get(pod_key) if pod_key else None
            status, hash_, error = revision_status(view, record.desired)
            if pods is not None and status == "APPLIED":
                status, error = version_status(view, record.target_version)
            placement = Placement(
                pod_key,
                pod.labels if pod is not None else {},
                drift.get(uid),
                uid not in unverified,
            )
            agents[uid] = rollout_agent(view, (status, hash_, error), placement)
        if pods is None:
            return list(agents.values())
        desired = record.spec.template
        replicas = desired.replicas if desired is not None else 0

        def report(pod: PodView) -> planner.RolloutAgent | None:
            uid = mapping.agent_of.get(pod.key)
            return agents.get(uid) if uid is not None else None

        return population(
            pods,
            record.revision_hash,
            replicas,
            self._pods(record),
            workload.template_of,
            report,
            self._pods(record, gone=True),
        )

    async def _facts(
        self, body: kopf.Body, spec: ConfigRolloutSpec | None, error: str | None
    ) -> tuple[Facts, FleetRecord | None]:
        """What `blocker` needs, and the fleet's record; the fleet is looked up in the
        cluster only when the operator has no record of it."""
        key, namespace = _key(body), body.metadata.namespace or ""
        if spec is None:
            return Facts(key, spec_error=error), None
        self._remember(body)
        fleet = f"{namespace}/{spec.fleet_ref.name}"
        record = self.state.fleets.get(fleet)
        exists = record is not None or (
            await asyncio.to_thread(
                reads.custom_object, namespace, FLEETS_PLURAL, spec.fleet_ref.name
            )
            is not None
        )
        governing = self.state.governing_rollout(fleet)
        facts = Facts(
            key,
            fleet,
            reconciled=record is not None,
            exists=exists,
            governing=governing.key if governing is not None else None,
            revision=record is not None and record.config is not None and bool(record.revision),
            fleet_problem=record.problem if record is not None else None,
        )
        return facts, record

    # ---- the tick --------------------------------------------------------------------

    async def tick(self, body: kopf.Body) -> None:
        key = _key(body)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            await self._tick(body)

    async def _tick(self, body: kopf.Body) -> None:
        old = self._status(body)
        spec, error = validated(body)
        facts, record = await self._facts(body, spec, error)
        found = blocker(facts)
        if found is not None:
            if found.report:
                generation = int(body.metadata.get("generation", 0))
                await self._write(body, old, problem_status(found.why, generation, old, now_iso()))
            return
        if spec is not None and record is not None:  # blocker() saw to both
            await self._plan(body, spec, record, old)

    async def _plan(
        self, body: kopf.Body, spec: ConfigRolloutSpec, record: FleetRecord, old: dict[str, Any]
    ) -> None:
        """One planner tick: status written first, then the membership it records."""
        key, policy = _key(body), to_policy(spec)
        controls = controls_of(body.metadata.annotations)
        desired = planner.Revision(
            record.revision or "", record.revision_hash, config_components(record.config_text)
        )
        progress = planner.persisted(old)
        uptime = time.monotonic() - self._started
        if progress is not None and holds(key in self._planned, uptime, self.startup_grace):
            await self._govern(record, key, policy, progress)
            return
        if progress is None:
            progress = planner.initial_progress(desired, *record.stable, controls)
        self._planned.add(key)
        stable = await self._stable(record, progress)
        agents = await self._agents(record, self._staging(record, stable, policy, progress))
        decision = planner.plan(policy, progress, desired, agents, time.time(), controls)
        generation = int(body.metadata.get("generation", 0))
        await self._write(body, old, rollout_status(decision, generation, old, now_iso()))
        await self._govern(record, key, policy, decision.progress)
        emit(body, decision.events)
        await self._pods_follow(body, record)

    def follow(self, fleet: str) -> None:
        """The fleet's workloads are not settled: its rollout's ticks see them through
        (a canary still to delete after a restart, say)."""
        self._settling.add(fleet)

    async def _pods_follow(self, body: kopf.Body, record: FleetRecord) -> None:
        """Template mode: the workloads as the governance now stands (a step's canary
        scaled, its DaemonSet pods replaced, a rollback's or a success's clean-up);
        Events on the rollout, whose step they are. Only while a template change is
        staged or settling: otherwise a tick would re-apply every workload it governs."""
        if record.spec.template is None or record.workload_problem is not None:
            return  # the fleet's own reconcile reported the template's problem
        if self.workload is None:
            return
        g = record.governance
        if g is not None and g.pods is not None:
            self._settling.add(record.key)
        if record.key not in self._settling:
            return
        if await self.workload(body, record):
            self._settling.discard(record.key)

    def _status(self, body: kopf.Body) -> dict[str, Any]:
        """The rollout's status as this tick must plan from: the body's, unless the body
        is the very version this process wrote a status over. kopf hands the change
        handler a snapshot taken before it queued; a timer tick holding the lock can
        plan the same promote and write, and the snapshot would then plan it again (a
        second StepStarted Event, test_template_rollout saw 9 for 8)."""
        found = self._wrote.get(_key(body))
        if found is not None and found[0] == body.metadata.get("resourceVersion"):
            return dict(found[1])
        return dict(body.get("status", {}))

    async def _write(
        self, body: kopf.Body, old: Mapping[str, Any], status: Mapping[str, Any]
    ) -> None:
        """Patches the keys of `status` that changed; writes nothing when none did."""
        patch = status_patch(old, status)
        if patch is None:
            return
        await asyncio.to_thread(
            k8s.CustomObjectsApi().patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            body.metadata.namespace or "",
            ROLLOUTS_PLURAL,
            body.metadata.name or "",
            {"status": patch},
        )
        written = {k: v for k, v in {**old, **patch}.items() if v is not None}
        self._wrote[_key(body)] = (body.metadata.get("resourceVersion"), written)

    async def forget(self, body: kopf.Body) -> None:
        """A deleted rollout no longer governs: its fleet offers its desired revision to
        every agent again."""
        key = _key(body)
        ref = self.state.rollouts.pop(key, None)
        self._locks.pop(key, None)
        self._wrote.pop(key, None)
        if ref is None:
            return
        record = self.state.fleets.get(ref.fleet)
        if (
            record is not None
            and record.governance is not None
            and record.governance.rollout == key
        ):
            self.state.set_governance(record, None)
            await self._pods_follow(body, record)
