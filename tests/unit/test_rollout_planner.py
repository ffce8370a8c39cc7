"""The ConfigRollout planner (fleet/rollout.py): each phase transition by example, then
properties over random fleets, reports, clocks and controls: targets are not exceeded,
membership only grows, a rollback leaves nobody on the new revision, every phase change
is a move the transition table allows and leaves the new phase's invariants holding, and
a planner restarted from its status decides exactly as the one that kept running."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.api.models import ConfigRolloutStatus
from opamp_operator.fleet import rollout
from opamp_operator.fleet.rollout import (
    ALLOWED,
    MAX_BUCKET,
    NOBODY,
    ONLY_IN,
    STOPPED,
    TERMINAL,
    Controls,
    Decision,
    Gates,
    IllegalTransitionError,
    Membership,
    OnFailure,
    PauseReason,
    Phase,
    Policy,
    Progress,
    Revision,
    RolloutAgent,
    Step,
    StepCounts,
    bucket,
    effective_steps,
    initial_progress,
    membership,
    plan,
)
from opamp_operator.fleet.rollout_status import rollout_status

FULL = {"receivers": frozenset({"otlp"}), "exporters": frozenset({"debug"})}
NO_DEBUG = {"receivers": frozenset({"otlp"})}
STABLE = Revision("collectors-1", "aa" * 32)
NEW = Revision("collectors-2", "bb" * 32, FULL)
NEWER = Revision("collectors-3", "cc" * 32, FULL)
CANARY = {"deployment.environment": "canary"}
T0 = 1_700_000_000.0


def fleet(n: int, canaries: int = 0) -> list[RolloutAgent]:
    """`n` live agents on the stable revision; the first `canaries` carry the canary
    attribute."""
    return [
        RolloutAgent(
            uid=f"agent-{i:02d}",
            pod=f"obs/collector-{i:02d}",
            attributes=dict(CANARY) if i < canaries else {},
            healthy=True,
            config_status="APPLIED",
            config_hash=STABLE.hash,
            drifted=False,
            components=FULL,
        )
        for i in range(n)
    ]


def by_bucket(agents: Sequence[RolloutAgent], revision: Revision = NEW) -> list[str]:
    return sorted((a.uid for a in agents), key=lambda uid: bucket(revision.hash, uid))


def members(decision: Decision, agents: Sequence[RolloutAgent]) -> set[str]:
    return {a.uid for a in agents if decision.membership.contains_agent(a)}


def apply(agents: Sequence[RolloutAgent], decision: Decision, **member: Any) -> list[RolloutAgent]:
    """Agents as they report after taking what they were offered: members the desired
    revision (with `member` overrides), the others the stable one."""
    out = []
    for a in agents:
        if decision.membership.contains_agent(a):
            values: dict[str, Any] = {
                "config_status": "APPLIED",
                "config_hash": decision.progress.desired_hash,
                "drifted": False,
                "healthy": True,
            }
            out.append(replace(a, **(values | member)))
        else:
            out.append(replace(a, config_status="APPLIED", config_hash=STABLE.hash))
    return out


def reasons(decision: Decision) -> list[str]:
    return [e.reason for e in decision.events]


@dataclass
class Run:
    """A rollout driven tick by tick, as the shell drives it."""

    policy: Policy
    desired: Revision = NEW
    now: float = T0
    controls: Controls = field(default_factory=Controls)
    progress: Progress = field(init=False)

    def __post_init__(self) -> None:
        self.progress = initial_progress(self.desired, STABLE.name, STABLE.hash, self.controls)

    def tick(self, agents: Sequence[RolloutAgent], advance: float = 0.0) -> Decision:
        self.now += advance
        decision = plan(self.policy, self.progress, self.desired, agents, self.now, self.controls)
        self.progress = decision.progress
        return decision


# ---------------------------------------------------------------------------- examples


def test_bucket_is_the_first_8_bytes_of_sha256_big_endian() -> None:
    digest = hashlib.sha256(f"{NEW.hash}/agent-00".encode()).digest()
    assert bucket(NEW.hash, "agent-00") == int.from_bytes(digest[:8], "big")
    assert bucket(NEW.hash, "agent-00") != bucket(NEWER.hash, "agent-00")
    assert 0 <= bucket(NEW.hash, "x") <= MAX_BUCKET


def test_no_steps_means_one_step_of_100_percent() -> None:
    assert effective_steps(Policy()) == (Step(percent=100),)
    steps = (Step(agents=1), Step(percent=100))
    assert effective_steps(Policy(steps=steps)) == steps


def test_membership_nobody_and_all() -> None:
    agent = RolloutAgent("a", attributes=dict(CANARY))
    assert not Membership.nobody(NEW.hash).contains_agent(agent)
    assert Membership.all(NEW.hash).contains("a", {}, {})
    assert Membership(NEW.hash, cutoff=bucket(NEW.hash, "a")).contains("a", {}, {})
    assert not Membership(NEW.hash, cutoff=bucket(NEW.hash, "a") - 1).contains("a", {}, {})
    assert Membership(NEW.hash, selectors=((CANARY, {}),)).contains_agent(agent)
    # a selector with nothing in it matches nobody: a step of only a pause adds no agent
    assert not Membership(NEW.hash, selectors=(({}, {}),)).contains_agent(agent)


@pytest.mark.parametrize("stable_hash", ["", NEW.hash])
def test_first_config_or_unchanged_config_is_stable_at_once(stable_hash: str) -> None:
    progress = initial_progress(NEW, "old", stable_hash, Controls(abort="x"))
    assert progress.phase is Phase.SUCCEEDED
    assert (progress.stable_revision, progress.stable_hash) == (NEW.name, NEW.hash)
    assert membership(Policy(), progress) == Membership.all(NEW.hash)
    assert progress.controls == {"abort": "x"}


def test_annotations_present_at_first_sight_do_nothing() -> None:
    run = Run(Policy(steps=(Step(agents=1),)), controls=Controls(abort="old", retry="old"))
    assert run.progress.phase is Phase.PENDING
    assert run.progress.controls == {"abort": "old", "retry": "old"}
    assert membership(run.policy, run.progress) == Membership.nobody(NEW.hash)
    decision = run.tick(fleet(3))
    assert decision.progress.phase is Phase.PROGRESSING
    assert "Aborted" not in reasons(decision)


def test_happy_path_through_steps_pauses_and_promote() -> None:
    policy = Policy(
        steps=(
            Step(agents=1, pause_until_promoted=True),
            Step(attributes=CANARY, pause_seconds=300),
            Step(percent=50),
            Step(percent=100),
        )
    )
    agents = fleet(10, canaries=2)
    order = by_bucket(agents)
    run = Run(policy)

    d = run.tick(agents)
    assert reasons(d) == ["StepStarted"]
    assert d.events[0].message == "step 1/4: 1 agent → 1 agent"
    assert d.progress.phase is Phase.PROGRESSING
    assert d.progress.step_armed
    assert d.progress.started_at == d.progress.step_started_at == T0
    assert d.progress.cutoff == bucket(NEW.hash, order[0])
    assert members(d, agents) == {order[0]}
    assert d.preflight is not None
    assert not d.preflight.blocked
    assert d.preflight.checked == 1

    agents = apply(agents, d)
    d = run.tick(agents, 10)
    assert reasons(d) == ["StepPassed", "Paused"]
    assert d.progress.phase is Phase.PAUSED
    assert d.progress.pause_reason == PauseReason.STEP
    assert d.progress.pause_until is None
    assert d.progress.steps == (StepCounts(1, 1, 0, 0, 0, T0, T0 + 10),)

    d = run.tick(agents, 3600)
    assert d.progress.phase is Phase.PAUSED
    assert reasons(d) == []

    run.controls = Controls(promote="1")
    d = run.tick(agents, 1)
    assert reasons(d) == ["Promoted", "StepStarted"]
    assert d.progress.current_step == 1
    canaries = {"agent-00", "agent-01"}
    assert members(d, agents) == {order[0]} | canaries
    assert d.progress.controls == {"promote": "1"}

    agents = apply(agents, d)
    d = run.tick(agents, 1)
    assert reasons(d) == ["StepPassed", "Paused"]
    assert d.progress.pause_until == run.now + 300

    d = run.tick(agents, 299)
    assert d.progress.phase is Phase.PAUSED
    d = run.tick(agents, 1)
    assert reasons(d) == ["Resumed", "StepStarted"]
    assert d.events[1].message.startswith("step 3/4: 50% → 5 agents")
    assert len(members(d, agents)) == 5
    assert members(d, agents) >= {order[0]} | canaries

    agents = apply(agents, d)
    d = run.tick(agents, 1)
    assert reasons(d) == ["StepPassed", "StepStarted"]
    assert d.events[1].message == "step 4/4: 100% → every agent"
    assert d.progress.cutoff == MAX_BUCKET
    assert members(d, agents) == {a.uid for a in agents}

    agents = apply(agents, d)
    d = run.tick(agents, 1)
    assert reasons(d) == ["StepPassed", "Succeeded"]
    assert d.progress.phase is Phase.SUCCEEDED
    assert (d.progress.stable_revision, d.progress.stable_hash) == (NEW.name, NEW.hash)
    assert d.progress.finished_at == run.now
    assert d.membership == Membership.all(NEW.hash)
    assert [c.offered for c in d.progress.steps] == [1, len({order[0]} | canaries), 5, 10]
    assert all(c.finished_at is not None for c in d.progress.steps)

    d = run.tick(agents, 1000)
    assert d.progress == run.progress
    assert reasons(d) == []


def test_bake_holds_the_step_until_its_time_is_up() -> None:
    run = Run(Policy(steps=(Step(agents=1, gates=Gates(bake_seconds=60)), Step(percent=100))))
    agents = fleet(4)
    d = run.tick(agents)
    agents = apply(agents, d)
    d = run.tick(agents, 5)
    assert d.progress.bake_started_at == run.now
    assert "baking" in d.progress.message
    d = run.tick(agents, 59)
    assert d.progress.current_step == 0
    d = run.tick(agents, 1)
    assert reasons(d) == ["StepPassed", "StepStarted"]
    assert d.progress.current_step == 1


def test_a_failed_member_rolls_everyone_back() -> None:
    run = Run(Policy(steps=(Step(agents=2), Step(percent=100))))
    agents = fleet(6)
    d = run.tick(agents)
    first = by_bucket(agents)[0]
    agents = apply(agents, d)
    agents = [
        replace(a, config_status="FAILED", config_error="unknown exporter kafka")
        if a.uid == first
        else a
        for a in agents
    ]
    d = run.tick(agents, 1)
    assert reasons(d) == ["GateFailed", "RolledBack"]
    assert all(e.type == "Warning" for e in d.events)
    assert "unknown exporter kafka" in d.events[0].message
    assert d.progress.phase is Phase.ROLLED_BACK
    assert d.progress.finished_at == run.now
    assert d.progress.cutoff == NOBODY
    assert members(d, agents) == set()
    assert d.progress.steps[0].failed == 1
    assert d.progress.steps[0].applied == 1
    assert [f.uid for f in d.failing] == [first]  # the culprits, reported once
    # terminal: nothing moves any more
    d = run.tick(apply(agents, d), 1000)
    assert d.progress.phase is Phase.ROLLED_BACK
    assert reasons(d) == []


def test_failures_within_the_allowance_pass() -> None:
    gates = Gates(max_failed_percent=50)
    run = Run(Policy(steps=(Step(agents=2, gates=gates), Step(percent=100, gates=gates))))
    agents = fleet(4)
    d = run.tick(agents)
    first = by_bucket(agents)[0]
    agents = [replace(a, config_status="FAILED") if a.uid == first else a for a in apply(agents, d)]
    d = run.tick(agents, 1)
    assert reasons(d) == ["StepPassed", "StepStarted"]
    assert [f.uid for f in d.failing] == [first]
    assert d.failing[0].reason == "ConfigFailed"


@pytest.mark.parametrize("verified_only", [False, True])
def test_an_unverified_agent_reporting_failed_rolls_back_unless_gates_count_verified_only(
    verified_only: bool,
) -> None:
    """A spoofer in a fleet with agentAuth None can report FAILED for the desired hash;
    with verifiedOnly its report neither fails the step nor counts toward passing it."""
    gates = Gates(verified_only=verified_only)
    run = Run(Policy(steps=(Step(percent=100, gates=gates),)))
    agents = fleet(3)
    d = run.tick(agents)
    spoofer = by_bucket(agents)[0]
    agents = [
        replace(a, config_status="FAILED", verified=False) if a.uid == spoofer else a
        for a in apply(agents, d)
    ]
    d = run.tick(agents, 1)
    if verified_only:
        assert d.progress.phase is Phase.SUCCEEDED
        assert d.progress.steps[0].offered == 3
        assert d.progress.steps[0].failed == 0  # the spoofer's report is not counted
    else:
        assert reasons(d) == ["GateFailed", "RolledBack"]


def test_on_failure_pause_halts_with_members_kept() -> None:
    run = Run(Policy(steps=(Step(agents=2), Step(percent=100)), on_failure=OnFailure.PAUSE))
    agents = fleet(5)
    d = run.tick(agents)
    before = members(d, agents)
    agents = apply(agents, d, healthy=False, health_error="exporter queue full")
    d = run.tick(agents, 1)
    assert reasons(d) == ["GateFailed"]
    assert d.progress.phase is Phase.FAILED
    assert members(d, agents) == before
    assert {f.reason for f in d.failing} == {"Unhealthy"}
    assert d.failing[0].message == "unhealthy: exporter queue full"
    # members recovering does not resume it: only abort, retry or a new revision do
    d = run.tick(apply(agents, d), 1000)
    assert d.progress.phase is Phase.FAILED
    assert members(d, agents) == before
    run.controls = Controls(abort="now")
    d = run.tick(agents, 1)
    assert reasons(d) == ["Aborted"]
    assert d.progress.phase is Phase.ABORTED
    assert members(d, agents) == set()


def test_abort_sends_everyone_back_and_acts_once() -> None:
    run = Run(Policy(steps=(Step(percent=50), Step(percent=100))))
    agents = fleet(4)
    d = run.tick(agents)
    assert members(d, agents)
    run.controls = Controls(abort="t1")
    d = run.tick(agents, 1)
    assert reasons(d) == ["Aborted"]
    assert d.events[0].type == "Warning"
    assert d.progress.phase is Phase.ABORTED
    assert d.progress.finished_at == run.now
    assert d.membership == Membership.nobody(NEW.hash)
    assert d.progress.controls == {"abort": "t1"}
    d = run.tick(agents, 1)
    assert reasons(d) == []


def test_abort_is_recorded_but_ignored_once_succeeded() -> None:
    run = Run(Policy())
    agents = fleet(2)
    d = run.tick(agents)
    d = run.tick(apply(agents, d), 1)
    assert d.progress.phase is Phase.SUCCEEDED
    run.controls = Controls(abort="late", retry="late")
    d = run.tick(agents, 1)
    assert d.progress.phase is Phase.SUCCEEDED
    assert d.progress.controls == {"abort": "late", "retry": "late"}
    assert reasons(d) == []


def test_retry_restarts_at_step_zero_with_a_new_attempt() -> None:
    run = Run(Policy(steps=(Step(agents=1), Step(percent=100))))
    agents = fleet(3)
    d = run.tick(agents)
    d = run.tick(apply(agents, d, config_status="FAILED"), 1)
    assert d.progress.phase is Phase.ROLLED_BACK
    run.controls = Controls(retry="again")
    d = run.tick(agents, 1)
    assert reasons(d) == ["Retried", "StepStarted"]
    assert d.progress.phase is Phase.PROGRESSING
    assert d.progress.attempt == 2
    assert d.progress.current_step == 0
    assert d.progress.started_at == run.now
    assert len(d.progress.steps) == 1
    assert d.progress.steps[0].failed == 0
    assert len(members(d, agents)) == 1
    # the same token does not retry again, and a retry does nothing while progressing
    d = run.tick(agents, 1)
    assert d.progress.attempt == 2
    run.controls = Controls(retry="again-2")
    d = run.tick(agents, 1)
    assert d.progress.attempt == 2
    assert "Retried" not in reasons(d)


def test_abort_wins_over_a_retry_in_the_same_tick() -> None:
    run = Run(Policy(steps=(Step(agents=1), Step(percent=100)), on_failure=OnFailure.PAUSE))
    agents = fleet(3)
    d = run.tick(agents)
    d = run.tick(apply(agents, d, config_status="FAILED"), 1)
    assert d.progress.phase is Phase.FAILED
    run.controls = Controls(abort="x", retry="x")
    d = run.tick(agents, 1)
    assert d.progress.phase is Phase.ABORTED
    assert d.progress.controls == {"abort": "x", "retry": "x"}


def test_spec_paused_freezes_and_resume_restarts_the_clocks() -> None:
    policy = Policy(steps=(Step(agents=2, gates=Gates(apply_timeout_seconds=60)), Step()))
    run = Run(policy)
    agents = fleet(5)
    d = run.tick(agents)
    before = members(d, agents)
    run.policy = replace(policy, paused=True)
    d = run.tick(agents, 1)
    assert reasons(d) == ["Paused"]
    assert d.progress.phase is Phase.PAUSED
    assert d.progress.pause_reason == PauseReason.SPEC
    assert d.progress.paused_at == run.now
    assert members(d, agents) == before
    # members apply, time passes far beyond the apply timeout: nothing moves, nothing fails
    d = run.tick(agents, 3600)
    assert d.progress.phase is Phase.PAUSED
    assert d.failing == ()
    assert reasons(d) == []
    agents = apply(agents, d, config_status="APPLYING")
    run.policy = policy
    d = run.tick(agents, 1)
    assert reasons(d) == ["Resumed"]
    assert d.progress.phase is Phase.PROGRESSING
    assert d.progress.step_started_at == run.now
    assert d.progress.paused_at is None
    d = run.tick(agents, 60)
    assert d.progress.phase is Phase.PROGRESSING
    d = run.tick(agents, 1)
    assert d.progress.phase is Phase.ROLLED_BACK
    assert {f.reason for f in d.failing} == {"ApplyTimeout"}


def test_spec_paused_before_the_first_step_resumes_to_pending() -> None:
    run = Run(Policy(steps=(Step(agents=1),), paused=True))
    agents = fleet(3)
    d = run.tick(agents)
    assert d.progress.phase is Phase.PAUSED
    assert d.membership == Membership.nobody(NEW.hash)
    run.policy = replace(run.policy, paused=False)
    d = run.tick(agents, 1)
    assert reasons(d) == ["Resumed", "StepStarted"]
    assert d.progress.phase is Phase.PROGRESSING


def test_spec_paused_takes_precedence_over_a_step_pause() -> None:
    policy = Policy(steps=(Step(agents=1, pause_seconds=60), Step(percent=100)))
    run = Run(policy)
    agents = fleet(3)
    d = run.tick(agents)
    d = run.tick(apply(agents, d), 1)
    assert d.progress.pause_reason == PauseReason.STEP
    paused_at = d.progress.paused_at
    run.policy = replace(policy, paused=True)
    run.controls = Controls(promote="p")
    d = run.tick(agents, 120)
    assert d.progress.pause_reason == PauseReason.SPEC
    assert d.progress.paused_at == paused_at
    assert d.progress.current_step == 0
    assert d.progress.controls == {"promote": "p"}  # recorded, not acted on
    run.policy = policy
    d = run.tick(agents, 1)
    assert reasons(d) == ["Resumed", "Resumed", "StepStarted"]
    assert d.progress.current_step == 1


def test_promote_is_ignored_outside_a_step_pause() -> None:
    run = Run(Policy(steps=(Step(agents=1, pause_until_promoted=True), Step(percent=100))))
    agents = fleet(3)
    run.controls = Controls(promote="early")
    d = run.tick(agents)
    assert reasons(d) == ["StepStarted"]
    d = run.tick(apply(agents, d), 1)
    assert d.progress.phase is Phase.PAUSED
    d = run.tick(agents, 1)
    assert d.progress.phase is Phase.PAUSED
    run.controls = Controls(promote="now")
    d = run.tick(agents, 1)
    assert reasons(d) == ["Promoted", "StepStarted"]


def test_preflight_blocks_on_a_missing_component_until_the_agent_has_it() -> None:
    run = Run(Policy(steps=(Step(percent=100),)))
    agents = fleet(3)
    agents[1] = replace(agents[1], components=NO_DEBUG)
    d = run.tick(agents)
    assert d.progress.phase is Phase.PENDING
    assert not d.progress.step_armed
    assert d.membership == Membership.nobody(NEW.hash)
    assert d.preflight is not None
    assert d.preflight.blocked
    assert d.preflight.missing == {"exporters/debug": 1}
    assert d.preflight.checked == 3
    assert "exporters/debug" in d.progress.message
    assert reasons(d) == ["PreflightFailed"]
    d = run.tick(agents, 30)
    assert reasons(d) == []  # the same block is not reported every tick
    assert d.preflight is not None
    assert d.preflight.blocked
    agents[1] = replace(agents[1], components=FULL)
    d = run.tick(agents, 30)
    assert reasons(d) == ["StepStarted"]
    assert d.preflight is not None
    assert not d.preflight.blocked
    assert d.membership.contains_agent(agents[1])


def test_preflight_checks_only_joining_agents() -> None:
    run = Run(Policy(steps=(Step(agents=1), Step(percent=100))))
    agents = fleet(3)
    d = run.tick(agents)
    member = by_bucket(agents)[0]
    agents = [replace(a, components={}) if a.uid == member else a for a in apply(agents, d)]
    d = run.tick(agents, 1)
    assert reasons(d) == ["StepPassed", "StepStarted"]
    assert d.preflight is not None
    assert d.preflight.checked == 2


def test_preflight_off_or_a_config_without_components_never_blocks() -> None:
    agents = [replace(a, components=NO_DEBUG) for a in fleet(2)]
    off = Run(Policy(preflight=False))
    assert off.tick(agents).progress.step_armed
    bare = Run(Policy(), desired=replace(NEW, components={}))
    d = bare.tick(agents)
    assert d.progress.step_armed
    assert d.preflight is None


@pytest.mark.parametrize("block", [False, True])
def test_unreported_components_block_only_when_configured(block: bool) -> None:
    run = Run(Policy(block_on_unreported=block))
    agents = fleet(3)
    agents[0] = replace(agents[0], components=None)
    d = run.tick(agents)
    assert d.preflight is not None
    assert d.preflight.unreported == 1
    assert d.preflight.missing == {}
    assert d.preflight.blocked is block
    assert d.progress.step_armed is not block
    assert reasons(d) == (["PreflightFailed"] if block else ["StepStarted"])


def test_a_blocked_later_step_is_progressing_and_still_guarded() -> None:
    run = Run(Policy(steps=(Step(agents=1), Step(percent=100))))
    agents = fleet(3)
    first = by_bucket(agents)[0]
    agents = [a if a.uid == first else replace(a, components=NO_DEBUG) for a in agents]
    d = run.tick(agents)
    agents = apply(agents, d)
    d = run.tick(agents, 1)
    assert reasons(d) == ["StepPassed", "PreflightFailed"]
    assert d.progress.phase is Phase.PROGRESSING
    assert d.progress.current_step == 1
    assert d.preflight is not None
    assert d.preflight.missing == {"exporters/debug": 2}
    assert members(d, agents) == {first}
    agents = apply(agents, d, healthy=False)
    d = run.tick(agents, 1)
    assert reasons(d) == ["GateFailed", "RolledBack"]


def test_unmanaged_agents_are_only_counted() -> None:
    run = Run(Policy(steps=(Step(percent=50), Step(percent=100))))
    agents = fleet(4) + [
        replace(a, accepts_remote_config=False, uid=f"bare-{i}", components=None)
        for i, a in enumerate(fleet(2))
    ]
    d = run.tick(agents)
    assert d.unmanaged == 2
    assert d.progress.steps[0].offered == 2  # 50 % of the 4 managed agents
    assert d.preflight is not None
    assert d.preflight.unreported == 0
    agents = apply(agents, d)
    d = run.tick(agents, 1)
    d = run.tick(apply(agents, d), 1)
    assert d.progress.phase is Phase.SUCCEEDED
    assert d.unmanaged == 2


def test_an_empty_fleet_waits_instead_of_passing() -> None:
    run = Run(Policy(steps=(Step(agents=1), Step(percent=100))))
    d = run.tick([])
    assert d.progress.phase is Phase.PENDING
    assert reasons(d) == []
    assert d.progress.message == "step 1/2: waiting for managed agents"
    d = run.tick(fleet(2), 1)
    assert reasons(d) == ["StepStarted"]


def test_a_new_revision_supersedes_the_running_one() -> None:
    run = Run(Policy(steps=(Step(agents=2), Step(percent=100))))
    agents = fleet(6)
    d = run.tick(agents)
    d = run.tick(apply(agents, d), 1)
    assert d.progress.current_step == 1
    run.desired = NEWER
    d = run.tick(agents, 1)
    assert reasons(d) == ["Superseded", "StepStarted"]
    assert d.progress.desired_hash == NEWER.hash
    assert d.progress.stable_hash == STABLE.hash
    assert (d.progress.current_step, d.progress.attempt) == (0, 1)
    assert len(d.progress.steps) == 1
    assert d.membership.desired_hash == NEWER.hash
    assert members(d, agents) == set(by_bucket(agents, NEWER)[:2])


def test_a_new_revision_after_success_starts_without_superseded() -> None:
    run = Run(Policy())
    agents = fleet(2)
    d = run.tick(agents)
    d = run.tick(apply(agents, d), 1)
    assert d.progress.phase is Phase.SUCCEEDED
    run.desired = NEWER
    d = run.tick(agents, 1)
    assert reasons(d) == ["StepStarted"]
    assert d.progress.stable_hash == NEW.hash


def test_reverting_to_the_stable_revision_succeeds_at_once() -> None:
    run = Run(Policy(steps=(Step(agents=1), Step(percent=100))))
    agents = fleet(3)
    run.tick(agents)
    run.desired = STABLE
    d = run.tick(agents, 1)
    assert reasons(d) == ["Superseded", "Succeeded"]
    assert d.progress.phase is Phase.SUCCEEDED
    assert d.membership == Membership.all(STABLE.hash)


def test_joiners_mid_rollout_get_their_buckets_answer() -> None:
    run = Run(Policy(steps=(Step(percent=50), Step(percent=100))))
    agents = fleet(10)
    d = run.tick(agents)
    cutoff = d.progress.cutoff
    newcomers = [replace(a, uid=f"late-{i}") for i, a in enumerate(fleet(20))]
    for late in newcomers:
        assert d.membership.contains_agent(late) == (bucket(NEW.hash, late.uid) <= cutoff)
    assert membership(run.policy, d.progress) == d.membership
    d = run.tick(apply(agents, d) + newcomers, 1)
    assert d.progress.cutoff == cutoff  # a joiner does not move the cutoff
    joined = {a.uid for a in newcomers if bucket(NEW.hash, a.uid) <= cutoff}
    assert joined <= members(d, newcomers)


def test_leavers_are_not_failures() -> None:
    run = Run(Policy(steps=(Step(agents=2), Step(percent=100))))
    agents = fleet(6)
    d = run.tick(agents)
    second = by_bucket(agents)[1]
    agents = [a for a in apply(agents, d) if a.uid != second]
    d = run.tick(agents, 1000)
    assert reasons(d) == ["StepPassed", "StepStarted"]
    assert d.progress.steps[0].offered == 1
    assert d.progress.steps[0].failed == 0


def test_a_step_whose_members_all_left_waits() -> None:
    run = Run(Policy(steps=(Step(agents=1), Step(percent=100))))
    agents = fleet(4)
    d = run.tick(agents)
    first = by_bucket(agents)[0]
    d = run.tick([a for a in agents if a.uid != first], 1000)
    assert d.progress.current_step == 0
    assert d.progress.message == "step 1/2: waiting for a live member"


def test_apply_timeout_counts_from_the_step_or_the_connection() -> None:
    gates = Gates(apply_timeout_seconds=300, max_failed=0)
    run = Run(Policy(steps=(Step(agents=2, gates=gates), Step(percent=100))))
    agents = fleet(5)
    d = run.tick(agents)
    first = by_bucket(agents)[0]
    agents = apply(agents, d)
    agents = [
        replace(a, config_status="APPLYING", connected_at=run.now + 200) if a.uid == first else a
        for a in agents
    ]
    d = run.tick(agents, 300)
    assert d.progress.phase is Phase.PROGRESSING
    assert d.failing == ()
    d = run.tick(agents, 200)
    assert d.progress.phase is Phase.PROGRESSING  # it connected 200 s into the step
    d = run.tick(agents, 1)
    assert reasons(d) == ["GateFailed", "RolledBack"]
    assert "ApplyTimeout" in d.events[0].message


def test_drift_counts_as_not_applied_only_when_required() -> None:
    for required, phase in ((True, Phase.ROLLED_BACK), (False, Phase.SUCCEEDED)):
        gates = Gates(require_effective_config=required, apply_timeout_seconds=60)
        run = Run(Policy(steps=(Step(percent=100, gates=gates),)))
        agents = fleet(2)
        d = run.tick(agents)
        agents = apply(agents, d, drifted=True)
        d = run.tick(agents, 61)
        assert d.progress.phase is phase
        assert d.progress.steps[0].drifted == 2
        if required:
            assert "Drifted" in d.events[0].message


def test_failing_agents_are_bounded_and_worst_first() -> None:
    gates = Gates(max_failed=100, max_unhealthy=100, apply_timeout_seconds=10)
    run = Run(Policy(steps=(Step(percent=100, gates=gates),), on_failure=OnFailure.PAUSE))
    agents = fleet(14)
    d = run.tick(agents)
    agents = apply(agents, d)
    agents = (
        [replace(a, config_status="APPLYING") for a in agents[:4]]
        + [replace(a, healthy=False) for a in agents[4:7]]
        + [replace(a, config_status="FAILED", config_error="bad") for a in agents[7:12]]
        + agents[12:]
    )
    d = run.tick(agents, 11)
    assert len(d.failing) == 10
    assert [f.reason for f in d.failing] == ["ConfigFailed"] * 5 + ["ApplyTimeout"] * 4 + [
        "Unhealthy"
    ]
    assert [f.pod for f in d.failing[:5]] == sorted(a.pod for a in agents[7:12])
    assert d.failing[0].message == "bad"


def test_a_canary_going_bad_during_its_pause_rolls_back() -> None:
    run = Run(Policy(steps=(Step(agents=1, pause_until_promoted=True), Step(percent=100))))
    agents = fleet(3)
    d = run.tick(agents)
    agents = apply(agents, d)
    d = run.tick(agents, 1)
    assert d.progress.phase is Phase.PAUSED
    d = run.tick(apply(agents, d, healthy=False), 600)
    assert reasons(d) == ["GateFailed", "RolledBack"]
    assert d.progress.current_step == 0


def test_a_fractional_pause_ends_on_the_next_whole_second() -> None:
    run = Run(Policy(steps=(Step(agents=1, pause_seconds=29.5), Step(percent=100))))
    agents = fleet(3)
    d = run.tick(agents)
    d = run.tick(apply(agents, d), 1)
    assert d.progress.pause_until == run.now + 30
    d = run.tick(agents, 29.9)
    assert d.progress.phase is Phase.PAUSED
    d = run.tick(agents, 0.1)
    assert reasons(d) == ["Resumed", "StepStarted"]


def test_steps_shortened_mid_rollout_end_it_at_the_last_one() -> None:
    long = Policy(steps=(Step(agents=1), Step(agents=2), Step(percent=50), Step(percent=100)))
    run = Run(long)
    agents = fleet(8)
    d = run.tick(agents)
    d = run.tick(apply(agents, d), 1)
    d = run.tick(apply(agents, d), 1)
    assert d.progress.current_step == 2
    run.policy = Policy(steps=(Step(agents=1), Step(agents=2)))
    d = run.tick(apply(agents, d), 1)
    assert reasons(d) == ["StepPassed", "Succeeded"]
    assert d.membership == Membership.all(NEW.hash)


def test_max_failed_percent_rounds_down() -> None:
    gates = Gates(max_failed_percent=33.3)
    run = Run(Policy(steps=(Step(percent=100, gates=gates),), on_failure=OnFailure.PAUSE))
    agents = fleet(6)
    d = run.tick(agents)
    agents = apply(agents, d)

    def failing(n: int) -> Decision:
        reports = [replace(a, config_status="FAILED") if i < n else a for i, a in enumerate(agents)]
        return plan(run.policy, run.progress, NEW, reports, run.now + 1, Controls())

    assert failing(1).progress.phase is Phase.SUCCEEDED  # floor(33.3 % of 6) = 1 allowed
    assert failing(2).progress.phase is Phase.FAILED
    assert "2 failed > 1 allowed" in failing(2).progress.message


def test_now_is_truncated_to_whole_seconds() -> None:
    run = Run(Policy(steps=(Step(agents=1),)), now=T0 + 0.75)
    d = run.tick(fleet(2))
    assert d.progress.started_at == T0
    assert Progress.from_status(d.progress.to_status()) == d.progress


def test_to_status_shape() -> None:
    progress = Progress(
        phase=Phase.PAUSED,
        pause_reason=PauseReason.STEP,
        desired_revision="r2",
        desired_hash=NEW.hash,
        cutoff=255,
        step_armed=True,
        started_at=0.0,
        pause_until=None,
        steps=(StepCounts(offered=3, started_at=86400.0),),
        controls={"promote": "1"},
    )
    status = progress.to_status()
    assert status["cutoff"] == "00000000000000ff"
    assert status["startedAt"] == "1970-01-01T00:00:00Z"
    assert status["pauseReason"] == "Step"
    assert status["phase"] == "Paused"
    assert status["pauseUntil"] is None  # left out: a merge patch removes it
    assert status["steps"] == [
        {
            "offered": 3,
            "applied": 0,
            "failed": 0,
            "unhealthy": 0,
            "drifted": 0,
            "startedAt": "1970-01-02T00:00:00Z",
        }
    ]
    assert status["controls"] == {"promote": "1"}
    assert Progress().to_status()["cutoff"] is None  # nobody
    assert Progress().to_status().keys() == status.keys()  # always the same keys
    assert Progress(cutoff=MAX_BUCKET).to_status()["cutoff"] == "f" * 16


def test_from_status_tolerates_empty_extra_and_unreadable_keys() -> None:
    assert Progress.from_status({}) == Progress()
    status = Progress(phase=Phase.FAILED, attempt=3).to_status() | {
        "observedGeneration": 4,
        "conditions": [],
        "failingAgents": [],
        "unmanaged": 2,
        "preflight": {"blocked": False},
    }
    assert Progress.from_status(status) == Progress(phase=Phase.FAILED, attempt=3)
    odd = {"phase": "Exploded", "cutoff": "zz", "startedAt": "yesterday", "steps": "x"}
    assert Progress.from_status(odd) == Progress()


def test_a_step_of_only_a_pause_adds_nobody() -> None:
    policy = Policy(steps=(Step(agents=1), Step(pause_until_promoted=True), Step(percent=100)))
    run = Run(policy)
    agents = fleet(4)
    d = run.tick(agents)
    d = run.tick(apply(agents, d), 1)
    assert reasons(d) == ["StepPassed", "StepStarted", "StepPassed", "Paused"]
    assert len(members(d, agents)) == 1


# -------------------------------------------------------------------------- properties

POOL = 8
TROUBLES = ("fail", "slow", "silent", "drift", "sick")
COMPONENTS: tuple[Mapping[str, frozenset[str]] | None, ...] = (FULL, NO_DEBUG, None)
ACTIONS = ("promote", "abort", "retry", "pause", "revise")


@dataclass(frozen=True)
class Tick:
    advance: float
    gone: frozenset[int] = frozenset()  # agents of the pool not connected this tick
    troubles: Mapping[int, str] = field(default_factory=dict)  # the others apply fine
    action: str = ""  # a new control token, spec.paused toggled, or a new revision


@dataclass(frozen=True)
class Scenario:
    policy: Policy
    canary: tuple[bool, ...]
    managed: tuple[bool, ...]
    components: tuple[int, ...]
    ticks: tuple[Tick, ...]


gates_st = st.builds(
    Gates,
    max_failed=st.sampled_from([0, 0, 1]),
    max_failed_percent=st.sampled_from([None, None, 10.0, 50.0]),
    max_unhealthy=st.integers(0, 1),
    require_effective_config=st.booleans(),
    bake_seconds=st.sampled_from([0.0, 30.0, 90.5]),
    apply_timeout_seconds=st.sampled_from([60.0, 300.0]),
)
pauses_st = st.tuples(st.none() | st.sampled_from([0.0, 45.5, 120.0]), st.booleans())


@st.composite
def steps_st(draw: st.DrawFn, selectors: bool = True) -> tuple[Step, ...]:
    """Count and percent steps mostly growing, as people write them, with an occasional
    one that asks for fewer (the cutoff must not drop) and selector steps in between."""
    sized = draw(
        st.lists(
            st.one_of(
                st.sampled_from([0, 1, 1, 2, 3, 4, 5, POOL + 1]).map(lambda n: Step(agents=n)),
                st.sampled_from([1.0, 12.5, 25.0, 33.3, 50.0, 62.5, 75.0, 100.0]).map(
                    lambda pct: Step(percent=pct)
                ),
            ),
            max_size=5,
        )
    )
    if draw(st.integers(0, 4)):
        sized.sort(key=lambda s: 100 * s.agents / POOL if s.agents is not None else s.percent or 0)
    steps = list(sized)
    if selectors:
        for _ in range(draw(st.integers(0, 2))):
            at = draw(st.integers(0, len(steps)))
            steps.insert(at, Step(attributes=dict(CANARY)))
    out = []
    for step in steps:
        seconds, until_promoted = draw(pauses_st)
        out.append(
            replace(
                step,
                pause_seconds=seconds,
                pause_until_promoted=until_promoted,
                gates=draw(gates_st),
            )
        )
    return tuple(out)


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    selectors: bool = True,
    churn: bool = True,
    revisions: bool = True,
    max_ticks: int = 30,
) -> Scenario:
    """Random rollouts; how often agents misbehave and users intervene is drawn per
    scenario, so that calm scenarios reach the late steps and success."""
    policy = Policy(
        steps=draw(steps_st(selectors)),
        on_failure=draw(st.sampled_from(OnFailure)),
        preflight=draw(st.booleans()),
        block_on_unreported=draw(st.booleans()),
    )
    troubled = draw(st.sampled_from([0, 1, 3]))  # agents misbehaving per tick, at most
    meddling = draw(st.sampled_from([0, 20, 3]))  # odds against a user action, 0 never
    actions = [a for a in ACTIONS if revisions or a != "revise"]
    tick = st.builds(
        Tick,
        advance=st.sampled_from([0.0, 1.0, 29.5, 60.0, 61.0, 120.7, 300.0, 301.0, 3600.0]),
        gone=st.frozensets(st.integers(0, POOL - 1), max_size=3) if churn else st.just(frozenset()),
        troubles=st.dictionaries(
            st.integers(0, POOL - 1), st.sampled_from(TROUBLES), max_size=troubled
        ),
        action=st.integers(0, meddling * len(actions)).map(
            lambda n: actions[n] if meddling and n < len(actions) else ""
        ),
    )
    lacking = draw(st.sampled_from([0, 1, 3]))  # agents lacking a component, at most
    odd = draw(st.dictionaries(st.integers(0, POOL - 1), st.integers(1, 2), max_size=lacking))
    unmanaged = draw(st.frozensets(st.integers(0, POOL - 1), max_size=2 if churn else 0))
    return Scenario(
        policy=policy,
        canary=draw(st.tuples(*[st.booleans()] * POOL)),
        managed=tuple(i not in unmanaged for i in range(POOL)),
        components=tuple(odd.get(i, 0) for i in range(POOL)),
        ticks=tuple(draw(st.lists(tick, min_size=max_ticks // 3, max_size=max_ticks))),
    )


def pool(scenario: Scenario) -> list[RolloutAgent]:
    return [
        RolloutAgent(
            uid=f"agent-{i:02d}",
            pod=f"obs/collector-{i:02d}",
            attributes=dict(CANARY) if scenario.canary[i] else {"deployment.environment": "prod"},
            accepts_remote_config=scenario.managed[i],
            components=COMPONENTS[scenario.components[i]],
        )
        for i in range(POOL)
    ]


def report(agent: RolloutAgent, behaviour: str, offered: str) -> RolloutAgent:
    """What an agent says after being offered `offered`."""
    if behaviour == "silent":
        return replace(agent, config_status=None, config_hash="", healthy=None, drifted=None)
    ours = offered != STABLE.hash
    status = {"fail": "FAILED", "slow": "APPLYING"}.get(behaviour, "APPLIED") if ours else "APPLIED"
    return replace(
        agent,
        config_status=status,
        config_hash=offered,
        config_error="boom" if status == "FAILED" else "",
        healthy=behaviour != "sick",
        drifted=behaviour == "drift",
    )


@dataclass(frozen=True)
class Call:
    """One plan call's inputs."""

    policy: Policy
    progress: Progress
    desired: Revision
    agents: tuple[RolloutAgent, ...]
    now: float
    controls: Controls

    def __call__(self, progress: Progress | None = None) -> Decision:
        return plan(
            self.policy,
            self.progress if progress is None else progress,
            self.desired,
            self.agents,
            self.now,
            self.controls,
        )


