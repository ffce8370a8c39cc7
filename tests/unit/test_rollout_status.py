"""What the ConfigRollout shell decides, as pure functions (fleet/rollout_status.py):
whether a rollout is planned, its kstatus conditions, what its fleet is told, and its
status, whose shape is exactly api.models.ConfigRolloutStatus's."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from opamp_operator.api.models import ConfigRolloutStatus
from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.conditions import Why
from opamp_operator.fleet.rollout_status import (
    Blocker,
    Facts,
    blocker,
    fleet_problem,
    holds,
    known_stable,
    problem_status,
    rollout_conditions,
    rollout_status,
    status_patch,
)

NOW = "2024-05-01T00:00:00Z"
LATER = "2024-05-01T00:01:00Z"
PLANNABLE = Facts(
    "obs/canary",
    "obs/gateways",
    reconciled=True,
    exists=True,
    governing="obs/canary",
    revision=True,
)


def exactly_the_model(status: dict[str, Any]) -> None:
    """`status` reads as ConfigRolloutStatus with nothing ignored, coerced or added."""
    model = ConfigRolloutStatus.model_validate(status)
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == status


def model_keys() -> set[str]:
    return {field.alias or name for name, field in ConfigRolloutStatus.model_fields.items()}


# ---------------------------------------------------------------------------- blocker


@pytest.mark.parametrize(
    ("facts", "reason", "report"),
    [
        (Facts("obs/canary", spec_error="steps: too long"), "InvalidSpec", True),
        (dataclasses.replace(PLANNABLE, reconciled=False), "FleetNotReconciled", False),
        (
            dataclasses.replace(PLANNABLE, reconciled=False, exists=False),
            "FleetNotFound",
            True,
        ),
        (dataclasses.replace(PLANNABLE, governing="obs/older"), "Conflict", True),
        (dataclasses.replace(PLANNABLE, governing=None), "Conflict", True),
        (dataclasses.replace(PLANNABLE, revision=False), "FleetNotReady", True),
    ],
)
def test_a_rollout_that_cannot_act_says_why(facts: Facts, reason: str, report: bool) -> None:
    found = blocker(facts)
    assert found is not None
    assert (found.why.reason, found.report) == (reason, report)


def test_blockers_come_in_order_and_name_what_they_are_about() -> None:
    assert blocker(PLANNABLE) is None
    everything_wrong = Facts("obs/canary", "obs/gateways", spec_error="bad", governing="x")
    assert blocker(everything_wrong) == Blocker(Why("InvalidSpec", "invalid spec: bad"))
    conflict = blocker(dataclasses.replace(PLANNABLE, governing="obs/older"))
    assert conflict is not None
    assert conflict.why.message == (
        "CollectorFleet obs/gateways is governed by ConfigRollout obs/older"
    )
    not_ready = blocker(
        dataclasses.replace(PLANNABLE, revision=False, fleet_problem="config: no receivers")
    )
    assert not_ready is not None
    assert not_ready.why.message.endswith("no valid config revision: config: no receivers")


def test_a_persisted_rollout_holds_only_until_planned_or_the_grace_is_over() -> None:
    assert holds(planned=False, uptime=3.0, grace=15.0)
    assert not holds(planned=True, uptime=3.0, grace=15.0)
    assert not holds(planned=False, uptime=15.0, grace=15.0)


def test_the_stable_revision_before_any_rollout() -> None:
    said = {"stableRevision": "gw-1", "stableHash": "11"}
    assert known_stable(said, ("gw-0", "00")) == ("gw-1", "11")
    assert known_stable({}, ("gw-0", "00")) == ("gw-0", "00")
    assert known_stable({}, None) == ("", "")


# ----------------------------------------------------------------------- conditions


def _decision(progress: planner.Progress, blocked: bool = False) -> planner.Decision:
    return planner.Decision(
        progress=progress,
        membership=planner.Membership(desired_hash=progress.desired_hash),
        failing=(),
        preflight=planner.Preflight(blocked=blocked, missing={}, unreported=0, checked=0)
        if blocked
        else None,
        managed=0,
        unmanaged=0,
        events=(),
    )


def _by_type(conditions: list[dict[str, object]]) -> dict[object, tuple[object, object]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_conditions_follow_kstatus() -> None:
    def of(phase: planner.Phase, blocked: bool = False) -> dict[object, tuple[object, object]]:
        progress = planner.Progress(phase=phase, desired_hash="ab", message="m")
        return _by_type(rollout_conditions(_decision(progress, blocked), 3))

    assert of(planner.Phase.SUCCEEDED)["Ready"] == ("True", "Succeeded")
    for moving in (planner.Phase.PENDING, planner.Phase.PROGRESSING, planner.Phase.PAUSED):
        got = of(moving)
        assert got["Reconciling"][0] == "True"
        assert got["Stalled"][0] == "False"
        assert got["Ready"][0] == "False"
    for stopped in (planner.Phase.FAILED, planner.Phase.ROLLED_BACK, planner.Phase.ABORTED):
        got = of(stopped)
        assert got["Stalled"] == ("True", stopped.value)
        assert got["Reconciling"][0] == "False"
    blocked = of(planner.Phase.PROGRESSING, blocked=True)
    assert blocked["Stalled"] == ("True", "PreflightFailed")
    assert blocked["Reconciling"][0] == "False"
    missing = _by_type(rollout_conditions(None, 1, Why("FleetNotFound", "no fleet")))
    assert missing["Stalled"] == ("True", "FleetNotFound")
    # Never more than one of Ready/Reconciling/Stalled True (kstatus reads them in order).
    for phase in planner.Phase:
        assert [s for s, _ in of(phase).values()].count("True") == 1


def test_the_fleet_is_told_only_when_the_rollout_stopped_short() -> None:
    base = planner.Progress(
        desired_revision="gw-2",
        desired_hash="2" * 64,
        stable_revision="gw-1",
        stable_hash="1" * 64,
        message="2 agents failed",
    )
    assert fleet_problem(base) is None
    rolled_back = fleet_problem(dataclasses.replace(base, phase=planner.Phase.ROLLED_BACK))
    assert rolled_back is not None
    assert rolled_back.reason == "RolloutRolledBack"
    assert "gw-2 (222222222222)" in rolled_back.message
    assert "stable revision gw-1" in rolled_back.message
    assert "2 agents failed" in rolled_back.message
    for phase in planner.STOPPED:
        said = fleet_problem(dataclasses.replace(base, phase=phase))
        assert said is not None
        assert said.reason == f"Rollout{phase.value}"


# --------------------------------------------------------------------------- status


def _failing(n: int) -> tuple[planner.FailingAgent, ...]:
    return tuple(
        planner.FailingAgent(f"uid-{i}", f"obs/c-{i}", "ConfigFailed", "boom " * 200)
        for i in range(n)
    )


def test_the_status_is_exactly_the_models_and_the_planner_owns_its_progress_keys() -> None:
    progress = planner.Progress(
        phase=planner.Phase.ROLLED_BACK,
        desired_revision="gw-2",
        desired_hash="2" * 64,
        stable_revision="gw-1",
        stable_hash="1" * 64,
        started_at=1.7e9,
        finished_at=1.7e9 + 60,
        steps=(planner.StepCounts(offered=2, failed=2, started_at=1.7e9),),
        controls={"abort": "t"},
    )
    missing = {f"exporters/x{i}": i for i in range(30)}
    decision = dataclasses.replace(
        _decision(progress),
        failing=_failing(planner.FAILING_LIMIT),
        preflight=planner.Preflight(True, missing, unreported=1, checked=4),
        managed=4,
        unmanaged=1,
    )
    status = rollout_status(decision, 7, {}, NOW)
    exactly_the_model(status)
    assert set(progress.to_status()) <= model_keys()
    assert set(status) <= model_keys()
    assert model_keys() - set(status) == {"kopf"}  # kopf's own, never ours
    assert status["preflight"]["missing"][0] == {"component": "exporters/x29", "agents": 29}
    assert len(status["preflight"]["missing"]) == planner.MISSING_SHOWN
    assert (status["agents"], status["unmanaged"], status["observedGeneration"]) == (4, 1, 7)


def test_after_a_rollback_the_culprits_stay_on_record() -> None:
    progress = planner.Progress(phase=planner.Phase.ROLLED_BACK, desired_hash="2", message="m")
    culprits = [f.to_status() for f in _failing(2)]
    status = rollout_status(_decision(progress), 1, {"failingAgents": culprits}, NOW)
    assert status["failingAgents"] == culprits
    running = dataclasses.replace(progress, phase=planner.Phase.PROGRESSING)
    assert (
        rollout_status(_decision(running), 1, {"failingAgents": culprits}, NOW)["failingAgents"]
        == []
    )


def test_a_problem_changes_only_the_conditions_and_is_written_once() -> None:
    why = Why("FleetNotFound", "CollectorFleet obs/gateways does not exist")
    first = problem_status(why, 2, {}, NOW)
    exactly_the_model(first)
    assert set(first) == {"observedGeneration", "conditions"}
    written = {"phase": "Progressing", **first}
    assert status_patch(written, problem_status(why, 2, written, LATER)) is None


def test_only_what_changed_is_patched() -> None:
    progress = planner.Progress(
        phase=planner.Phase.PAUSED,
        pause_reason=planner.PauseReason.STEP,
        paused_at=1.7e9,
        desired_hash="2",
        message="m",
    )
    before = rollout_status(_decision(progress), 1, {}, NOW)
    # A key already absent is not removed again.
    assert status_patch({}, before) == {k: v for k, v in before.items() if v is not None}
    assert status_patch(before, rollout_status(_decision(progress), 1, before, LATER)) is None
    resumed = dataclasses.replace(
        progress, phase=planner.Phase.PROGRESSING, pause_reason=None, paused_at=None
    )
    patch = status_patch(before, rollout_status(_decision(resumed), 1, before, LATER))
    assert patch is not None
    assert patch["phase"] == "Progressing"
    assert patch["pauseReason"] is None  # a merge patch removes it
    assert patch["pausedAt"] is None
    assert "message" not in patch
    assert {c["type"] for c in patch["conditions"]} == {"Ready", "Reconciling", "Stalled"}
