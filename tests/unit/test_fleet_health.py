"""A fleet's status from its mapping (fleet/health.py): counts, versions, worst agents,
kstatus conditions, lastTransitionTime handling and the pod readiness gate."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.fleet.conditions import Why
from opamp_operator.fleet.conditions import merge as merge_conditions
from opamp_operator.fleet.health import (
    OTHER_VERSIONS,
    SEVERITY,
    UNKNOWN_VERSION,
    ConfigState,
    FleetHealth,
    Reason,
    agent_ready,
    agent_ready_condition,
    conditions,
    config_state,
    summarize,
    versions_histogram,
)
from opamp_operator.fleet.mapping import FleetSelector, MappingResult, assign_fleets, map_agents
from opamp_operator.fleet.text import MESSAGE_LIMIT
from opamp_operator.fleet.views import AgentView, PodView
from opamp_operator.opamp.session import AgentState

DESIRED = "ab" * 32
OLD = "cd" * 32
FLEET = FleetSelector("obs", "gw", "2024-01-01T00:00:00Z")


def pod(name: str) -> PodView:
    return PodView(namespace="obs", name=name, uid=f"uid-{name}")


def agent(
    uid: str,
    pod_name: str | None = None,
    *,
    state: AgentState = AgentState.CONNECTED,
    healthy: bool | None = True,
    health_error: str = "",
    status: str | None = "APPLIED",
    config_hash: str = DESIRED,
    config_error: str = "",
    version: str = "0.110.0",
) -> AgentView:
    attrs = {"service.version": version} if version else {}
    if pod_name is not None:
        attrs["k8s.pod.uid"] = f"uid-{pod_name}"
    return AgentView(
        instance_uid=uid,
        attributes=attrs,
        state=state,
        healthy=healthy,
        health_error=health_error,
        remote_config_status=status,
        remote_config_hash=config_hash,
        remote_config_error=config_error,
    )


def world(pods: list[PodView], agents: list[AgentView]) -> MappingResult:
    return map_agents(pods, agents)


def counts(health: FleetHealth) -> dict[str, Any]:
    status = health.to_status()
    del status["versions"], status["worstAgents"]
    return status


# ---------------------------------------------------------------------------------------
# config state


@pytest.mark.parametrize(
    ("status", "config_hash", "desired", "expected"),
    [
        ("APPLIED", DESIRED, DESIRED, ConfigState.APPLIED),
        ("APPLYING", DESIRED, DESIRED, ConfigState.APPLYING),
        ("FAILED", DESIRED, DESIRED, ConfigState.FAILED),
        ("UNSET", DESIRED, DESIRED, ConfigState.PENDING),
        (None, "", DESIRED, ConfigState.PENDING),
        ("APPLIED", OLD, DESIRED, ConfigState.PENDING),  # applied, but another config
        ("FAILED", OLD, DESIRED, ConfigState.PENDING),  # an old failure is not this config's
        ("APPLIED", DESIRED.upper(), DESIRED, ConfigState.APPLIED),
        ("FAILED", OLD, "", ConfigState.NOT_REQUIRED),
    ],
)
def test_config_state_reads_the_status_only_for_the_desired_hash(
    status: str | None, config_hash: str, desired: str, expected: ConfigState
) -> None:
    assert config_state(agent("a", status=status, config_hash=config_hash), desired) is expected


# ---------------------------------------------------------------------------------------
# counts


def test_every_count() -> None:
    pods = [pod(f"p{i}") for i in range(9)]
    agents = [
        agent("a1", "p1"),  # healthy, applied
        agent("a2", "p2", healthy=False),  # unhealthy, applied
        agent("a3", "p3", healthy=None, status="APPLYING"),  # applying, health unknown
        agent("a4", "p4", status="FAILED", config_error="bad exporter"),  # failed
        agent("a5", "p5", config_hash=OLD),  # pending: applied another config
        agent("a6", "p6", status=None, config_hash=""),  # pending: no status yet
        agent("a7", "p7", state=AgentState.STALE),  # unhealthy: stale
        agent("a8", "p8", state=AgentState.DISCONNECTED),  # unhealthy: disconnected while on a pod
        agent("a9", "gone", state=AgentState.DISCONNECTED),  # gone with its pod: counted nowhere
        agent("b1"),  # live, no pod
        agent("b2", "p1", healthy=False),  # also claims p1; wins it: both live, larger uid
    ]
    drift = {"a1": True, "a7": True, "a3": None, "a9": True}
    health = summarize(FLEET, world(pods, agents), DESIRED, drift)
    assert health.fleet == "obs/gw"
    assert counts(health) == {
        "podsSelected": 9,
        "agentsConnected": 8,  # a1-a6, b1, b2
        "agentsMapped": 8,  # b2 on p1, a2-a8 on p2-p8
        "healthy": 5,  # a1, a4, a5, a6, b1 (a3 unknown; a2, b2 unhealthy)
        "unhealthy": 4,  # a2, b2, a7, a8
        "configApplied": 4,  # a1, a2, b1, b2
        "configApplying": 1,  # a3
        "configFailed": 1,  # a4
        "configPending": 2,  # a5, a6
        "drifted": 1,  # a1 only: a7 is not live, a9 not counted
        "podsWithoutAgent": 1,  # p0
        "agentsWithoutPod": 1,  # b1 (a9 is gone)
        "duplicateAgents": 1,  # a1 lost p1 to b2
        "targetVersion": None,
        "agentsOutdated": 0,
        "packageInstalling": 0,
        "packageFailed": 0,
    }


def test_agents_mapped_counts_pod_holders_even_when_gone() -> None:
    health = summarize(
        FLEET,
        world(
            [pod("p1"), pod("p2")],
            [agent("a", "p1"), agent("b", "p2", state=AgentState.DISCONNECTED)],
        ),
        DESIRED,
        {},
    )
    assert (health.agents_mapped, health.agents_connected, health.unhealthy) == (2, 1, 1)


def test_gone_duplicates_and_gone_orphans_are_not_counted() -> None:
    """A restarted Collector leaves its old record on the same pod; it must not count."""
    agents = [
        agent("new", "p1"),
        agent("old", "p1", state=AgentState.DISCONNECTED, status="FAILED"),
        agent("ghost", state=AgentState.DISCONNECTED),
    ]
    health = summarize(FLEET, world([pod("p1")], agents), DESIRED, {"old": True})
    assert counts(health) == {
        "podsSelected": 1,
        "agentsConnected": 1,
        "agentsMapped": 1,
        "healthy": 1,
        "unhealthy": 0,
        "configApplied": 1,
        "configApplying": 0,
        "configFailed": 0,
        "configPending": 0,
        "drifted": 0,
        "podsWithoutAgent": 0,
        "agentsWithoutPod": 0,
        "duplicateAgents": 0,
        "targetVersion": None,
        "agentsOutdated": 0,
        "packageInstalling": 0,
        "packageFailed": 0,
    }
    assert health.worst == ()


def test_without_a_desired_config_nothing_is_awaited() -> None:
    health = summarize(FLEET, world([pod("p")], [agent("a", "p", status=None)]), "", {})
    assert (health.config_applied, health.config_pending, health.worst) == (0, 0, ())


def test_summarize_accepts_a_fleet_key() -> None:
    assert summarize("ns/f", world([], []), DESIRED, {}).fleet == "ns/f"


def test_summarize_of_each_fleet_counts_only_its_share() -> None:
    fleets = [FleetSelector("a", "f", 0.0), FleetSelector("b", "f", 0.0)]
    pods = [PodView("a", "p", "uid-a"), PodView("b", "p", "uid-b"), PodView("b", "q", "uid-q")]
    agents = [agent("1", "a"), agent("2", "b", healthy=False), agent("3", "q")]
    assigned = assign_fleets(fleets, pods, agents)
    first = summarize(fleets[0], assigned.mapping_for("a/f"), DESIRED, {})
    second = summarize(fleets[1], assigned.mapping_for("b/f"), DESIRED, {})
    assert (first.pods_selected, first.agents_connected, first.unhealthy) == (1, 1, 0)
    assert (second.pods_selected, second.agents_connected, second.unhealthy) == (2, 2, 1)


# ---------------------------------------------------------------------------------------
# versions


def test_versions_histogram_is_bounded_with_the_rest_as_other() -> None:
    agents = [
        *(agent(f"a{i}", version="1.0") for i in range(5)),
        *(agent(f"b{i}", version="2.0") for i in range(3)),
        *(agent(f"c{i}", version="1.5") for i in range(3)),
        agent("d", version="0.9"),
        agent("e", version="0.8"),
        agent("f", version=""),
    ]
    assert versions_histogram(agents, limit=3) == (
        ("1.0", 5),
        ("1.5", 3),  # ties by version text
        ("2.0", 3),
        (OTHER_VERSIONS, 3),
    )
    assert versions_histogram(agents, limit=10) == (
        ("1.0", 5),
        ("1.5", 3),
        ("2.0", 3),
        (UNKNOWN_VERSION, 1),
        ("0.8", 1),
        ("0.9", 1),
    )
    assert OTHER_VERSIONS not in dict(versions_histogram(agents, limit=6))


def test_summary_versions_count_live_agents_only() -> None:
    agents = [
        agent("a", "p1", version="1.0"),
        agent("b", "p2", version="0.9", state=AgentState.DISCONNECTED),
        agent("c", version="1.1"),
    ]
    health = summarize(FLEET, world([pod("p1"), pod("p2")], agents), DESIRED, {})
    assert health.versions == (("1.0", 1), ("1.1", 1))
    assert health.to_status()["versions"] == [
        {"version": "1.0", "count": 1},
        {"version": "1.1", "count": 1},
    ]


def test_versions_limit_is_applied_by_summarize() -> None:
    agents = [agent(f"a{i}", version=f"1.{i}") for i in range(5)]
    health = summarize(FLEET, world([], agents), DESIRED, {}, versions_limit=2)
    assert health.versions == (("1.0", 1), ("1.1", 1), (OTHER_VERSIONS, 3))


# ---------------------------------------------------------------------------------------
# the worst agents


def _one_of_each() -> tuple[MappingResult, dict[str, bool | None]]:
    pods = [pod(f"p{i}") for i in range(8)]
    agents = [
        agent("7-pending", "p0", config_hash=OLD),
        agent("6-applying", "p1", status="APPLYING"),
        agent("5-drifted", "p2"),
        agent("4-stale", "p3", state=AgentState.STALE),
        agent("3-disconnected", "p4", state=AgentState.DISCONNECTED),
        agent("2-unhealthy", "p5", healthy=False, health_error="exporter queue full"),
        agent("1-failed", "p6", status="FAILED", config_error="unknown exporter"),
        agent("8-fine", "p7"),
    ]
    return world(pods, agents), {"5-drifted": True}


def test_worst_agents_are_ordered_by_severity() -> None:
    mapping, drift = _one_of_each()
    health = summarize(FLEET, mapping, DESIRED, drift)
    assert [(w.instance_uid, w.reason) for w in health.worst] == [
        ("1-failed", Reason.CONFIG_FAILED),
        ("2-unhealthy", Reason.UNHEALTHY),
        ("3-disconnected", Reason.DISCONNECTED),
        ("4-stale", Reason.STALE),
        ("5-drifted", Reason.DRIFTED),
        ("6-applying", Reason.CONFIG_APPLYING),
        ("7-pending", Reason.CONFIG_PENDING),
    ]
    assert [w.pod for w in health.worst][:2] == ["obs/p6", "obs/p5"]
    assert "unknown exporter" in health.worst[0].message
    assert "exporter queue full" in health.worst[1].message


@pytest.mark.parametrize("limit", [0, 1, 3, 7, 50])
def test_worst_list_is_bounded_and_keeps_the_worst(limit: int) -> None:
    mapping, drift = _one_of_each()
    worst = summarize(FLEET, mapping, DESIRED, drift, worst_limit=limit).worst
    everything = summarize(FLEET, mapping, DESIRED, drift, worst_limit=100).worst
    assert len(worst) == min(limit, 7)
    assert worst == everything[:limit]


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="limits"):
        summarize(FLEET, world([], []), DESIRED, {}, worst_limit=-1)


def test_an_agent_is_listed_once_with_its_worst_reason() -> None:
    bad = agent("a", "p", healthy=False, status="FAILED")
    health = summarize(FLEET, world([pod("p")], [bad]), DESIRED, {"a": True})
    assert [(w.instance_uid, w.reason) for w in health.worst] == [("a", Reason.CONFIG_FAILED)]


def test_a_gone_agent_is_reported_as_gone_not_by_what_it_last_said() -> None:
    gone = agent("a", "p", state=AgentState.DISCONNECTED, status="FAILED", healthy=False)
    health = summarize(FLEET, world([pod("p")], [gone]), DESIRED, {"a": True})
    assert [w.reason for w in health.worst] == [Reason.DISCONNECTED]
    assert (health.config_failed, health.drifted) == (0, 0)


def test_same_severity_is_ordered_by_uid() -> None:
    states = {"c": AgentState.DISCONNECTED, "a": AgentState.CONNECTED, "b": AgentState.STALE}
    agents = [agent(u, f"p{u}", state=states[u]) for u in "cab"]
    health = summarize(FLEET, world([pod("pa"), pod("pb"), pod("pc")], agents), DESIRED, {})
    assert [w.instance_uid for w in health.worst] == ["b", "c"]


def test_worst_messages_are_one_short_line_and_orphans_have_no_pod() -> None:
    error = "line one\nline two " + "x" * 1000
    health = summarize(
        FLEET, world([], [agent("a", status="FAILED", config_error=error)]), DESIRED, {}
    )
    (entry,) = health.worst
    assert entry.pod == ""
    assert len(entry.message) == MESSAGE_LIMIT
    assert entry.message.endswith("…")
    assert "\n" not in entry.message
    assert entry.message.startswith(f"config {DESIRED[:12]} failed: line one line two x")
    assert entry.to_dict() == {
        "instanceUid": "a",
        "pod": "",
        "reason": "ConfigFailed",
        "message": entry.message,
    }


def test_status_stays_small_at_ten_thousand_agents() -> None:
    long_name = "collector-" + "n" * 200
    pods = [PodView(f"ns-{'x' * 50}", f"{long_name}-{i}", f"uid-{i}") for i in range(10_000)]
    agents = [
        AgentView(
            instance_uid=f"0190a000-0000-7000-8000-{i:012d}",
            attributes={"k8s.pod.uid": f"uid-{i}", "service.version": f"0.{i}.0-{'v' * 100}"},
            healthy=False,
            health_error="e" * 5000,
            remote_config_status="FAILED",
            remote_config_hash=DESIRED,
            remote_config_error="\n".join(["error"] * 2000),
        )
        for i in range(10_000)
    ]
    health = summarize(FLEET, world(pods, agents), DESIRED, {a.instance_uid: True for a in agents})
    assert (health.agents_connected, health.config_failed, health.unhealthy) == (10_000,) * 3
    size = len(json.dumps(health.to_status()).encode())
    assert size < 16 * 1024, size
    cond = conditions(health, 1, 1, Why("InvalidConfig", "bad " * 100_000))
    assert len(json.dumps(cond).encode()) < 8 * 1024


# ---------------------------------------------------------------------------------------
# readiness gate


@pytest.mark.parametrize(
    ("view", "desired", "expected"),
    [
        (None, DESIRED, (False, "NoAgent")),
        (agent("a"), DESIRED, (True, "AgentReady")),
        (agent("a", healthy=None), DESIRED, (True, "AgentReady")),  # health not reported
        (agent("a", state=AgentState.DISCONNECTED), DESIRED, (False, "Disconnected")),
        (agent("a", state=AgentState.STALE), DESIRED, (False, "Stale")),
        (agent("a", healthy=False), DESIRED, (False, "Unhealthy")),
        (agent("a", status="FAILED"), DESIRED, (False, "ConfigFailed")),
        (agent("a", status="APPLYING"), DESIRED, (False, "ConfigApplying")),
        (agent("a", config_hash=OLD), DESIRED, (False, "ConfigPending")),
        (agent("a", status=None, config_hash=""), "", (True, "AgentReady")),
        (agent("a", status=None, config_hash=""), DESIRED, (False, "ConfigPending")),
        (agent("a", healthy=False, status="FAILED"), DESIRED, (False, "ConfigFailed")),
    ],
)
def test_agent_ready(view: AgentView | None, desired: str, expected: tuple[bool, str]) -> None:
    assert agent_ready(view, desired) == expected


def test_agent_ready_condition_is_a_pod_condition() -> None:
    gate = "opampoperator.io/agent-ready"
    assert agent_ready_condition(agent("a"), DESIRED, gate) == {
        "type": gate,
        "status": "True",
        "reason": "AgentReady",
        "message": f"connected, not unhealthy, config {DESIRED[:12]} applied",
    }
    failed = agent_ready_condition(agent("a", status="FAILED", config_error="boom"), DESIRED, gate)
    assert (failed["status"], failed["reason"]) == ("False", "ConfigFailed")
    assert failed["message"].endswith("failed: boom")
    none = agent_ready_condition(None, DESIRED, gate)
    assert (none["status"], none["reason"], none["message"]) == (
        "False",
        "NoAgent",
        "no OpAMP agent maps to this pod",
    )


# ---------------------------------------------------------------------------------------
# conditions


def by_type(conds: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conds}


def health_of(pods: list[PodView], agents: list[AgentView]) -> FleetHealth:
    return summarize(FLEET, world(pods, agents), DESIRED, {})


READY = health_of([pod("p")], [agent("a", "p")])


def test_conditions_ready() -> None:
    conds = conditions(READY, 3, 3)
    assert by_type(conds) == {
        "Ready": ("True", "AgentsReady"),
        "Reconciling": ("False", "Reconciled"),
        "Stalled": ("False", "ConfigValid"),
    }
    assert conds[0]["message"] == f"1 agents live, none unhealthy, config {DESIRED[:12]} applied"
    assert {c["observedGeneration"] for c in conds} == {3}
    for c in conds:
        assert set(c) == {"type", "status", "reason", "message", "observedGeneration"}
        assert re.fullmatch(r"[A-Z][A-Za-z]*", c["reason"])


def test_an_empty_fleet_is_ready() -> None:
    assert by_type(conditions(health_of([], []), 1, 1))["Ready"][0] == "True"


def test_invalid_config_stalls() -> None:
    conds = conditions(READY, 2, 2, Why("InvalidConfig", "exporter otlp is not defined"))
    assert by_type(conds) == {
        "Ready": ("False", "InvalidConfig"),
        "Reconciling": ("False", "Stalled"),
        "Stalled": ("True", "InvalidConfig"),
    }
    assert conds[2]["message"] == "exporter otlp is not defined"


def test_a_new_generation_is_reconciling() -> None:
    conds = conditions(READY, 2, 3)
    assert by_type(conds) == {
        "Ready": ("False", "GenerationChanged"),
        "Reconciling": ("True", "GenerationChanged"),
        "Stalled": ("False", "ConfigValid"),
    }


@pytest.mark.parametrize(
    "view",
    [agent("a", "p", status="APPLYING"), agent("a", "p", config_hash=OLD)],
    ids=["applying", "pending"],
)
def test_agents_still_applying_is_reconciling(view: AgentView) -> None:
    conds = conditions(health_of([pod("p")], [view]), 1, 1)
    assert by_type(conds) == {
        "Ready": ("False", "ApplyingConfig"),
        "Reconciling": ("True", "ApplyingConfig"),
        "Stalled": ("False", "ConfigValid"),
    }
    assert conds[1]["message"] == f"1 of 1 agents still to apply config {DESIRED[:12]}"


@pytest.mark.parametrize(
    ("pods", "agents", "reason"),
    [
        ([pod("p")], [agent("a", "p", status="FAILED")], "ConfigFailed"),
        ([pod("p")], [agent("a", "p", healthy=False)], "AgentsUnhealthy"),
        ([pod("p")], [agent("a", "p", state=AgentState.STALE)], "AgentsUnhealthy"),
        ([pod("p")], [agent("a", "p", state=AgentState.DISCONNECTED)], "AgentsUnhealthy"),
        ([pod("p"), pod("q")], [agent("a", "p")], "PodsWithoutAgent"),
    ],
)
def test_not_ready_when_done_but_not_fine(
    pods: list[PodView], agents: list[AgentView], reason: str
) -> None:
    conds = conditions(health_of(pods, agents), 1, 1)
    assert by_type(conds) == {
        "Ready": ("False", reason),
        "Reconciling": ("False", "Reconciled"),
        "Stalled": ("False", "ConfigValid"),
    }


def test_drift_alone_does_not_unready_the_fleet() -> None:
    health = summarize(FLEET, world([pod("p")], [agent("a", "p")]), DESIRED, {"a": True})
    assert health.drifted == 1
    assert by_type(conditions(health, 1, 1))["Ready"] == ("True", "AgentsReady")


# ---------------------------------------------------------------------------------------
# lastTransitionTime


T0, T1, T2 = "2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z"


def test_first_conditions_get_now() -> None:
    merged = merge_conditions([], conditions(READY, 1, 1), T0)
    assert [c["lastTransitionTime"] for c in merged] == [T0, T0, T0]


def test_timestamps_follow_status_changes_across_transitions() -> None:
    applying = health_of([pod("p")], [agent("a", "p", status="APPLYING")])
    unhealthy = health_of([pod("p")], [agent("a", "p", healthy=False)])

    s0 = merge_conditions([], conditions(applying, 1, 1), T0)
    s1 = merge_conditions(s0, conditions(READY, 1, 1), T1)
    s2 = merge_conditions(s1, conditions(unhealthy, 1, 1), T2)

    def stamps(conds: list[dict[str, Any]]) -> dict[str, str]:
        return {c["type"]: c["lastTransitionTime"] for c in conds}

    assert stamps(s1) == {"Ready": T1, "Reconciling": T1, "Stalled": T0}
    # Ready flips back; Reconciling stays False although its reason and message changed
    assert stamps(s2) == {"Ready": T2, "Reconciling": T1, "Stalled": T0}
    assert by_type(s2)["Reconciling"] == ("False", "Reconciled")


def test_reason_change_alone_keeps_the_timestamp_but_takes_the_new_text() -> None:
    old = [
        {
            "type": "Ready",
            "status": "False",
            "reason": "A",
            "message": "a",
            "lastTransitionTime": T0,
        }
    ]
    new = [{"type": "Ready", "status": "False", "reason": "B", "message": "b"}]
    assert merge_conditions(old, new, T1) == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "B",
            "message": "b",
            "lastTransitionTime": T0,
        }
    ]


def test_merge_keeps_other_types_and_does_not_modify_its_inputs() -> None:
    old = [
        {"type": "Ready", "status": "True", "reason": "X", "lastTransitionTime": T0},
        {"type": "Custom", "status": "True", "reason": "Theirs", "lastTransitionTime": T0},
    ]
    new = [{"type": "Ready", "status": "True", "reason": "Y"}]
    old_copy = [dict(c) for c in old]
    new_copy = [dict(c) for c in new]
    merged = merge_conditions(old, new, T1)
    assert merged == [
        {"type": "Ready", "status": "True", "reason": "Y", "lastTransitionTime": T0},
        {"type": "Custom", "status": "True", "reason": "Theirs", "lastTransitionTime": T0},
    ]
    assert (old, new) == (old_copy, new_copy)


def test_an_old_condition_without_a_timestamp_gets_now() -> None:
    merged = merge_conditions(
        [{"type": "Ready", "status": "True"}], [{"type": "Ready", "status": "True"}], T1
    )
    assert merged[0]["lastTransitionTime"] == T1


# ---------------------------------------------------------------------------------------
# properties

POD_NAMES = [f"p{i}" for i in range(6)]
agent_st = st.builds(
    agent,
    st.sampled_from([f"{i:02d}" for i in range(10)]),
    st.one_of(st.none(), st.sampled_from([*POD_NAMES, "gone"])),
    state=st.sampled_from(AgentState),
    healthy=st.sampled_from([True, False, None]),
    status=st.sampled_from(["APPLIED", "APPLYING", "FAILED", "UNSET", None]),
    config_hash=st.sampled_from([DESIRED, OLD, ""]),
    version=st.sampled_from(["", "1.0", "1.1", "2.0"]),
)
world_st = st.tuples(
    st.lists(st.sampled_from(POD_NAMES), unique=True).map(lambda ns: [pod(n) for n in ns]),
    st.lists(agent_st, unique_by=lambda a: a.instance_uid),
    st.dictionaries(
        st.sampled_from([f"{i:02d}" for i in range(10)]), st.sampled_from([True, False, None])
    ),
    st.sampled_from([DESIRED, ""]),
    st.integers(min_value=0, max_value=5),
)


@settings(max_examples=300)
@given(world_st, st.randoms(use_true_random=False))
def test_summary_invariants(
    case: tuple[list[PodView], list[AgentView], dict[str, bool | None], str, int],
    rnd: random.Random,
) -> None:
    pods, agents, drift, desired, limit = case
    mapping = map_agents(pods, agents)
    health = summarize(FLEET, mapping, desired, drift, worst_limit=limit)
    live = [a for a in agents if a.live]
    assert health.agents_connected == len(live)
    assert health.healthy + health.unhealthy <= len(live) + health.agents_mapped
    configs = (
        health.config_applied + health.config_applying + health.config_failed
    ) + health.config_pending
    assert configs == (len(live) if desired else 0)
    assert sum(n for _, n in health.versions) == len(live)
    assert len(health.worst) <= limit
    severities = [SEVERITY[w.reason] for w in health.worst]
    assert severities == sorted(severities)
    assert len({w.instance_uid for w in health.worst}) == len(health.worst)
    # Ready means every pod has an agent that would pass its readiness gate
    if by_type(conditions(health, 1, 1))["Ready"][0] == "True":
        assert health.pods_without_agent == 0
        for uid in mapping.pod_of:
            assert agent_ready(mapping.agents[uid], desired)[0]
    # and the summary does not depend on input order
    shuffled_pods, shuffled_agents = pods[:], agents[:]
    rnd.shuffle(shuffled_pods)
    rnd.shuffle(shuffled_agents)
    again = summarize(
        FLEET, map_agents(shuffled_pods, shuffled_agents), desired, drift, worst_limit=limit
    )
    assert again == health


def _ready_status(conds: list[dict[str, Any]]) -> Mapping[str, str]:
    return {c["type"]: c["status"] for c in conds}


@settings(max_examples=200)
@given(world_st, st.integers(0, 3), st.integers(0, 3), st.booleans())
def test_conditions_are_kstatus_consistent(
    case: tuple[list[PodView], list[AgentView], dict[str, bool | None], str, int],
    observed: int,
    generation: int,
    valid: bool,
) -> None:
    pods, agents, drift, desired, _ = case
    health = summarize(FLEET, map_agents(pods, agents), desired, drift)
    status = _ready_status(
        conditions(health, observed, generation, None if valid else Why("InvalidConfig", "bad"))
    )
    assert sorted(status) == ["Ready", "Reconciling", "Stalled"]
    # never Ready while reconciling or stalled, never reconciling while stalled
    assert [status["Ready"], status["Reconciling"], status["Stalled"]].count("True") <= 1
    assert (status["Stalled"] == "True") is (not valid)
    if valid and observed != generation:
        assert status["Reconciling"] == "True"