def calls(
    scenario: Scenario, restarts: frozenset[int] = frozenset()
) -> list[tuple[Call, Decision]]:
    """Runs the scenario; after each tick in `restarts` the progress is replaced by what
    its status says, as a restarted operator would read it."""
    base = pool(scenario)
    progress = initial_progress(NEW, STABLE.name, STABLE.hash, Controls())
    current = membership(scenario.policy, progress)
    connected = [0.0] * POOL
    present: frozenset[int] = frozenset()
    tokens = {"promote": "", "abort": "", "retry": ""}
    paused = False
    revision = NEW
    now = T0
    out = []
    for index, tick in enumerate(scenario.ticks):
        now += tick.advance
        if tick.action in tokens:
            tokens[tick.action] = f"{tick.action}-{index}"
        paused ^= tick.action == "pause"
        if tick.action == "revise":
            revision = NEWER if revision is NEW else NEW
        agents = []
        here = frozenset(range(POOL)) - tick.gone
        for i in sorted(here):
            if i not in present:
                connected[i] = now
            agent = replace(base[i], connected_at=connected[i])
            offered = current.desired_hash if current.contains_agent(agent) else STABLE.hash
            agents.append(report(agent, tick.troubles.get(i, "good"), offered))
        present = here
        call = Call(
            replace(scenario.policy, paused=paused),
            progress,
            revision,
            tuple(agents),
            now,
            Controls(**tokens),
        )
        decision = call()
        out.append((call, decision))
        progress = decision.progress
        if index in restarts:
            progress = Progress.from_status(json.loads(json.dumps(progress.to_status())))
        current = decision.membership
    return out


