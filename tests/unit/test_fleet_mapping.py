"""Agents ↔ pods and pods ↔ fleets (fleet/mapping.py), as pure functions."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.fleet.mapping import (
    AgentAuth,
    Ambiguity,
    AuthMode,
    Claim,
    Duplicate,
    FleetSelector,
    LabelRequirement,
    Operator,
    Overlap,
    Rule,
    SelectorError,
    Trust,
    assign_fleets,
    map_agents,
)
from opamp_operator.fleet.views import AgentView, PodView
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.session import AgentState

UID_A = "0190a000-0000-7000-8000-00000000000a"
UID_B = "0190a000-0000-7000-8000-00000000000b"
UID_C = "0190a000-0000-7000-8000-00000000000c"
UID_D = "0190a000-0000-7000-8000-00000000000d"


def pod(
    name: str,
    namespace: str = "default",
    *,
    uid: str | None = None,
    ip: str = "",
    labels: Mapping[str, str] | None = None,
) -> PodView:
    return PodView(
        namespace=namespace,
        name=name,
        uid=f"uid-{namespace}-{name}" if uid is None else uid,
        ip=ip,
        labels=dict(labels or {}),
    )


def agent(
    uid: str,
    attrs: Mapping[str, str] | None = None,
    *,
    peer_ip: str = "",
    state: AgentState = AgentState.CONNECTED,
    connected_at: float = 0.0,
    identity: AgentIdentity | None = None,
) -> AgentView:
    return AgentView(
        instance_uid=uid,
        attributes=dict(attrs or {}),
        peer_ip=peer_ip,
        state=state,
        connected_at=connected_at,
        identity=identity or AgentIdentity(),
    )


# ---------------------------------------------------------------------------------------
# each rule


def test_maps_by_pod_uid() -> None:
    result = map_agents([pod("a"), pod("b")], [agent(UID_A, {"k8s.pod.uid": "uid-default-b"})])
    assert result.pod_of == {UID_A: "default/b"}
    assert result.agent_of == {"default/b": UID_A}
    assert result.rule_of(UID_A) is Rule.POD_UID


def test_maps_by_namespace_and_name() -> None:
    pods = [pod("a", "ns1"), pod("a", "ns2")]
    result = map_agents(pods, [agent(UID_A, {"k8s.namespace.name": "ns2", "k8s.pod.name": "a"})])
    assert result.pod_of == {UID_A: "ns2/a"}
    assert result.rule_of(UID_A) is Rule.NAMESPACE_NAME


@pytest.mark.parametrize(
    "attrs",
    [
        {"k8s.namespace.name": "ns1"},
        {"k8s.pod.name": "a"},
        {"k8s.namespace.name": "ns1", "k8s.pod.name": ""},
    ],
)
def test_namespace_and_name_need_both(attrs: dict[str, str]) -> None:
    result = map_agents([pod("a", "ns1")], [agent(UID_A, attrs)])
    assert result.pod_of == {}
    assert result.agents_without_pod == (UID_A,)


def test_maps_by_host_name_when_one_pod_has_that_name() -> None:
    result = map_agents([pod("a", "ns1"), pod("b", "ns2")], [agent(UID_A, {"host.name": "b"})])
    assert result.pod_of == {UID_A: "ns2/b"}
    assert result.rule_of(UID_A) is Rule.HOST_NAME


def test_host_name_shared_by_two_pods_is_ambiguous_and_recorded() -> None:
    result = map_agents(
        [pod("col-0", "ns1"), pod("col-0", "ns2"), pod("other")],
        [agent(UID_A, {"host.name": "col-0"})],
    )
    assert result.pod_of == {}
    assert result.agents_without_pod == (UID_A,)
    assert result.ambiguities == (
        Ambiguity(UID_A, Rule.HOST_NAME, "col-0", ("ns1/col-0", "ns2/col-0")),
    )


def test_ambiguous_host_name_falls_through_to_source_ip() -> None:
    result = map_agents(
        [pod("col-0", "ns1", ip="10.0.0.1"), pod("col-0", "ns2", ip="10.0.0.2")],
        [agent(UID_A, {"host.name": "col-0"}, peer_ip="10.0.0.2")],
    )
    assert result.pod_of == {UID_A: "ns2/col-0"}
    assert result.rule_of(UID_A) is Rule.SOURCE_IP
    assert [a.rule for a in result.ambiguities] == [Rule.HOST_NAME]


def test_maps_by_source_ip() -> None:
    result = map_agents(
        [pod("a", ip="10.0.0.1"), pod("b", ip="10.0.0.2")], [agent(UID_A, peer_ip="10.0.0.2")]
    )
    assert result.pod_of == {UID_A: "default/b"}
    assert result.rule_of(UID_A) is Rule.SOURCE_IP


def test_source_ip_shared_by_two_pods_is_ambiguous() -> None:
    # hostNetwork pods on one node share the node's IP
    result = map_agents(
        [pod("a", ip="192.168.1.5"), pod("b", ip="192.168.1.5")],
        [agent(UID_A, peer_ip="192.168.1.5")],
    )
    assert result.pod_of == {}
    assert result.ambiguities == (
        Ambiguity(UID_A, Rule.SOURCE_IP, "192.168.1.5", ("default/a", "default/b")),
    )


def test_empty_values_never_match() -> None:
    """A pod without an IP or uid is not matched by an agent without a peer or uid."""
    result = map_agents(
        [pod("a", uid="", ip="")],
        [agent(UID_A, {"k8s.pod.uid": "", "host.name": ""}, peer_ip="")],
    )
    assert result.pod_of == {}
    assert result.ambiguities == ()


# ---------------------------------------------------------------------------------------
# precedence


def test_pod_uid_wins_even_when_the_name_points_elsewhere() -> None:
    pods = [
        pod("by-uid", ip="10.0.0.1"),
        pod("by-name", ip="10.0.0.2"),
        pod("by-host", "other", ip="10.0.0.3"),
        pod("by-ip", ip="10.0.0.4"),
    ]
    attrs = {
        "k8s.pod.uid": "uid-default-by-uid",
        "k8s.namespace.name": "default",
        "k8s.pod.name": "by-name",
        "host.name": "by-host",
    }
    result = map_agents(pods, [agent(UID_A, attrs, peer_ip="10.0.0.4")])
    assert result.pod_of == {UID_A: "default/by-uid"}
    assert result.rule_of(UID_A) is Rule.POD_UID


@pytest.mark.parametrize(
    ("drop", "expected_pod", "expected_rule"),
    [
        ((), "default/by-uid", Rule.POD_UID),
        (("k8s.pod.uid",), "default/by-name", Rule.NAMESPACE_NAME),
        (("k8s.pod.uid", "k8s.pod.name"), "other/by-host", Rule.HOST_NAME),
        (("k8s.pod.uid", "k8s.pod.name", "host.name"), "default/by-ip", Rule.SOURCE_IP),
    ],
)
def test_rules_are_tried_in_order(
    drop: tuple[str, ...], expected_pod: str, expected_rule: Rule
) -> None:
    pods = [
        pod("by-uid", ip="10.0.0.1"),
        pod("by-name", ip="10.0.0.2"),
        pod("by-host", "other", ip="10.0.0.3"),
        pod("by-ip", ip="10.0.0.4"),
    ]
    attrs = {
        "k8s.pod.uid": "uid-default-by-uid",
        "k8s.namespace.name": "default",
        "k8s.pod.name": "by-name",
        "host.name": "by-host",
    }
    for key in drop:
        del attrs[key]
    result = map_agents(pods, [agent(UID_A, attrs, peer_ip="10.0.0.4")])
    assert result.pod_of == {UID_A: expected_pod}
    assert result.rule_of(UID_A) is expected_rule


def test_pod_uid_of_no_known_pod_falls_through_to_the_next_rule() -> None:
    attrs = {"k8s.pod.uid": "gone", "k8s.namespace.name": "default", "k8s.pod.name": "a"}
    result = map_agents([pod("a")], [agent(UID_A, attrs)])
    assert result.rule_of(UID_A) is Rule.NAMESPACE_NAME


# ---------------------------------------------------------------------------------------
# duplicates and orphans


def test_two_live_agents_on_one_pod_the_earliest_connection_keeps_it() -> None:
    """Not the larger uid: the agent picks its uid, so `ffff...` would always win."""
    claim = {"k8s.pod.uid": "uid-default-a"}
    first, later = agent(UID_B, claim, connected_at=1.0), agent(UID_A, claim, connected_at=2.0)
    result = map_agents([pod("a")], [later, first])
    assert result.pod_of == {UID_B: "default/a"}
    assert result.duplicates == (Duplicate("default/a", UID_B, (UID_A,)),)
    assert result.conflicting_agents == (UID_A,)
    # the loser keeps its claim (so it can be shown) but is not an orphan
    assert result.claims[UID_A].pod == "default/a"
    assert result.rule_of(UID_A) is None
    assert result.agents_without_pod == ()
    # Connected at the same moment: the smaller uid, only so the answer is stable.
    tied = map_agents([pod("a")], [agent(UID_B, claim), agent(UID_A, claim)])
    assert tied.pod_of == {UID_A: "default/a"}


def test_a_pod_bound_credential_beats_any_claim_and_holds_only_its_pod() -> None:
    bound = AgentIdentity(service_account="default/sa", pod="default/a", pod_uid="uid-default-a")
    spoof = agent(UID_C.replace("c", "f"), {"k8s.pod.uid": "uid-default-a"}, connected_at=0.0)
    real = agent(UID_A, {}, connected_at=9.0, identity=bound)
    result = map_agents([pod("a"), pod("b")], [spoof, real])
    assert result.pod_of == {UID_A: "default/a"}
    assert result.claims[UID_A] == Claim(UID_A, "default/a", Rule.CREDENTIAL, Trust.POD)
    # The same credential reporting another pod's uid is refused that pod.
    liar = agent(UID_B, {"k8s.pod.uid": "uid-default-b"}, identity=bound)
    lied = map_agents([pod("a"), pod("b")], [liar])
    assert lied.pod_of == {UID_B: "default/a"}
    other = AgentIdentity(service_account="default/sa", pod="default/b", pod_uid="uid-default-b")
    refused = map_agents(
        [pod("a")], [agent(UID_B, {"k8s.pod.uid": "uid-default-a"}, identity=other)]
    )
    assert refused.pod_of == {}
    assert refused.agents_without_pod == (UID_B,)


@pytest.mark.parametrize("state", [AgentState.DISCONNECTED, AgentState.STALE])
def test_a_live_agent_beats_a_gone_one_with_a_larger_uid(state: AgentState) -> None:
    claim = {"k8s.pod.uid": "uid-default-a"}
    old = agent(UID_C, claim, state=state)
    result = map_agents([pod("a")], [old, agent(UID_A, claim)])
    assert result.pod_of == {UID_A: "default/a"}
    assert result.duplicates == (Duplicate("default/a", UID_A, (UID_C,)),)


def test_duplicates_are_reported_whatever_rule_each_used() -> None:
    result = map_agents(
        [pod("a", ip="10.0.0.1")],
        [
            agent(UID_A, {"k8s.pod.uid": "uid-default-a"}, connected_at=3.0),
            agent(UID_B, {"host.name": "a"}, connected_at=2.0),
            agent(UID_C, peer_ip="10.0.0.1", connected_at=1.0),
        ],
    )
    assert result.duplicates == (Duplicate("default/a", UID_C, (UID_A, UID_B)),)
    assert [result.claims[u].rule for u in (UID_A, UID_B, UID_C)] == [
        Rule.POD_UID,
        Rule.HOST_NAME,
        Rule.SOURCE_IP,
    ]


def test_orphans_on_both_sides_are_reported() -> None:
    result = map_agents(
        [pod("a"), pod("b"), pod("c")],
        [agent(UID_A, {"k8s.pod.uid": "uid-default-b"}), agent(UID_B, {"host.name": "zzz"})],
    )
    assert result.pods_without_agent == ("default/a", "default/c")
    assert result.agents_without_pod == (UID_B,)


@pytest.mark.parametrize(
    ("pods", "agents", "message"),
    [
        ([pod("a"), pod("a", uid="x")], [], "two pods share the key 'default/a'"),
        ([], [agent(UID_A), agent(UID_A)], f"two agents share the key '{UID_A}'"),
    ],
)
def test_duplicate_keys_in_the_input_are_refused(
    pods: list[PodView], agents: list[AgentView], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        map_agents(pods, agents)


def test_restrict_keeps_one_side_of_the_world() -> None:
    result = map_agents(
        [pod("a"), pod("b"), pod("c")],
        [
            agent(UID_A, {"k8s.pod.uid": "uid-default-a"}, connected_at=2.0),
            agent(UID_B, {"k8s.pod.uid": "uid-default-a"}, connected_at=1.0),
            agent(UID_C, {"k8s.pod.uid": "uid-default-b"}),
        ],
    )
    part = result.restrict(["default/a", "default/c"], [UID_A, UID_B])
    assert list(part.pods) == ["default/a", "default/c"]
    assert list(part.agents) == [UID_A, UID_B]
    assert part.pod_of == {UID_B: "default/a"}
    assert part.pods_without_agent == ("default/c",)
    assert part.duplicates == (Duplicate("default/a", UID_B, (UID_A,)),)
    # a kept pod whose agent is not kept has no agent in this part
    assert result.restrict(["default/b"], []).pods_without_agent == ("default/b",)
    other = result.restrict(["default/b"], [UID_C])
    assert other.duplicates == ()
    assert other.pod_of == {UID_C: "default/b"}


# ---------------------------------------------------------------------------------------
# label selectors


@pytest.mark.parametrize(
    ("requirement", "labels", "expected"),
    [
        (LabelRequirement("app", "In", ("a", "b")), {"app": "b"}, True),
        (LabelRequirement("app", "In", ("a", "b")), {"app": "c"}, False),
        (LabelRequirement("app", "In", ("a",)), {}, False),
        (LabelRequirement("app", "NotIn", ("a",)), {"app": "b"}, True),
        (LabelRequirement("app", "NotIn", ("a",)), {"app": "a"}, False),
        (LabelRequirement("app", "NotIn", ("a",)), {}, True),  # as Kubernetes: absent key
        (LabelRequirement("app", "Exists"), {"app": ""}, True),
        (LabelRequirement("app", "Exists"), {"other": "x"}, False),
        (LabelRequirement("app", "DoesNotExist"), {"other": "x"}, True),
        (LabelRequirement("app", "DoesNotExist"), {"app": ""}, False),
    ],
)
def test_label_requirement_operators(
    requirement: LabelRequirement, labels: dict[str, str], expected: bool
) -> None:
    assert requirement.matches(labels) is expected


def test_requirement_operator_is_normalised_to_the_enum() -> None:
    assert LabelRequirement("k", "Exists").operator is Operator.EXISTS


@pytest.mark.parametrize(
    ("key", "operator", "values", "message"),
    [
        ("app", "Equals", ("a",), "operator 'Equals' is not one of In, NotIn"),
        ("app", "In", (), "In needs at least one value"),
        ("app", "NotIn", (), "NotIn needs at least one value"),
        ("app", "Exists", ("a",), "Exists takes no values"),
        ("app", "DoesNotExist", ("a",), "DoesNotExist takes no values"),
        ("", "Exists", (), "needs a key"),
    ],
)
def test_invalid_requirements_are_refused(
    key: str, operator: str, values: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SelectorError, match=message):
        LabelRequirement(key, operator, values)


def test_fleet_selects_by_namespace_labels_and_expressions() -> None:
    fleet = FleetSelector(
        "obs",
        "gw",
        0.0,
        {"app": "otel"},
        (
            LabelRequirement("tier", "In", ("gw", "edge")),
            LabelRequirement("canary", "DoesNotExist"),
        ),
    )
    assert fleet.selects(pod("p", "obs", labels={"app": "otel", "tier": "gw"}))
    assert not fleet.selects(pod("p", "other", labels={"app": "otel", "tier": "gw"}))
    assert not fleet.selects(pod("p", "obs", labels={"app": "x", "tier": "gw"}))
    assert not fleet.selects(pod("p", "obs", labels={"tier": "gw"}))
    assert not fleet.selects(pod("p", "obs", labels={"app": "otel", "tier": "db"}))
    assert not fleet.selects(pod("p", "obs", labels={"app": "otel", "tier": "gw", "canary": "1"}))


def test_empty_selector_selects_every_pod_of_its_namespace_only() -> None:
    fleet = FleetSelector("obs", "all", 0.0)
    assert fleet.selects(pod("p", "obs", labels={"anything": "x"}))
    assert fleet.selects(pod("q", "obs"))
    assert not fleet.selects(pod("p", "default"))


def test_from_label_selector_reads_the_api_shape() -> None:
    fleet = FleetSelector.from_label_selector(
        "obs",
        "gw",
        "2024-05-01T10:00:00Z",
        {
            "matchLabels": {"app": "otel"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["db"]},
                {"key": "otel", "operator": "Exists"},
            ],
        },
    )
    assert fleet.match_labels == {"app": "otel"}
    assert fleet.match_expressions == (
        LabelRequirement("tier", Operator.NOT_IN, ("db",)),
        LabelRequirement("otel", Operator.EXISTS),
    )
    assert fleet.selects(pod("p", "obs", labels={"app": "otel", "otel": ""}))
    assert not fleet.selects(pod("p", "obs", labels={"app": "otel", "otel": "", "tier": "db"}))


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"matchLabels": ["app"]}, "matchLabels must map"),
        ({"matchLabels": {"app": 1}}, "matchLabels must map"),
        ({"matchExpressions": {"key": "a"}}, "matchExpressions must be a list"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}, "values must"),
        ({"matchExpressions": [{"key": "a", "operator": "Has"}]}, "operator 'Has'"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "needs a key"),
    ],
)
def test_from_label_selector_refuses_bad_shapes(selector: dict[str, object], message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        FleetSelector.from_label_selector("ns", "f", 0.0, selector)


def test_creation_timestamp_as_text_or_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    # a local zone far from UTC, so reading a zoneless timestamp as local time would show
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        assert FleetSelector("a", "b", "1970-01-01T00:01:40").priority[0] == 100.0
    finally:
        monkeypatch.undo()
        time.tzset()
    assert FleetSelector("a", "b", "1970-01-01T00:01:40Z").priority == (100.0, "a", "b")
    assert FleetSelector("a", "b", "1970-01-01T01:01:40+01:00").priority[0] == 100.0
    assert FleetSelector("a", "b", 100).priority[0] == 100.0
    with pytest.raises(SelectorError, match="not RFC 3339"):
        FleetSelector("a", "b", "yesterday")


# ---------------------------------------------------------------------------------------
# fleets


OTEL = {"app": "otel"}


def test_overlapping_fleets_the_oldest_gets_the_pod_and_both_report_it() -> None:
    newer = FleetSelector("obs", "newer", "2024-06-01T00:00:00Z", OTEL)
    older = FleetSelector("obs", "older", "2024-01-01T00:00:00Z", {})
    pods = [pod("shared", "obs", labels=OTEL), pod("plain", "obs")]
    agents = [agent(UID_A, {"k8s.pod.uid": "uid-obs-shared"})]
    result = assign_fleets([newer, older], pods, agents)
    assert result.fleets == ("obs/older", "obs/newer")
    assert result.fleet_of_pod == {"obs/plain": "obs/older", "obs/shared": "obs/older"}
    assert result.fleet_of_agent == {UID_A: "obs/older"}
    overlap = Overlap("obs/shared", "obs/older", ("obs/older", "obs/newer"), UID_A)
    assert result.overlaps == {"obs/older": (overlap,), "obs/newer": (overlap,)}
    assert result.pods_of("obs/newer") == ()
    assert result.agents_of("obs/newer") == ()


def test_fleets_created_together_are_ordered_by_namespace_then_name() -> None:
    when = "2024-01-01T00:00:00Z"
    fleets = [FleetSelector("obs", "b", when), FleetSelector("obs", "a", when)]
    result = assign_fleets(fleets, [pod("p", "obs")], [])
    assert result.fleet_of_pod == {"obs/p": "obs/a"}
    assert result.fleets == ("obs/a", "obs/b")


def test_fleets_select_only_in_their_namespace() -> None:
    fleets = [FleetSelector("ns1", "f", 0.0), FleetSelector("ns2", "f", 1.0)]
    result = assign_fleets(fleets, [pod("p", "ns1"), pod("p", "ns2")], [])
    assert result.fleet_of_pod == {"ns1/p": "ns1/f", "ns2/p": "ns2/f"}
    assert result.overlaps == {"ns1/f": (), "ns2/f": ()}


def test_agents_without_a_fleet_are_unassigned() -> None:
    fleets = [FleetSelector("obs", "f", 0.0, OTEL)]
    pods = [pod("in", "obs", labels=OTEL), pod("out", "obs")]
    agents = [
        agent(UID_A, {"k8s.pod.uid": "uid-obs-in"}),
        agent(UID_B, {"k8s.pod.uid": "uid-obs-out"}),
        agent(UID_C),
    ]
    result = assign_fleets(fleets, pods, agents)
    assert result.fleet_of_agent == {UID_A: "obs/f"}
    assert result.unassigned_agents == (UID_B, UID_C)


def test_an_agent_of_an_unselected_pod_is_not_taken_by_a_weaker_rule() -> None:
    """Mapping runs over every pod given, so a pod-uid match outside the fleets wins over
    host.name pointing at a selected pod of the same name elsewhere."""
    fleets = [FleetSelector("obs", "f", 0.0, OTEL)]
    pods = [pod("col-0", "obs", labels=OTEL), pod("col-0", "team")]
    agents = [agent(UID_A, {"k8s.pod.uid": "uid-team-col-0", "host.name": "col-0"})]
    result = assign_fleets(fleets, pods, agents)
    assert result.mapping.pod_of == {UID_A: "team/col-0"}
    assert result.fleet_of_agent == {}
    assert result.unassigned_agents == (UID_A,)


def test_a_duplicate_agent_goes_with_the_pod_it_claimed() -> None:
    fleets = [FleetSelector("obs", "f", 0.0)]
    claim = {"k8s.pod.uid": "uid-obs-p"}
    early, late = agent(UID_B, claim, connected_at=1.0), agent(UID_A, claim, connected_at=2.0)
    result = assign_fleets(fleets, [pod("p", "obs")], [late, early])
    assert result.fleet_of_agent == {UID_A: "obs/f", UID_B: "obs/f"}
    part = result.mapping_for("obs/f")
    assert part.pod_of == {UID_B: "obs/p"}
    assert part.conflicting_agents == (UID_A,)


def test_mapping_for_holds_only_that_fleets_share() -> None:
    fleets = [FleetSelector("a", "f", 0.0), FleetSelector("b", "f", 0.0)]
    pods = [pod("p", "a"), pod("q", "a"), pod("p", "b")]
    agents = [
        agent(UID_A, {"k8s.pod.uid": "uid-a-p"}),
        agent(UID_B, {"k8s.pod.uid": "uid-b-p"}),
    ]
    result = assign_fleets(fleets, pods, agents)
    part = result.mapping_for("a/f")
    assert list(part.pods) == ["a/p", "a/q"]
    assert list(part.agents) == [UID_A]
    assert part.pods_without_agent == ("a/q",)
    assert list(result.mapping_for("b/f").agents) == [UID_B]


def test_a_fleet_token_decides_the_fleet_and_is_required_where_configured() -> None:
    locked = FleetSelector("obs", "locked", 0.0, OTEL, auth=AgentAuth(AuthMode.TOKEN))
    open_ = FleetSelector("team", "open", 1.0)
    pods = [pod("in", "obs", labels=OTEL), pod("t", "team")]
    token = AgentIdentity(fleet="obs/locked")
    with_token = agent(UID_A, {"k8s.pod.uid": "uid-obs-in"}, identity=token, connected_at=9.0)
    # Anonymous, connected first, with a uid that would have won by size: refused.
    without = agent("ffffffff-ffff-7fff-bfff-ffffffffffff", {"k8s.pod.uid": "uid-obs-in"})
    # A token puts its agent in its fleet, but holds no pod of another fleet.
    elsewhere = agent(UID_C, {"k8s.pod.uid": "uid-team-t"}, identity=token)
    result = assign_fleets([locked, open_], pods, [with_token, without, elsewhere])
    assert result.fleet_of_agent == {UID_A: "obs/locked", UID_C: "obs/locked"}
    assert result.unauthenticated == {"obs/locked": ("ffffffff-ffff-7fff-bfff-ffffffffffff",)}
    assert result.mapping.pod_of == {UID_A: "obs/in"}
    assert "ffffffff-ffff-7fff-bfff-ffffffffffff" in result.unassigned_agents
    part = result.mapping_for("obs/locked")
    assert set(part.agents) == {UID_A, UID_C}
    assert part.pod_of == {UID_A: "obs/in"}
    # A token of a fleet that no longer exists claims nothing either.
    stale = agent(UID_D, {"k8s.pod.uid": "uid-team-t"}, identity=AgentIdentity(fleet="obs/gone"))
    assert assign_fleets([open_], pods, [stale]).unauthenticated == {"team/open": (UID_D,)}
    # The open fleet's own agents hold their pods on their word: unverified.
    mine = agent(UID_B, {"k8s.pod.uid": "uid-team-t"})
    assert assign_fleets([open_], pods, [mine]).unverified == {"team/open": (UID_B,)}


@pytest.mark.parametrize(
    ("auth", "identity", "trust"),
    [
        (AgentAuth(), AgentIdentity(), Trust.CLAIMED),
        (AgentAuth(), AgentIdentity(fleet="ns/f"), Trust.FLEET),
        (AgentAuth(), AgentIdentity(fleet="ns/other"), None),
        (AgentAuth(), AgentIdentity(certificate=("agent-1",)), Trust.FLEET),
        (AgentAuth(AuthMode.TOKEN), AgentIdentity(), None),
        (AgentAuth(AuthMode.TOKEN), AgentIdentity(certificate=("agent-1",)), None),
        (AgentAuth(AuthMode.TOKEN), AgentIdentity(fleet="ns/f"), Trust.FLEET),
        (AgentAuth(AuthMode.CLIENT_CERTIFICATE, frozenset({"agent-1"})), AgentIdentity(), None),
        (
            AgentAuth(AuthMode.CLIENT_CERTIFICATE, frozenset({"agent-1"})),
            AgentIdentity(certificate=("x", "agent-1")),
            Trust.FLEET,
        ),
        (
            AgentAuth(AuthMode.CLIENT_CERTIFICATE, frozenset({"agent-1"})),
            AgentIdentity(certificate=("agent-2",)),
            None,
        ),
        (AgentAuth(AuthMode.SERVICE_ACCOUNT_TOKEN), AgentIdentity(fleet="ns/f"), None),
        (
            AgentAuth(AuthMode.SERVICE_ACCOUNT_TOKEN),
            AgentIdentity(service_account="ns/sa", pod="ns/p", pod_uid="uid-ns-p"),
            Trust.POD,
        ),
        (
            AgentAuth(AuthMode.SERVICE_ACCOUNT_TOKEN, frozenset({"collector"})),
            AgentIdentity(service_account="ns/sa", pod="ns/p", pod_uid="uid-ns-p"),
            None,
        ),
        (
            AgentAuth(AuthMode.SERVICE_ACCOUNT_TOKEN, frozenset({"collector"})),
            AgentIdentity(service_account="ns/collector", pod="ns/p", pod_uid="uid-ns-p"),
            Trust.POD,
        ),
        (
            AgentAuth(AuthMode.SERVICE_ACCOUNT_TOKEN),
            AgentIdentity(service_account="other/sa", pod="ns/p", pod_uid="uid-ns-p"),
            None,
        ),
        (
            AgentAuth(AuthMode.SERVICE_ACCOUNT_TOKEN),
            AgentIdentity(service_account="ns/sa", pod="ns/q", pod_uid="uid-ns-q"),
            None,
        ),
        (
            AgentAuth(AuthMode.TOKEN),
            AgentIdentity(service_account="ns/sa", pod_uid="uid-ns-p"),
            None,
        ),
        (AgentAuth(), AgentIdentity(service_account="ns/s", pod_uid="uid-ns-p"), Trust.POD),
    ],
)
def test_what_each_mode_admits(
    auth: AgentAuth, identity: AgentIdentity, trust: Trust | None
) -> None:
    fleet = FleetSelector("ns", "f", 0.0, auth=auth)
    assert fleet.admits(agent(UID_A, identity=identity), pod("p", "ns")) == trust


def test_duplicate_fleet_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="two fleets share the key 'ns/f'"):
        assign_fleets([FleetSelector("ns", "f", 0.0), FleetSelector("ns", "f", 1.0)], [], [])


# ---------------------------------------------------------------------------------------
# properties

NAMESPACES = ["ns1", "ns2"]
NAMES = ["p0", "p1", "p2", "p3"]
IPS = ["", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
LABEL_KEYS = ["app", "tier"]
LABEL_VALUES = ["a", "b"]

labels_st = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[PodView], list[AgentView]]:
    keys = draw(
        st.lists(st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(NAMES)), unique=True)
    )
    pods = [
        PodView(
            namespace=ns,
            name=name,
            uid=draw(st.sampled_from(["", "u0", "u1", "u2", f"uid-{ns}-{name}"])),
            ip=draw(st.sampled_from(IPS)),
            labels=draw(labels_st),
        )
        for ns, name in keys
    ]
    uids = draw(st.lists(st.sampled_from([f"{i:02d}" for i in range(12)]), unique=True))
    attr_st = st.fixed_dictionaries(
        {},
        optional={
            "k8s.pod.uid": st.sampled_from(["u0", "u1", "u2", "uid-ns1-p0", "none"]),
            "k8s.namespace.name": st.sampled_from(NAMESPACES),
            "k8s.pod.name": st.sampled_from(NAMES),
            "host.name": st.sampled_from([*NAMES, "elsewhere"]),
        },
    )
    agents = [
        AgentView(
            instance_uid=uid,
            attributes=draw(attr_st),
            peer_ip=draw(st.sampled_from(IPS)),
            state=draw(st.sampled_from(AgentState)),
        )
        for uid in uids
    ]
    return pods, agents


def _evidence(rule: Rule, agent: AgentView, pod: PodView) -> bool:
    attrs = agent.attributes
    if rule is Rule.POD_UID:
        return attrs.get("k8s.pod.uid") == pod.uid != ""
    if rule is Rule.NAMESPACE_NAME:
        return (attrs.get("k8s.namespace.name"), attrs.get("k8s.pod.name")) == (
            pod.namespace,
            pod.name,
        )
    if rule is Rule.HOST_NAME:
        return attrs.get("host.name") == pod.name
    return agent.peer_ip == pod.ip != ""


@settings(max_examples=300)
@given(worlds())
def test_mapping_is_one_to_one_and_partitions_the_agents(
    world: tuple[list[PodView], list[AgentView]],
) -> None:
    pods, agents = world
    result = map_agents(pods, agents)
    # each pod to at most one agent and back: pod_of and agent_of are inverse
    assert {p: u for u, p in result.pod_of.items()} == dict(result.agent_of)
    assert len(set(result.pod_of.values())) == len(result.pod_of)
    # every agent is exactly one of: mapped, a conflict loser, an orphan
    losers = list(result.conflicting_agents)
    groups = [*result.pod_of, *losers, *result.agents_without_pod]
    assert sorted(groups) == sorted(a.instance_uid for a in agents)
    assert set(result.pods_without_agent) == {p.key for p in pods} - set(result.agent_of)
    by_key = {p.key: p for p in pods}
    by_uid = {a.instance_uid: a for a in agents}
    for uid, claim in result.claims.items():
        assert _evidence(claim.rule, by_uid[uid], by_key[claim.pod])
        # no pod other than the claimed one carries the same evidence for that rule
        assert [p.key for p in pods if _evidence(claim.rule, by_uid[uid], p)] == [claim.pod]
    for dup in result.duplicates:
        contenders = [dup.winner, *dup.losers]
        best = min(
            contenders,
            key=lambda u: (
                -result.claims[u].trust,
                not by_uid[u].live,
                by_uid[u].connected_at,
                u,
            ),
        )
        assert dup.winner == best


@settings(max_examples=200)
@given(worlds(), st.randoms(use_true_random=False))
def test_mapping_does_not_depend_on_input_order(
    world: tuple[list[PodView], list[AgentView]], rnd: random.Random
) -> None:
    pods, agents = world
    shuffled_pods, shuffled_agents = pods[:], agents[:]
    rnd.shuffle(shuffled_pods)
    rnd.shuffle(shuffled_agents)
    assert map_agents(shuffled_pods, shuffled_agents) == map_agents(pods, agents)


requirement_st = st.one_of(
    st.builds(
        LabelRequirement,
        st.sampled_from(LABEL_KEYS),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(LABEL_VALUES), min_size=1).map(tuple),
    ),
    st.builds(
        LabelRequirement, st.sampled_from(LABEL_KEYS), st.sampled_from(["Exists", "DoesNotExist"])
    ),
)
fleets_st = st.lists(
    st.builds(
        FleetSelector,
        st.sampled_from(NAMESPACES),
        st.sampled_from(["f0", "f1", "f2"]),
        st.sampled_from([0.0, 1.0, "1970-01-01T00:00:01Z"]),
        labels_st,
        st.lists(requirement_st, max_size=2).map(tuple),
    ),
    unique_by=lambda f: f.key,
)


@settings(max_examples=300)
@given(fleets_st, worlds(), st.randoms(use_true_random=False))
def test_each_pod_and_agent_goes_to_at_most_one_fleet_the_oldest_selecting(
    fleets: list[FleetSelector],
    world: tuple[list[PodView], list[AgentView]],
    rnd: random.Random,
) -> None:
    pods, agents = world
    result = assign_fleets(fleets, pods, agents)
    by_key = {f.key: f for f in fleets}
    for p in pods:
        selecting = sorted((f for f in fleets if f.selects(p)), key=lambda f: f.priority)
        if not selecting:
            assert p.key not in result.fleet_of_pod
            continue
        assert result.fleet_of_pod[p.key] == selecting[0].key
        reported = [o for f in selecting for o in result.overlaps[f.key] if o.pod == p.key]
        assert len(reported) == (len(selecting) if len(selecting) > 1 else 0)
    for uid, fleet in result.fleet_of_agent.items():
        claimed = result.mapping.claims[uid].pod
        assert by_key[fleet].selects(result.mapping.pods[claimed])
        assert result.fleet_of_pod[claimed] == fleet
    # every agent is assigned to exactly one fleet or to none
    assert sorted([*result.fleet_of_agent, *result.unassigned_agents]) == sorted(
        a.instance_uid for a in agents
    )
    shuffled = fleets[:]
    rnd.shuffle(shuffled)
    assert assign_fleets(shuffled, pods[::-1], agents[::-1]) == result
