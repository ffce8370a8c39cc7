"""A staged template change (fleet/pod_rollout.py): slots, the planner's steps over them,
which DaemonSet pods are replaced, which agents get the desired config."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.pod_rollout import (
    PodStaging,
    config_membership,
    deployment_slots,
    population,
    slot_of,
    staging,
    template_hash,
    to_replace,
)
from opamp_operator.fleet.rollout import Membership, Phase, RolloutAgent
from opamp_operator.fleet.versions import revision_hash, version_status
from opamp_operator.fleet.views import AgentView, PodView

pytestmark = pytest.mark.unit

LABEL = "opampoperator.io/template-hash"
A = template_hash({"image": "otelcol:a"})
B = template_hash({"image": "otelcol:b"})


def _pod(name: str, template: str, node: str = "", created: float = 0.0, **kw: bool) -> PodView:
    return PodView(
        "ns",
        name,
        f"uid-{name}",
        labels={LABEL: template},
        node=node,
        created=created,
        terminating=kw.get("terminating", False),
    )


def _template_of(pod: PodView) -> str:
    return pod.labels.get(LABEL, "")


def _applied(pod: PodView) -> RolloutAgent:
    return RolloutAgent(
        uid=f"agent-{pod.name}",
        pod=pod.key,
        config_status="APPLIED",
        config_hash="rev",
        healthy=True,
        connected_at=5.0,
    )


def test_the_template_hash_leaves_out_how_many_pods_and_their_kind() -> None:
    base = {"image": "otelcol:a", "resources": {"limits": {"cpu": "1"}}}
    assert template_hash({**base, "replicas": 3}) == template_hash({**base, "replicas": 9})
    assert template_hash({**base, "kind": "DaemonSet"}) == template_hash(base)
    assert template_hash({**base, "image": "otelcol:b"}) != template_hash(base)
    assert len(template_hash(base)) == 32  # a label value: at most 63 characters


def test_a_template_is_part_of_the_revision_and_a_package_only_revision_keeps_its_hash() -> None:
    assert revision_hash("c0ffee", None) == "c0ffee"
    assert revision_hash("c0ffee", None, A) != revision_hash("c0ffee", None, B)
    assert revision_hash("c0ffee", None, A) != "c0ffee"


def _staging(
    *,
    desired: str = B,
    stable: str = A,
    phase: Phase = Phase.PROGRESSING,
    current: bool = True,
    slots: Sequence[str] = (),
    membership: Membership | None = None,
) -> PodStaging | None:
    """A Deployment's staging; every slot a member unless `membership` says otherwise."""
    return staging(
        daemon_set=False,
        desired=desired,
        stable=stable,
        phase=phase,
        current=current,
        membership=membership or Membership.all("rev"),
        slots=slots,
    )


def test_no_staging_when_the_revisions_share_a_template_or_one_stores_none() -> None:
    slots = deployment_slots(3)
    assert _staging(desired=A, slots=slots) is None
    assert _staging(stable="", slots=slots) is None
    assert _staging(slots=slots) == PodStaging(False, B, A, False, frozenset(slots))


def test_a_rollback_puts_every_slot_back_and_a_revision_not_yet_taken_has_no_member() -> None:
    slots = deployment_slots(4)
    back = _staging(phase=Phase.ROLLED_BACK, slots=slots)
    assert back is not None
    assert back.back
    assert back.canary_replicas == 0
    waiting = _staging(current=False, slots=slots)
    assert waiting is not None
    assert not waiting.back
    assert not waiting.members


def _plan_steps(replicas: int, steps: Sequence[planner.Step]) -> list[frozenset[str]]:
    """The member slots of a Deployment rollout after each step arms, every canary pod
    applying the revision at once."""
    policy = planner.Policy(steps=tuple(steps))
    desired = planner.Revision("fleet-b", "rev")
    progress = planner.initial_progress(desired, "fleet-a", "old", planner.Controls())
    seen: list[frozenset[str]] = []
    now = 1000.0
    for _ in range(len(steps) * 2):
        slots = deployment_slots(replicas)
        current = _staging(
            phase=progress.phase, slots=slots, membership=planner.membership(policy, progress)
        )
        assert current is not None
        pods = [_pod(f"canary-{i}", B, created=float(i)) for i in range(current.canary_replicas)]
        pods += [_pod(f"stable-{i}", A) for i in range(replicas - current.canary_replicas)]
        agents = population(current, "rev", replicas, pods, _template_of, _applied)
        decision = planner.plan(policy, progress, desired, agents, now, planner.Controls())
        progress = decision.progress
        members = _staging(phase=progress.phase, slots=slots, membership=decision.membership)
        assert members is not None
        if not seen or seen[-1] != members.members:
            seen.append(members.members)
        now += 1
        if progress.phase is Phase.SUCCEEDED:
            break
    assert progress.phase is Phase.SUCCEEDED
    return seen