def drive(scenario: Scenario, restarts: frozenset[int] = frozenset()) -> list[Decision]:
    return [decision for _, decision in calls(scenario, restarts)]


def target(step: Step, population: int) -> int:
    if step.agents is not None:
        return min(step.agents, population)
    assert step.percent is not None
    return min(population, -(-round(step.percent * 10) * population // 1000))


@settings(max_examples=100, deadline=None)
@given(scenarios(selectors=False, churn=False, revisions=False))
def test_count_and_percent_steps_never_exceed_their_target(scenario: Scenario) -> None:
    """With a fixed population and no selector steps, the members are exactly the
    largest target of the steps armed so far: never more, and the cutoff never drops."""
    agents = pool(scenario)
    for d in drive(scenario):
        p = d.progress
        count = len(members(d, agents))
        if p.phase is Phase.SUCCEEDED:
            assert count == POOL
        elif p.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
            assert count == 0
        else:
            last = p.current_step if p.step_armed else p.current_step - 1
            steps = effective_steps(scenario.policy)[: last + 1]
            assert count == max((target(s, POOL) for s in steps), default=0)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_membership_only_grows_within_a_rollout(scenario: Scenario) -> None:
    agents = pool(scenario)
    decisions = drive(scenario)
    for before, after in pairwise(decisions):
        same = (before.progress.desired_hash, before.progress.attempt) == (
            after.progress.desired_hash,
            after.progress.attempt,
        )
        if same and after.progress.phase not in (Phase.ROLLED_BACK, Phase.ABORTED):
            assert members(before, agents) <= members(after, agents)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_after_rollback_or_abort_every_agent_is_on_stable(scenario: Scenario) -> None:
    agents = pool(scenario)
    joiners = [RolloutAgent(f"joiner-{i}", attributes=dict(CANARY)) for i in range(20)]
    for d in drive(scenario):
        if d.progress.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
            assert members(d, agents + joiners) == set()
            assert d.membership == membership(scenario.policy, d.progress)
        if "RolledBack" in reasons(d):
            assert d.progress.phase is Phase.ROLLED_BACK


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios(), restarts=st.frozensets(st.integers(0, 29)))
def test_a_restarted_planner_decides_exactly_the_same(
    scenario: Scenario, restarts: frozenset[int]
) -> None:
    """Progress read back from status after any tick: same decisions, events included."""
    assert drive(scenario, restarts) == drive(scenario)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_a_replayed_tick_changes_nothing(scenario: Scenario) -> None:
    """The shell may run the planner again on the same world (a status write that
    conflicted): the second run must not advance, emit or act on a control again."""
    for call, decision in calls(scenario):
        again = call(decision.progress)
        assert again.progress == decision.progress
        assert again.membership == decision.membership
        assert again.events == ()


times = st.none() | st.integers(0, 4_102_444_800).map(float)
step_counts = st.builds(
    StepCounts,
    offered=st.integers(0, 10_000),
    applied=st.integers(0, 10_000),
    failed=st.integers(0, 10_000),
    unhealthy=st.integers(0, 10_000),
    drifted=st.integers(0, 10_000),
    started_at=times,
    finished_at=times,
)
progresses = st.builds(
    Progress,
    phase=st.sampled_from(Phase),
    pause_reason=st.sampled_from([None, *PauseReason]),
    message=st.text(),
    desired_revision=st.text(),
    desired_hash=st.text(),
    stable_revision=st.text(),
    stable_hash=st.text(),
    current_step=st.integers(0, 50),
    cutoff=st.just(NOBODY) | st.integers(0, MAX_BUCKET),
    step_armed=st.booleans(),
    attempt=st.integers(1, 100),
    started_at=times,
    step_started_at=times,
    bake_started_at=times,
    paused_at=times,
    pause_until=times,
    finished_at=times,
    steps=st.lists(step_counts, max_size=5).map(tuple),
    controls=st.dictionaries(st.sampled_from(["promote", "abort", "retry"]), st.text(min_size=1)),
)


@settings(max_examples=200)
@given(progresses)
def test_status_round_trip(progress: Progress) -> None:
    status = progress.to_status()
    assert Progress.from_status(json.loads(json.dumps(status))) == progress
    assert Progress.from_status({k: v for k, v in status.items() if v is not None}) == progress


def test_a_count_step_with_fewer_agents_connected_does_not_take_everyone() -> None:
    # Right after a restart only one agent may be back: `agents: 2` covers that agent's
    # bucket, not everyone who connects later (only a step of 100 % does that).
    run = Run(Policy(steps=(Step(agents=2), Step(percent=100))))
    agents = fleet(5)
    first = [a for a in agents if a.uid == by_bucket(agents)[0]]
    d = run.tick(first)
    assert not d.membership.everyone
    assert members(d, agents) == {first[0].uid}


# ------------------------------------------------------------- the transition table


@contextmanager
def moves() -> Iterator[list[tuple[Phase, Phase]]]:
    """Every (from, to) phase move `_to` makes while the block runs."""
    made: list[tuple[Phase, Phase]] = []
    original = rollout._to

    def recording(progress: Progress, phase: Phase, **changes: Any) -> Progress:
        made.append((progress.phase, phase))
        return original(progress, phase, **changes)

    rollout._to = recording
    try:
        yield made
    finally:
        rollout._to = original


def assert_moves_connect(before: Phase, after: Phase, made: list[tuple[Phase, Phase]]) -> None:
    """The moves of one plan call chain from `before` to `after`, each allowed: no phase
    changes but through `_to`."""
    at = before
    for source, target in made:
        assert source is at, (before, made)
        assert target in ALLOWED[source], (source, target)
        at = target
    assert at is after, (before, made, after)


def assert_phase_invariants(p: Progress) -> None:
    defaults = Progress()
    for name, phases in ONLY_IN.items():
        if p.phase not in phases:
            assert getattr(p, name) == getattr(defaults, name), (p.phase, name)
    if p.phase is Phase.PAUSED:
        assert p.pause_reason is not None
        assert p.paused_at is not None
    if p.phase is Phase.SUCCEEDED:
        assert (p.stable_revision, p.stable_hash) == (p.desired_revision, p.desired_hash)
    if p.phase in STOPPED:
        assert p.finished_at is not None
        assert p.stable_hash != p.desired_hash


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios(), restarts=st.frozensets(st.integers(0, 29)))
def test_every_plan_makes_only_allowed_moves_and_keeps_the_invariants(
    scenario: Scenario, restarts: frozenset[int]
) -> None:
    for call, decision in calls(scenario, restarts):
        with moves() as made:
            assert call() == decision
        before, after = call.progress, decision.progress
        assert_moves_connect(before.phase, after.phase, made)
        assert_phase_invariants(after)
        if after.phase is not before.phase:
            assert (after.phase in TERMINAL) == (after.finished_at is not None)


