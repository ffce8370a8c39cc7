"""The ConfigRollout shell's pure parts: the spec as the planner's policy (gate
inheritance), the control annotations and preflight's components. What it decides is
fleet/rollout_status.py's (tests/unit/test_rollout_status.py)."""

from __future__ import annotations

from opamp_operator.api.models import CollectorFleetSpec, ConfigRolloutSpec
from opamp_operator.api.policy import stored_package, to_policy
from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.mapping import FleetSelector
from opamp_operator.fleet.rollout_agents import config_components, revision_status
from opamp_operator.fleet.views import AgentView
from opamp_operator.k8s.rollouts import controls_of, validated
from opamp_operator.k8s.state import FleetRecord, Governance, OperatorState
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.packages import PackageReport, PackageState


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


# ---- a revision with a package: what the gates read, what a rollback offers ------------

SHA = "0f" * 32
CONFIG = "receivers: {otlp: {}}\n"


def _record(package_version: str | None = "2.0.0") -> FleetRecord:
    spec: dict[str, object] = {
        "selector": {"matchLabels": {"app": "x"}},
        "config": {"inline": CONFIG},
    }
    if package_version is not None:
        spec["version"] = {
            "expected": package_version,
            "package": {"url": f"https://dl.example/{package_version}.tgz", "sha256": SHA},
        }
    record = FleetRecord(
        "obs",
        "f",
        "uid",
        1,
        FleetSelector("obs", "f", 0.0),
        CollectorFleetSpec.model_validate(spec),
    )
    record.config_text = CONFIG
    record.config = RemoteConfig.single(CONFIG.encode())
    return record


def _view(
    record: FleetRecord,
    *,
    config: str | None = "APPLIED",
    version: str = "1.0.0",
    package: PackageState | None = None,
    error: str = "",
    accepts: bool = True,
) -> AgentView:
    offer = record.package
    reports = {}
    if package is not None and offer is not None:
        reports[""] = PackageReport("", package, version, offer.package_hash.hex(), error)
    return AgentView(
        instance_uid="a",
        attributes={"service.version": version},
        remote_config_status=config,
        remote_config_hash=record.desired_hash if config else "",
        remote_config_error="bad config" if config == "FAILED" else "",
        accepts_packages=accepts,
        packages_hash=offer.all_packages_hash.hex() if offer is not None and package else "",
        packages=reports,
    )


def test_a_revision_with_a_package_is_its_own_revision() -> None:
    plain, packaged, newer = _record(None), _record("2.0.0"), _record("2.0.1")
    assert plain.revision_hash == plain.desired_hash
    assert len({plain.revision_hash, packaged.revision_hash, newer.revision_hash}) == 3
    assert packaged.desired_hash == plain.desired_hash  # what agents echo is the config's
    assert _record("2.0.0").revision_hash == packaged.revision_hash


def test_the_gates_read_config_and_package_together() -> None:
    record = _record()
    rev = record.revision_hash
    cases = [
        (_view(record, package=PackageState.INSTALLED, version="2.0.0"), ("APPLIED", rev, "")),
        (_view(record, package=PackageState.INSTALLED, version="1.0.0"), ("APPLYING", rev, "")),
        (_view(record, package=PackageState.DOWNLOADING), ("APPLYING", rev, "")),
        (
            _view(record, package=PackageState.INSTALL_FAILED, error="sha256 mismatch"),
            ("FAILED", rev, "package 2.0.0 failed to install: sha256 mismatch"),
        ),
        (
            _view(record, config="FAILED", package=PackageState.INSTALLED, version="2.0.0"),
            ("FAILED", rev, "bad config"),
        ),
        (_view(record, config=None), (None, "", "")),
        # An agent that takes no packages is judged by its config alone.
        (_view(record, accepts=False), ("APPLIED", rev, "")),
    ]
    for view, expected in cases:
        assert revision_status(view, record.desired) == expected, view
    # Without a package, exactly what the agent reports, as before.
    plain = _record(None)
    assert revision_status(_view(plain), plain.desired) == ("APPLIED", plain.desired_hash, "")


def test_members_get_the_desired_package_and_the_others_the_stable_one() -> None:
    record, stable = _record("2.0.1"), _record("2.0.0")
    state = OperatorState()
    nobody = planner.Membership.nobody(record.revision_hash)
    state.fleets[record.key] = record
    record.governance = Governance(
        "obs/r", nobody, "f-old", stable.revision_hash, CONFIG, stable.config, stable.package
    )
    assert state.expected_package(record, "a") == stable.package
    assert state.expected(record, "a")[1] == record.desired_hash  # the same config
    record.governance = Governance(
        "obs/r",
        planner.Membership.all(record.revision_hash),
        "f-old",
        stable.revision_hash,
        CONFIG,
        stable.config,
        stable.package,
    )
    assert state.expected_package(record, "a") == record.package


def test_a_stored_revision_gives_back_its_package() -> None:
    record = _record("2.0.0")
    assert record.spec.version is not None
    stored = record.spec.version.model_dump_json(by_alias=True, exclude_none=True)
    assert stored_package(stored) == record.package
    assert stored_package(None) is None
