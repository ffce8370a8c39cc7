"""The fleet status tick's decisions, without a cluster: the status dict and its shape,
which Events a change deserves, remediation's Event table, the readiness gates to patch,
and the spec problems a reconcile stops on."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import kopf
import pytest

import samples
from opamp_operator.api.models import (
    AGENT_READY_CONDITION,
    CollectorFleetSpec,
    CollectorFleetStatus,
)
from opamp_operator.fleet.conditions import FleetProblem, Why
from opamp_operator.fleet.events import condition_events
from opamp_operator.fleet.health import Reason, WorstAgent
from opamp_operator.fleet.mapping import AgentAuth, AuthMode, FleetSelector, map_agents
from opamp_operator.fleet.remediation import Action, Attempt, RemediationPlan, remediation_events
from opamp_operator.fleet.status import count_events, fleet_status, status_update
from opamp_operator.fleet.views import AgentView, PodView
from opamp_operator.k8s.fleets import FleetReconciler, config_problem, parse_fleet, revision_news
from opamp_operator.k8s.gates import (
    REMEDIATION_ANNOTATION,
    gate_updates,
    pod_view,
)
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.session import AgentState
from samples import T0, T1, healthy_fleet

HEALTH = healthy_fleet(2)
FACTS = dataclasses.replace(samples.FACTS, unauthenticated=1, overlapping=("obs/z", "obs/a"))


def _by_type(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_the_status_is_exactly_the_models_shape() -> None:
    status = fleet_status(HEALTH, FACTS, {}, T0)
    model = CollectorFleetStatus.model_validate(status)
    dumped = model.model_dump(by_alias=True, exclude_unset=True)
    assert set(dumped) == set(status), "a key the model does not declare would be ignored"
    assert status["overlappingFleets"] == ["obs/a", "obs/z"]
    assert status["agentsUnauthenticated"] == 1
    assert _by_type(status) == {
        "Ready": ("True", "AgentsReady"),
        "Reconciling": ("False", "Reconciled"),
        "Stalled": ("False", "ConfigValid"),
        "AgentsUpToDate": ("Unknown", "NoTargetVersion"),
    }


def test_a_blocker_stalls_and_clears_reconciling_left_from_before() -> None:
    applying = dataclasses.replace(HEALTH, config_applying=1, config_applied=1)
    before = fleet_status(applying, FACTS, {}, T0)
    assert _by_type(before)["Reconciling"] == ("True", "ApplyingConfig")
    blocked = dataclasses.replace(FACTS, blocker=Why("InvalidConfig", "exporter x unknown"))
    after = fleet_status(applying, blocked, before, T1)
    assert _by_type(after) == {
        "Ready": ("False", "InvalidConfig"),
        "Reconciling": ("False", "Stalled"),
        "Stalled": ("True", "InvalidConfig"),
        "AgentsUpToDate": ("Unknown", "NoTargetVersion"),
    }
    times = {c["type"]: c["lastTransitionTime"] for c in after["conditions"]}
    assert times == {"Ready": T0, "Reconciling": T1, "Stalled": T1, "AgentsUpToDate": T0}


def test_an_unchanged_status_is_not_written_and_a_change_says_what_changed() -> None:
    status = fleet_status(HEALTH, FACTS, {}, T0)
    assert status_update(status, fleet_status(HEALTH, FACTS, status, T1)) is None
    sick = dataclasses.replace(
        HEALTH,
        healthy=1,
        unhealthy=1,
        worst=(WorstAgent("u1", "obs/p1", Reason.UNHEALTHY, "exporter down"),),
    )
    update = status_update(status, fleet_status(sick, FACTS, status, T1))
    assert update is not None
    patch, events = update
    assert patch["unhealthy"] == 1
    assert [(e.type, e.reason) for e in events] == [
        ("Warning", "ReadyFalse"),
        ("Warning", "AgentsUnhealthy"),
    ]
    assert events[1].message == (
        "1 agents are unhealthy, disconnected or silent, was 0 (e.g. obs/p1)"
    )


def test_condition_events_are_normal_the_good_way_only() -> None:
    old = [{"type": "Ready", "status": "False"}, {"type": "Stalled", "status": "True"}]
    new = [
        {"type": "Ready", "status": "True", "reason": "AgentsReady", "message": "ok"},
        {"type": "Stalled", "status": "False", "reason": "ConfigValid", "message": "ok"},
        {"type": "Reconciling", "status": "True", "reason": "Applying", "message": "x" * 2000},
    ]
    events = condition_events(old, new)
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "ReadyTrue"),
        ("Normal", "StalledFalse"),
        ("Warning", "ReconcilingTrue"),
    ]
    assert len(events[2].message) == 1024
    assert condition_events(new, new) == []


def test_count_events_only_on_a_rise() -> None:
    assert count_events({"drifted": 3}, {"drifted": 2}) == []
    assert [e.reason for e in count_events({}, {"drifted": 1, "configFailed": 2})] == [
        "ConfigFailed",
        "DriftDetected",
    ]


def test_remediation_events_name_a_few_pods_per_outcome() -> None:
    uids = [f"u{i}" for i in range(7)]
    plan = RemediationPlan(
        actions={u: Action.REOFFER for u in uids} | {"r": Action.RESTART},
        attempts={"g": Attempt("h", gave_up=True)},
        remediated=("ok",),
        gave_up=("g",),
    )
    events = remediation_events(plan, {u: f"obs/pod-{u}" for u in uids})
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "DriftRemediating"),
        ("Normal", "DriftRemediating"),
        ("Normal", "Remediated"),
        ("Warning", "RemediationFailed"),
    ]
    assert events[0].message == (
        "re-offered the desired config to 7 drifted agents: obs/pod-u0, obs/pod-u1,"
        " obs/pod-u2, obs/pod-u3, obs/pod-u4 and 2 more"
    )
    assert events[1].message.endswith("restarting 1 agents: r")
    assert remediation_events(RemediationPlan({}, {}, (), ()), {}) == []


DESIRED = (
    "receivers: {otlp: {protocols: {grpc: {}}}}\nexporters: {debug: {}}\n"
    "service: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n"
)


def _record() -> FleetRecord:
    spec = CollectorFleetSpec.model_validate(
        {"selector": {"matchLabels": {"app": "x"}}, "config": {"inline": DESIRED}}
    )
    selector = FleetSelector.from_label_selector("obs", "f", 0.0, {"matchLabels": {"app": "x"}})
    record = FleetRecord("obs", "f", "uid", 1, selector, spec)
    record.config_text = DESIRED
    record.config = RemoteConfig.single(DESIRED.encode())
    return record


def _gated(name: str, observed: tuple[str, str] | None) -> PodView:
    return PodView(
        "obs",
        name,
        f"uid-{name}",
        ip="127.100.0.9",
        labels={"app": "x"},
        phase="Running",
        readiness_gates=(AGENT_READY_CONDITION,),
        gate_conditions={AGENT_READY_CONDITION: observed} if observed else {},
    )


def test_gates_follow_the_pod_not_a_memory_of_what_was_written() -> None:
    record = _record()
    pods = [
        _gated("unset", None),
        _gated("right", ("False", "NoAgent")),
        _gated("flipped", ("True", "AgentReady")),  # set True by someone else
        dataclasses.replace(_gated("ungated", None), readiness_gates=()),
    ]
    state = OperatorState(pods={p.key: p for p in pods})
    state.put_fleet(record)
    mapping = map_agents(pods, [])
    updates = gate_updates(state, record, mapping)
    assert sorted(updates) == ["obs/flipped", "obs/unset"]
    assert updates["obs/flipped"]["status"] == "False"
    assert updates["obs/flipped"]["reason"] == "NoAgent"


def test_an_agent_applying_the_desired_config_opens_its_pods_gate() -> None:
    record = _record()
    pod = _gated("p", ("False", "NoAgent"))
    agent = AgentView(
        instance_uid="a",
        attributes={"k8s.pod.uid": pod.uid},
        remote_config_status="APPLIED",
        remote_config_hash=record.desired_hash,
        healthy=True,
    )
    state = OperatorState(pods={pod.key: pod})
    state.put_fleet(record)
    updates = gate_updates(state, record, map_agents([pod], [agent]))
    assert updates["obs/p"]["status"] == "True"
    settled = dataclasses.replace(
        pod, gate_conditions={AGENT_READY_CONDITION: ("True", "AgentReady")}
    )
    assert gate_updates(state, record, map_agents([settled], [agent])) == {}


def test_after_a_start_pods_of_agents_not_back_yet_keep_their_gate() -> None:
    """A new process, 3 s into its grace: agents it has not seen leave their pods as
    they are; an agent that is back (or left again since) is judged at once."""
    record = _record()
    started = 1000.0
    pods = [_gated(n, ("True", "AgentReady")) for n in ("back", "away", "closed", "left")]
    agents = [
        AgentView(
            instance_uid="back",
            attributes={"k8s.pod.uid": "uid-back"},
            remote_config_status="APPLIED",
            remote_config_hash=record.desired_hash,
            connected_at=started + 2,
        ),
        # Closed when this replica went standby; not back since it is active again.
        AgentView(
            instance_uid="closed",
            attributes={"k8s.pod.uid": "uid-closed"},
            state=AgentState.DISCONNECTED,
            connected_at=started - 60,
        ),
        AgentView(
            instance_uid="left",
            attributes={"k8s.pod.uid": "uid-left"},
            state=AgentState.DISCONNECTED,
            connected_at=started + 1,
        ),
    ]
    state = OperatorState(pods={p.key: p for p in pods})
    state.put_fleet(record)
    mapping = map_agents(pods, agents)
    held = gate_updates(state, record, mapping, held_since=started)
    assert sorted(held) == ["obs/left"]
    assert (held["obs/left"]["status"], held["obs/left"]["reason"]) == ("False", "Disconnected")
    after = gate_updates(state, record, mapping, held_since=None)
    assert {k: (c["status"], c["reason"]) for k, c in after.items()} == {
        "obs/away": ("False", "NoAgent"),
        "obs/closed": ("False", "Disconnected"),
        "obs/left": ("False", "Disconnected"),
    }
    assert all("lastTransitionTime" in c for c in after.values())


def test_pod_view_reads_the_persisted_remediation_attempt() -> None:
    raw: dict[str, Any] = {
        "metadata": {
            "namespace": "obs",
            "name": "p",
            "uid": "u",
            "annotations": {REMEDIATION_ANNOTATION: '{"hash":"ab"}', "other": "x"},
        },
    }
    view = pod_view(kopf.Body(cast(kopf.RawBody, raw)))
    assert view.remediation == '{"hash":"ab"}'
    assert PodView("obs", "p", "u").remediation == ""
    bare = pod_view(kopf.Body(cast(kopf.RawBody, {"metadata": {"name": "q"}})))
    assert bare.remediation == ""


def test_pod_view_reads_only_the_gates_conditions() -> None:
    raw: dict[str, Any] = {
        "metadata": {"namespace": "obs", "name": "p", "uid": "u", "labels": {"a": "b"}},
        "spec": {"readinessGates": [{"conditionType": AGENT_READY_CONDITION}]},
        "status": {
            "podIP": "10.0.0.1",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady"},
                {"type": AGENT_READY_CONDITION, "status": "True", "reason": "AgentReady"},
            ],
        },
    }
    view = pod_view(kopf.Body(cast(kopf.RawBody, raw)))
    assert view.gate_conditions == {AGENT_READY_CONDITION: ("True", "AgentReady")}
    assert view.readiness_gates == (AGENT_READY_CONDITION,)


def _fleet_body(spec: dict[str, Any]) -> kopf.Body:
    meta = {"namespace": "obs", "name": "f", "uid": "u", "generation": 4}
    return kopf.Body(cast(kopf.RawBody, {"metadata": meta, "spec": spec}))


def test_a_spec_the_model_refuses_is_an_invalid_spec_problem() -> None:
    with pytest.raises(FleetProblem) as found:
        parse_fleet(_fleet_body({"selector": {}, "config": {"inline": "a"}, "bogus": 1}))
    assert found.value.why.reason == "InvalidSpec"
    assert "bogus" in found.value.why.message
    bad_selector = {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}
    with pytest.raises(FleetProblem):
        parse_fleet(_fleet_body({"selector": bad_selector, "config": {"inline": "a"}}))
    token = {"name": "s", "key": "token"}
    record = parse_fleet(
        _fleet_body({"selector": {}, "config": {"inline": "a"}, "authSecretRef": token})
    )
    assert record.generation == 4
    assert record.selector.auth == AgentAuth(AuthMode.TOKEN)
    bound = {"mode": "ServiceAccountToken", "serviceAccounts": ["collector"]}
    spec = {"selector": {}, "config": {"inline": "a"}, "agentAuth": bound}
    assert parse_fleet(_fleet_body(spec)).selector.auth == AgentAuth(
        AuthMode.SERVICE_ACCOUNT_TOKEN, frozenset({"collector"})
    )
    with pytest.raises(FleetProblem, match="mode Token needs authSecretRef"):
        parse_fleet(_fleet_body({**spec, "agentAuth": {"mode": "Token"}}))


def test_config_problems_and_revision_news() -> None:
    assert config_problem(DESIRED) is None
    problem = config_problem("service: {pipelines: {traces: {exporters: [nope]}}}\n")
    assert problem is not None
    assert problem.reason == "InvalidConfig"
    record = _record()
    assert revision_news(record, None, created=True)
    assert not revision_news(record, None, created=False)  # a restart's resume
    assert not revision_news(record, record, created=False)  # same config again
    changed = dataclasses.replace(record, config=RemoteConfig.single(b"x: 1\n"))
    assert revision_news(changed, record, created=False)  # back to an older revision


def test_an_invalid_spec_keeps_what_agents_get_and_says_stalled() -> None:
    record = _record()
    state = OperatorState()
    state.put_fleet(record)
    body = _fleet_body({"selector": {}, "config": {"inline": "a"}, "bogus": 1})
    patch = kopf.Patch()
    reconciler = FleetReconciler(state, cast(Any, None), None, "opamp-operator")
    reconciler.refuse_spec(body, patch, Why("InvalidSpec", "invalid spec: bogus"))
    kept = state.fleets["obs/f"]
    assert kept.config == record.config
    assert kept.generation == 4
    assert kept.blocker == Why("InvalidSpec", "invalid spec: bogus")
    assert patch["status"]["observedGeneration"] == 4
    by_type = {c["type"]: c["status"] for c in patch["status"]["conditions"]}
    assert by_type == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