@st.composite
def any_progresses(draw: st.DrawFn) -> Progress:
    """A status as anyone could have written it, phase and fields inconsistent included,
    about the revisions the planner is given half the time."""
    p = draw(progresses)
    if draw(st.booleans()):
        p = replace(p, desired_revision=NEW.name, desired_hash=NEW.hash)
        p = replace(p, stable_hash=draw(st.sampled_from([STABLE.hash, NEW.hash, ""])))
    return p


@settings(max_examples=300, deadline=None)
@given(data=st.data(), paused=st.booleans(), tokens=st.tuples(*[st.sampled_from(["", "t"])] * 3))
def test_no_status_makes_the_planner_move_illegally(
    data: st.DataObject, paused: bool, tokens: tuple[str, str, str]
) -> None:
    """Whatever a status says, the planner moves only as the table allows (it never
    raises on a hand-edited or corrupt status) and the phase it moves to is sound."""
    progress = data.draw(any_progresses())
    policy = data.draw(st.builds(Policy, steps=steps_st(True), paused=st.just(paused)))
    agents = apply(fleet(6, canaries=2), plan(policy, progress, NEW, [], T0, Controls()))
    with moves() as made:
        decision = plan(policy, progress, NEW, agents, T0 + 30, Controls(*tokens))
    assert_moves_connect(progress.phase, decision.progress.phase, made)
    if made:
        last = decision.progress
        for name, phases in ONLY_IN.items():
            if last.phase not in phases:
                assert getattr(last, name) == getattr(Progress(), name), name


