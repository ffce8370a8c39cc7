"""A template change staged by a ConfigRollout (docs/rollout.md, "Template changes").

A config or package reaches a running Collector over OpAMP; a new image (any change of
the pod template) reaches it only in a new pod. So while a rollout stages a template
change, the planner (fleet/rollout.py) works on *slots*, not on agents: a slot is a place
for one pod that keeps its identity while its pod is replaced, so the rollout's
membership (a bucket cutoff over slot ids, persisted in status) says which slots run the
desired template, whatever pods come and go:

- DaemonSet: one slot per node (the DaemonSet on `OnDelete`; the operator deletes the pod
  of a member node and the DaemonSet controller creates its successor from the desired
  template, as Datadog's ExtendedDaemonSet canaries a DaemonSet);
- Deployment: `replicas` numbered slots; the members are the first slots in the
  rollout's order, as many as a canary Deployment of the desired template has replicas
  beside the stable Deployment, scaled down by as many (as Flagger splits a Deployment).
  Canary pods fill member slots oldest first.

A slot passes the step's gates as an agent passes a config step, through its pod's
agent: the pod runs the desired template, its agent connected, applied the revision's
config (and package), reports the target version, is healthy (its health counts once it
applied: before, its Collector is starting). A slot whose new pod never
connects has no report and fails the step at its apply timeout, counted from the step's
start or the pod's creation, whichever is later.

Pure functions over plain data; the Kubernetes shell (k8s/workload.py, k8s/rollouts.py)
renders the workloads and deletes the pods these decisions name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from opamp_operator.fleet.rollout import Membership, Phase, RolloutAgent, bucket
from opamp_operator.fleet.views import PodView

TEMPLATE_HASH_CHARS = 32
"""A template's hash as a label value (at most 63 characters): 128 bits of SHA-256."""
NOT_REVISIONED = ("kind", "replicas")
"""Template fields outside a revision: how many pods, and a change of kind, which
replaces the workload rather than rolling it."""


def template_hash(template: Mapping[str, Any]) -> str:
    """What identifies a fleet's pod template (spec.template as JSON) in its revision
    and on its pods."""
    kept = {k: v for k, v in template.items() if k not in NOT_REVISIONED}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:TEMPLATE_HASH_CHARS]


@dataclass(frozen=True)
class PodStaging:
    """Where a staged template change is: what the workloads should look like."""

    daemon_set: bool
    desired: str  # template hash of the desired revision
    stable: str  # template hash of the stable revision
    back: bool = False  # rolled back or aborted: every pod on the stable template
    members: frozenset[str] = frozenset()  # slots that run the desired template

    @property
    def canary_replicas(self) -> int:
        """Deployment: pods of the desired template beside the stable Deployment."""
        return 0 if self.back else len(self.members)


def deployment_slots(replicas: int) -> list[str]:
    return [f"replica-{i}" for i in range(max(0, replicas))]


def slot_of(pod: PodView) -> str:
    """A DaemonSet pod's slot: its node (its name until it is scheduled)."""
    return pod.node or f"pod/{pod.name}"


def member_slots(slots: Sequence[str], membership: Membership) -> frozenset[str]:
    return frozenset(s for s in slots if membership.contains(s, {}, {}))


def live(pods: Sequence[PodView]) -> list[PodView]:
    """The pods that speak for a slot: not being deleted."""
    return [p for p in pods if not p.terminating]


def daemon_set_slots(pods: Sequence[PodView], gone: Sequence[PodView] = ()) -> list[str]:
    """A DaemonSet's slots: the nodes of its pods, those being deleted and those deleted
    lately (`gone`) included. A slot whose pod is being replaced stays in the rollout,
    waiting for its successor, rather than leave a step that then passes without it."""
    return sorted({slot_of(p) for p in (*pods, *gone)})