def test_a_deployment_rollout_grows_its_canary_step_by_step() -> None:
    steps = [planner.Step(agents=1), planner.Step(percent=50), planner.Step(percent=100)]
    sizes = [len(m) for m in _plan_steps(4, steps)]
    assert sizes == [1, 2, 4]


@given(
    replicas=st.integers(min_value=1, max_value=40),
    percents=st.lists(st.integers(min_value=1, max_value=99), min_size=1, max_size=3),
)
def test_each_percent_step_holds_its_share_of_the_replicas(
    replicas: int, percents: list[int]
) -> None:
    percents = sorted(set(percents))
    steps = [planner.Step(percent=p) for p in percents] + [planner.Step(percent=100)]
    sizes = [len(m) for m in _plan_steps(replicas, steps)]
    wanted = sorted({max(1, math.ceil(p * replicas / 100)) for p in percents} | {replicas})
    assert sizes == wanted


def test_canary_pods_fill_member_slots_oldest_first_and_stable_pods_speak_for_none() -> None:
    current = PodStaging(False, B, A, members=frozenset())
    pods = [
        _pod("canary-new", B, created=20.0),
        _pod("canary-old", B, created=10.0),
        _pod("canary-going", B, created=1.0, terminating=True),
        _pod("stable", A, created=0.0),
    ]
    slots = population(current, "rev", 3, pods, _template_of, _applied)
    # Slots in the rollout's order: a cutoff over it makes members of the first ones.
    assert [s.uid for s in slots] == sorted(
        deployment_slots(3), key=lambda s: planner.bucket("rev", s)
    )
    by_pod = {s.pod: s for s in slots}
    assert set(by_pod) == {"ns/canary-old", "ns/canary-new", ""}
    first = slots[0]
    assert first.pod == "ns/canary-old"
    assert first.config_status == "APPLIED"
    assert first.uid.startswith("replica-")  # the slot answers, not the agent
    empty = by_pod[""]
    assert empty.config_status is None
    assert empty.connected_at == 0.0


def test_a_new_pod_whose_agent_never_connects_times_out_from_its_creation() -> None:
    current = PodStaging(True, B, A, members=frozenset({"node-1"}))
    pods = [_pod("ds-1", B, node="node-1", created=500.0), _pod("ds-2", A, node="node-2")]
    slots = population(current, "rev", 0, pods, _template_of, lambda pod: None)
    one, two = slots
    assert (one.uid, one.pod, one.config_status, one.connected_at) == (
        "node-1",
        "ns/ds-1",
        None,
        500.0,
    )
    assert (two.uid, two.config_status) == ("node-2", None)
    step = planner.Step(agents=1, gates=planner.Gates(apply_timeout_seconds=30))
    policy = planner.Policy(steps=(step, planner.Step(percent=100)))
    desired = planner.Revision("b", "rev")
    progress = planner.initial_progress(desired, "a", "old", planner.Controls())
    armed = planner.plan(policy, progress, desired, slots, 400.0, planner.Controls()).progress
    assert armed.phase is Phase.PROGRESSING
    # 30 s from the step's start (400) have passed, not 30 s from the pod's creation.
    still = planner.plan(policy, armed, desired, slots, 520.0, planner.Controls())
    assert still.progress.phase is Phase.PROGRESSING
    late = planner.plan(policy, armed, desired, slots, 531.0, planner.Controls())
    assert late.progress.phase is Phase.ROLLED_BACK
    assert late.failing[0].reason == "ApplyTimeout"


def test_daemon_set_slots_are_nodes_held_by_their_newest_live_pod() -> None:
    current = PodStaging(True, B, A)
    pods = [
        _pod("old", A, node="n1", created=1.0),
        _pod("new", B, node="n1", created=2.0),
        _pod("going", B, node="n2", created=3.0, terminating=True),
        _pod("pending", B),
    ]
    slots = population(current, "rev", 0, pods, _template_of, _applied)
    # n2's pod is going: its slot waits for the successor, spoken for by nobody.
    assert {s.uid: s.pod for s in slots} == {"n1": "ns/new", "n2": "", "pod/pending": "ns/pending"}
    assert slot_of(pods[3]) == "pod/pending"