def test_the_table_refuses_illegal_moves_and_resets_what_a_phase_does_not_carry() -> None:
    paused = Progress(
        phase=Phase.PAUSED, pause_reason=PauseReason.STEP, paused_at=T0, pause_until=T0 + 60
    )
    moved = rollout._to(paused, Phase.PROGRESSING, message="on")
    assert (moved.pause_reason, moved.paused_at, moved.pause_until) == (None, None, None)
    back = rollout._to(replace(moved, cutoff=5, step_armed=True), Phase.ROLLED_BACK)
    assert (back.cutoff, back.step_armed) == (NOBODY, False)
    with pytest.raises(IllegalTransitionError, match="Succeeded -> Failed"):
        rollout._to(Progress(phase=Phase.SUCCEEDED), Phase.FAILED)
    with pytest.raises(IllegalTransitionError, match="RolledBack -> Paused"):
        rollout._to(Progress(phase=Phase.ROLLED_BACK), Phase.PAUSED)
    with pytest.raises(IllegalTransitionError, match="does not carry paused_at"):
        rollout._to(paused, Phase.PROGRESSING, paused_at=T0)
    # Every phase has a row; a rollout that stopped short never pauses or fails again.
    assert set(ALLOWED) == set(Phase)
    for stopped in STOPPED:
        assert not ALLOWED[stopped] & {Phase.PAUSED, Phase.FAILED, Phase.ROLLED_BACK}


@settings(max_examples=50, deadline=None)
@given(scenarios())
def test_every_status_written_is_exactly_the_models(scenario: Scenario) -> None:
    """What the shell writes after any plan validates as ConfigRolloutStatus with
    nothing ignored or coerced: the planner's keys and the CRD's are the same."""
    old: dict[str, Any] = {}
    for d in drive(scenario):
        status = json.loads(json.dumps(rollout_status(d, 1, old, "2024-05-01T00:00:00Z")))
        model = ConfigRolloutStatus.model_validate(status)
        assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == status
        old = status