def population(  # noqa: PLR0917 - the slots are made of all of these
    staging: PodStaging,
    revision: str,
    replicas: int,
    pods: Sequence[PodView],
    template_of: Callable[[PodView], str],
    report_of: Callable[[PodView], RolloutAgent | None],
    gone: Sequence[PodView] = (),
) -> list[RolloutAgent]:
    """The slots as the planner's agents. `revision`: the hash of the revision the
    planner rolls out, whose order (fleet.rollout.bucket) makes members of the first
    Deployment slots; `pods`: the workload's pods; `template_of`:
    the template hash a pod runs; `report_of`: its agent as the planner would see it
    (None: no agent connected for it). Only a pod of the desired template speaks for its
    slot; any other slot reports nothing, so a member stays pending until its new pod
    applies the revision, or times out. `gone`: the workload's pods deleted lately
    (daemon_set_slots)."""
    running = live(pods)
    filled: list[tuple[str, PodView | None]]
    if staging.daemon_set:
        by_slot: dict[str, PodView] = {}
        for pod in sorted(running, key=lambda p: (p.created, p.name)):
            by_slot[slot_of(pod)] = pod  # the newest pod of a node holds its slot
        filled = [(slot, by_slot.get(slot)) for slot in daemon_set_slots(pods, gone)]
    else:
        ids = deployment_slots(replicas)
        order = sorted(ids, key=lambda s: (bucket(revision, s), s))
        canary = sorted(
            (p for p in running if template_of(p) == staging.desired),
            key=lambda p: (p.created, p.name),
        )
        filled = [(slot, canary[i] if i < len(canary) else None) for i, slot in enumerate(order)]
    return [_slot(slot, pod, staging, template_of, report_of) for slot, pod in filled]


def _slot(
    slot: str,
    pod: PodView | None,
    staging: PodStaging,
    template_of: Callable[[PodView], str],
    report_of: Callable[[PodView], RolloutAgent | None],
) -> RolloutAgent:
    if pod is None:
        return RolloutAgent(uid=slot)
    if template_of(pod) != staging.desired:
        return RolloutAgent(uid=slot, pod=pod.key, pod_labels=pod.labels)
    report = report_of(pod)
    if report is None:
        return RolloutAgent(uid=slot, pod=pod.key, pod_labels=pod.labels, connected_at=pod.created)
    connected = max(report.connected_at, pod.created)
    if report.config_status != "APPLIED":
        # A new Collector is starting: unhealthy until it runs, which the apply timeout
        # judges (opampsupervisor reports APPLIED only with the Collector healthy); its
        # health counts from then on.
        return replace(report, uid=slot, connected_at=connected, healthy=None)
    return replace(report, uid=slot, connected_at=connected)


def to_replace(
    staging: PodStaging, pods: Sequence[PodView], template_of: Callable[[PodView], str]
) -> list[PodView]:
    """DaemonSet: the pods to delete so that their successors, which the DaemonSet
    controller creates from its template, run what their slot should: a member's pod of
    the stable template, or after a rollback any pod of the desired one."""
    if not staging.daemon_set:
        return []
    wrong = []
    for pod in live(pods):
        runs = template_of(pod)
        if staging.back:
            if runs != staging.stable:
                wrong.append(pod)
        elif slot_of(pod) in staging.members and runs != staging.desired:
            wrong.append(pod)
    return sorted(wrong, key=lambda p: p.name)


def config_membership(staging: PodStaging, desired_hash: str, label: str) -> Membership:
    """Which agents are offered the desired revision's config and package: those of pods
    of the desired template (a pod of the stable template keeps the stable revision,
    whatever its slot)."""
    if staging.back:
        return Membership.nobody(desired_hash)
    return Membership(desired_hash, selectors=(({}, {label: staging.desired}),))


def staging(
    *,
    daemon_set: bool,
    desired: str,
    stable: str,
    phase: Phase,
    current: bool,
    membership: Membership,
    slots: Sequence[str],
) -> PodStaging | None:
    """The staging of a rollout whose stable revision's pods run template `stable` and
    whose desired revision's run `desired` (template hashes; "" for a revision that
    stores none); None when the revisions share a template, which leaves the pods alone.
    `current`: the rollout's progress is about the fleet's desired revision (until it
    takes a new one in hand, no slot is a member); `membership`: the progress' members."""
    if not desired or not stable or desired == stable:
        return None
    back = current and phase in (Phase.ROLLED_BACK, Phase.ABORTED)
    members = member_slots(slots, membership) if current and not back else frozenset()
    return PodStaging(daemon_set, desired, stable, back, members)