def test_a_step_replaces_its_nodes_pods_and_a_rollback_every_desired_one() -> None:
    pods = [
        _pod("a1", A, node="n1"),
        _pod("a2", A, node="n2"),
        _pod("b3", B, node="n3"),
        _pod("a4", A, node="n4", terminating=True),
    ]
    step = PodStaging(True, B, A, members=frozenset({"n1", "n3", "n4"}))
    assert [p.name for p in to_replace(step, pods, _template_of)] == ["a1"]
    back = PodStaging(True, B, A, back=True, members=frozenset())
    assert [p.name for p in to_replace(back, pods, _template_of)] == ["b3"]
    deployment = PodStaging(False, B, A, members=frozenset({"replica-0"}))
    assert to_replace(deployment, pods, _template_of) == []


def test_agents_of_desired_pods_get_the_desired_config_and_no_one_after_a_rollback() -> None:
    current = PodStaging(False, B, A, members=frozenset({"replica-1"}))
    members = config_membership(current, "rev", LABEL)
    assert members.contains("x", {}, {LABEL: B})
    assert not members.contains("x", {}, {LABEL: A})
    assert not members.contains("x", {}, {})
    back = config_membership(PodStaging(False, B, A, back=True), "rev", LABEL)
    assert not back.contains("x", {}, {LABEL: B})


def test_a_new_pod_passes_only_once_it_reports_the_target_version() -> None:
    agent = AgentView("u", {"service.version": "0.149.0"})
    assert version_status(agent, "") == ("APPLIED", "")
    assert version_status(agent, "0.149.0") == ("APPLIED", "")
    status, why = version_status(agent, "0.149.1-next")
    assert status == "APPLYING"
    assert why == "reports version 0.149.0, not 0.149.1-next"


def test_a_daemon_set_slot_whose_pod_is_being_replaced_keeps_the_step_from_passing() -> None:
    """The member's old pod deleted, its successor not there yet: the slot stays, with
    nothing to report, so the step waits for it (it passed on the other member alone)."""
    current = PodStaging(True, B, A)
    done = _pod("new-on-n1", B, node="n1", created=10.0)
    going = _pod("old-on-n2", A, node="n2", terminating=True)
    gone = [_pod("old-on-n3", A, node="n3")]
    slots = population(current, "rev", 0, [done, going], _template_of, _applied, gone)
    assert [(s.uid, s.pod, s.config_status) for s in slots] == [
        ("n1", "ns/new-on-n1", "APPLIED"),
        ("n2", "", None),
        ("n3", "", None),
    ]
    policy = planner.Policy(steps=(planner.Step(percent=100),))
    desired = planner.Revision("b", "rev")
    progress = planner.initial_progress(desired, "a", "old", planner.Controls())
    decision = planner.plan(policy, progress, desired, slots, 100.0, planner.Controls())
    assert decision.progress.phase is Phase.PROGRESSING
    assert decision.progress.steps[0].applied == 1
    assert decision.progress.steps[0].offered == 3


def test_a_new_pod_s_health_counts_once_it_applied_the_revision() -> None:
    """A Collector starting in a new pod reports unhealthy before it runs: that is the
    apply timeout's to judge, not a failed step; once applied, unhealthy fails it."""
    current = PodStaging(True, B, A, members=frozenset({"n1"}))
    pod = _pod("new", B, node="n1", created=10.0)

    def sick(status: str) -> Callable[[PodView], RolloutAgent]:
        return lambda p: replace(_applied(p), config_status=status, healthy=False)

    (starting,) = population(current, "rev", 0, [pod], _template_of, sick("APPLYING"))
    assert starting.healthy is None
    (running,) = population(current, "rev", 0, [pod], _template_of, sick("APPLIED"))
    assert running.healthy is False
    policy = planner.Policy(steps=(planner.Step(percent=100),))
    desired = planner.Revision("b", "rev")
    progress = planner.initial_progress(desired, "a", "old", planner.Controls())
    waits = planner.plan(policy, progress, desired, [starting], 20.0, planner.Controls())
    assert waits.progress.phase is Phase.PROGRESSING
    fails = planner.plan(policy, progress, desired, [running], 20.0, planner.Controls())
    assert fails.progress.phase is Phase.ROLLED_BACK
