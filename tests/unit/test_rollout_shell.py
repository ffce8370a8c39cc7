"""The ConfigRollout shell's pure parts: the spec as the planner's policy (gate
inheritance), the control annotations and preflight's components. What it decides is
fleet/rollout_status.py's (tests/unit/test_rollout_status.py)."""

from __future__ import annotations

from opamp_operator.api.models import ConfigRolloutSpec
from opamp_operator.fleet import rollout as planner
from opamp_operator.k8s.rollouts import config_components, controls_of, to_policy, validated


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


def test_without_steps_the_rollouts_gates_still_apply() -> None:
    """They were dropped: the single implicit step had default gates, so a rollout
    without steps ignored maxFailed, applyTimeoutSeconds, verifiedOnly..."""
    policy = to_policy(_spec(gates={"maxFailed": 3, "verifiedOnly": True}))
    (only,) = planner.effective_steps(policy)
    assert only.gates == planner.Gates(max_failed=3, verified_only=True)


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


def test_an_invalid_spec_says_why() -> None:
    spec, error = validated({"spec": {"fleetRef": {"name": ""}}})
    assert spec is None
    assert error is not None
    assert "fleetRef.name" in error
    spec, error = validated({"spec": {"fleetRef": {"name": "gateways"}}})
    assert spec is not None
    assert error is None
