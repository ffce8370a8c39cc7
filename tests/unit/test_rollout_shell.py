"""The ConfigRollout shell's pure parts: the spec as the planner's policy (gate
inheritance), the control annotations, and the kstatus conditions it writes."""

from __future__ import annotations

import dataclasses

from opamp_operator.api.models import ConfigRolloutSpec
from opamp_operator.fleet import rollout as planner
from opamp_operator.k8s.rollouts import (
    config_components,
    controls_of,
    fleet_problem,
    rollout_conditions,
    to_policy,
)


def _spec(**spec: object) -> ConfigRolloutSpec:
    return ConfigRolloutSpec.model_validate({"fleetRef": {"name": "gateways"}, **spec})


def test_step_gates_override_the_rollout_gates_field_by_field() -> None:
    policy = to_policy(
        _spec(
            gates={"maxFailed": 2, "bakeSeconds": 30},
            steps=[
                {"agents": 1, "pause": {"untilPromoted": True}},
                {"percent": 50, "gates": {"bakeSeconds": 0, "maxUnhealthy": 1}},
                {"selector": {"podLabels": {"zone": "a"}}, "pause": {"seconds": 60}},
            ],
            onFailure="Pause",
            paused=True,
        )
    )
    first, second, third = policy.steps
    assert (first.agents, first.pause_until_promoted, first.pause_seconds) == (1, True, None)
    assert first.gates == planner.Gates(max_failed=2, bake_seconds=30)
    assert second.gates == planner.Gates(max_failed=2, bake_seconds=0, max_unhealthy=1)
    assert third.pod_labels == {"zone": "a"}
    assert third.pause_seconds == 60
    assert policy.on_failure is planner.OnFailure.PAUSE
    assert policy.paused is True
    assert policy.preflight is True


def test_no_steps_is_the_planners_single_full_step() -> None:
    policy = to_policy(_spec())
    assert policy.steps == ()
    (only,) = planner.effective_steps(policy)
    assert only.percent == 100


def test_controls_come_from_annotations_of_the_group() -> None:
    controls = controls_of(
        {"opampoperator.io/promote": "1", "opampoperator.io/abort": "x", "other/retry": "y"}
    )
    assert controls == planner.Controls(promote="1", abort="x", retry="")


def test_config_components_for_preflight() -> None:
    text = (
        "receivers: {otlp/a: {}, otlp/b: {}}\nexporters: {debug: {}}\n"
        "service: {pipelines: {traces: {receivers: [otlp/a], exporters: [debug]}}}\n"
    )
    assert config_components(text) == {
        "receivers": frozenset({"otlp"}),
        "exporters": frozenset({"debug"}),
    }
    assert config_components("receivers: [") == {}
    assert config_components(None) == {}


def _decision(progress: planner.Progress, blocked: bool = False) -> planner.Decision:
    return planner.Decision(
        progress=progress,
        membership=planner.Membership(desired_hash=progress.desired_hash),
        failing=(),
        preflight=planner.Preflight(blocked=blocked, missing={}, unreported=0, checked=0)
        if blocked
        else None,
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
    missing = _by_type(rollout_conditions(None, 1, ("FleetNotFound", "no fleet")))
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
    reason, message = rolled_back
    assert reason == "RolloutRolledBack"
    assert "gw-2" in message
    assert "gw-1" in message
    assert "2 agents failed" in message
