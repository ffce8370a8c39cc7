"""The sans-I/O protocol core against the rules of the OpAMP spec, without any I/O."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.fleet.views import agent_view
from opamp_operator.opamp import attributes, ids
from opamp_operator.opamp.configs import ConfigFile, RemoteConfig, files_hash
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import (
    SERVER_CAPABILITIES,
    AgentLimits,
    AgentRecord,
    AgentState,
    CoreSettings,
    EventKind,
    Refusal,
    ServerCore,
    Transport,
    component_count,
    message_kind,
)

UID = bytes(range(1, 17))
OTHER = bytes(range(101, 117))
ACCEPTS = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_AcceptsRemoteConfig
    | pb.AgentCapabilities_ReportsRemoteConfig
    | pb.AgentCapabilities_ReportsEffectiveConfig
    | pb.AgentCapabilities_ReportsHeartbeat
)


def first(uid: bytes = UID, seq: int = 0, caps: int = ACCEPTS, **attrs: str) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=caps)
    msg.agent_description.identifying_attributes.extend(
        attributes.from_dict({"service.name": "otelcol", **attrs})
    )
    return msg


def beat(uid: bytes = UID, seq: int = 1) -> pb.AgentToServer:
    return pb.AgentToServer(instance_uid=uid, sequence_num=seq)


@dataclass
class Fixed:
    config: RemoteConfig | None
    heartbeat: int | None = None

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        return self.config

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        return self.heartbeat

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        return None


def test_first_reply_carries_capabilities_and_echoes_uid() -> None:
    core = ServerCore()
    reply = core.receive(first(), now=0.0)
    assert reply.message.capabilities == SERVER_CAPABILITIES
    assert reply.message.capabilities & pb.ServerCapabilities_AcceptsStatus
    assert reply.message.instance_uid == UID
    assert not reply.message.flags & pb.ServerToAgentFlags_ReportFullState
    assert [e.kind for e in reply.events] == [EventKind.CONNECTED, EventKind.UPDATED]
    assert core.agents[UID].transport is Transport.HTTP


def test_partial_reports_merge_into_full_state() -> None:
    core = ServerCore()
    core.receive(first(), now=0.0)
    health = pb.AgentToServer(instance_uid=UID, sequence_num=1)
    health.health.healthy = False
    health.health.last_error = "exporter down"
    reply = core.receive(health, now=1.0)
    agent = core.agents[UID]
    assert agent.health is not None
    assert agent.health.last_error == "exporter down"
    assert agent.description is not None  # kept from the first message
    assert attributes.to_dict(agent.description.identifying_attributes) == {
        "service.name": "otelcol"
    }
    assert [(e.kind, e.changed) for e in reply.events] == [
        (EventKind.UPDATED, frozenset({"health"}))
    ]
    # An unchanged resend is not a change.
    same = pb.AgentToServer(instance_uid=UID, sequence_num=2)
    same.health.CopyFrom(agent.health)
    assert core.receive(same, now=2.0).events == []


def test_sequence_gap_asks_for_full_state() -> None:
    core = ServerCore()
    core.receive(first(), now=0.0)
    assert not core.receive(beat(seq=1), now=1.0).message.flags
    gap = core.receive(beat(seq=3), now=2.0)
    assert gap.message.flags & pb.ServerToAgentFlags_ReportFullState
    assert not core.receive(beat(seq=4), now=3.0).message.flags


def test_unknown_agent_without_description_is_asked_for_full_state() -> None:
    """The server restarted; the agent only heartbeats. It must resend everything."""
    reply = ServerCore().receive(beat(seq=57), now=0.0)
    assert reply.message.flags & pb.ServerToAgentFlags_ReportFullState


@pytest.mark.parametrize("bad", [b"", b"short", bytes(16), bytes(17)])
def test_invalid_uid_gets_a_new_uuid7(bad: bytes) -> None:
    core = ServerCore()
    reply = core.receive(first(uid=bad), now=0.0)
    new = reply.message.agent_identification.new_instance_uid
    assert len(new) == 16
    assert new[6] >> 4 == 7  # version 7
    assert reply.message.instance_uid == new
    assert reply.events[0].kind is EventKind.UID_ASSIGNED
    assert reply.events[0].previous_uid == bad
    assert set(core.agents) == {new}


def test_request_instance_uid_flag_is_honoured() -> None:
    msg = first()
    msg.flags = pb.AgentToServerFlags_RequestInstanceUid
    reply = ServerCore().receive(msg, now=0.0)
    assert reply.message.agent_identification.new_instance_uid not in (b"", UID)


def test_uid_held_by_another_live_websocket_gets_reassigned() -> None:
    core = ServerCore()
    a, b = core.open(now=0.0, peer="10.1.1.1"), core.open(now=0.0, peer="10.1.1.2")
    core.receive(first(), now=0.0, conn=a)
    reply = core.receive(first(), now=0.1, conn=b)
    new = reply.message.agent_identification.new_instance_uid
    assert len(new) == 16
    assert new != UID
    assert core.agent_on(a) is core.agents[UID]
    assert core.agent_on(b) is core.agents[new]
    # Once the first connection is gone the uid is free again.
    core.close(a, now=1.0)
    c = core.open(now=1.0)
    assert not core.receive(first(seq=1), now=1.1, conn=c).message.HasField("agent_identification")


def test_agent_switching_from_http_to_websocket_then_holds_its_uid() -> None:
    """Found by the property test below: after an HTTP poll, a WebSocket took the uid but
    a second WebSocket could take it too."""
    core = ServerCore()
    core.receive(first(), now=0.0)
    a, b = core.open(now=1.0), core.open(now=1.0)
    core.receive(beat(seq=1), now=1.0, conn=a)
    assert core.agents[UID].transport is Transport.WEBSOCKET
    reply = core.receive(beat(seq=2), now=2.0, conn=b)
    assert reply.message.agent_identification.new_instance_uid not in (b"", UID)
    assert core.agent_on(a) is core.agents[UID]


def test_a_connection_that_changes_uid_leaves_the_old_agent_disconnected() -> None:
    core = ServerCore()
    conn = core.open(now=0.0)
    core.receive(first(), now=0.0, conn=conn)
    reply = core.receive(first(uid=OTHER), now=1.0, conn=conn)
    assert (EventKind.DISCONNECTED, UID) in [(e.kind, e.instance_uid) for e in reply.events]
    assert not core.agents[UID].connected
    assert core.agent_on(conn) is core.agents[OTHER]


def test_reconnect_in_sequence_keeps_state_without_full_report() -> None:
    core = ServerCore()
    a = core.open(now=0.0)
    core.receive(first(), now=0.0, conn=a)
    events = core.close(a, now=5.0)
    assert [e.kind for e in events] == [EventKind.DISCONNECTED]
    assert not core.agents[UID].connected
    b = core.open(now=6.0)
    reply = core.receive(beat(seq=1), now=6.0, conn=b)
    assert not reply.message.flags & pb.ServerToAgentFlags_ReportFullState
    assert core.agents[UID].connected
    assert [e.kind for e in reply.events] == [EventKind.CONNECTED]


def test_agent_disconnect_ends_the_session_and_closes_websocket() -> None:
    core = ServerCore()
    conn = core.open(now=0.0)
    core.receive(first(), now=0.0, conn=conn)
    bye = beat(seq=1)
    bye.agent_disconnect.SetInParent()
    reply = core.receive(bye, now=1.0, conn=conn)
    assert reply.close
    assert EventKind.DISCONNECTED in [e.kind for e in reply.events]
    assert not core.agents[UID].connected


def test_silent_heartbeating_agent_goes_stale_after_three_intervals_then_is_forgotten() -> None:
    core = ServerCore(CoreSettings(default_heartbeat_seconds=10, forget_after_seconds=100))
    core.receive(first(), now=0.0)
    assert core.tick(now=29.0) == []
    stale = core.tick(now=31.0)
    assert [(e.kind, e.instance_uid) for e in stale] == [(EventKind.STALE, UID)]
    assert not core.agents[UID].live
    assert core.tick(now=32.0) == []  # reported once
    back = core.receive(beat(seq=1), now=40.0)
    assert EventKind.CONNECTED in [e.kind for e in back.events]
    assert core.agents[UID].live
    assert [e.kind for e in core.tick(now=71.0)] == [EventKind.STALE]
    assert core.tick(now=139.0) == []  # 100 s after it was last seen is the limit
    assert [(e.kind, e.instance_uid) for e in core.tick(now=141.0)] == [(EventKind.FORGOTTEN, UID)]
    assert UID not in core.agents


def test_the_core_sets_the_agent_state_at_each_transition() -> None:
    core = ServerCore(CoreSettings(default_heartbeat_seconds=10, forget_after_seconds=100))
    conn = core.open(now=0.0)
    core.receive(first(), now=0.0, conn=conn)
    agent = core.agents[UID]
    seen = [(agent.state, agent.state_since, agent.connected, agent.stale, agent.live)]
    core.tick(now=31.0)
    seen.append((agent.state, agent.state_since, agent.connected, agent.stale, agent.live))
    core.receive(beat(seq=1), now=40.0, conn=conn)
    seen.append((agent.state, agent.state_since, agent.connected, agent.stale, agent.live))
    core.tick(now=71.0)  # stale again, then its WebSocket closes: disconnected, not stale
    core.close(conn, now=75.0)
    seen.append((agent.state, agent.state_since, agent.connected, agent.stale, agent.live))
    assert seen == [
        (AgentState.CONNECTED, 0.0, True, False, True),
        (AgentState.STALE, 31.0, True, True, False),
        (AgentState.CONNECTED, 40.0, True, False, True),
        (AgentState.DISCONNECTED, 75.0, False, False, False),
    ]
    assert core.tick(now=175.0) == []  # forgotten 100 s after it left, not after last seen
    assert [e.kind for e in core.tick(now=176.0)] == [EventKind.FORGOTTEN]


def test_websocket_agent_without_heartbeats_is_not_marked_stale() -> None:
    core = ServerCore()
    conn = core.open(now=0.0)
    core.receive(first(caps=pb.AgentCapabilities_ReportsStatus), now=0.0, conn=conn)
    assert core.tick(now=10_000.0) == []


def test_remote_config_offered_until_reported_then_not_again() -> None:
    config = RemoteConfig.single(b"receivers: {}\n")
    core = ServerCore(desired=Fixed(config))
    conn = core.open(now=0.0)
    offered = core.receive(first(), now=0.0, conn=conn).message
    assert offered.remote_config.config_hash == config.hash
    assert offered.remote_config.config.config_map[""].body == b"receivers: {}\n"
    # Once per WebSocket connection, even before the agent answers.
    assert not core.receive(beat(seq=1), now=1.0, conn=conn).message.HasField("remote_config")
    applied = beat(seq=2)
    applied.remote_config_status.last_remote_config_hash = config.hash
    applied.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
    core.receive(applied, now=2.0, conn=conn)
    core.close(conn, now=3.0)
    again = core.open(now=4.0)
    assert not core.receive(beat(seq=3), now=4.0, conn=again).message.HasField("remote_config")


def test_http_agents_get_the_offer_on_every_poll_until_they_report_it() -> None:
    config = RemoteConfig.single(b"a: 1\n")
    core = ServerCore(desired=Fixed(config))
    assert core.receive(first(), now=0.0).message.HasField("remote_config")
    assert core.receive(beat(seq=1), now=1.0).message.HasField("remote_config")
    failed = beat(seq=2)
    failed.remote_config_status.last_remote_config_hash = config.hash
    failed.remote_config_status.status = pb.RemoteConfigStatuses_FAILED
    assert not core.receive(failed, now=2.0).message.HasField("remote_config")


def test_agents_that_do_not_accept_remote_config_get_none() -> None:
    core = ServerCore(desired=Fixed(RemoteConfig.single(b"x")))
    reply = core.receive(first(caps=pb.AgentCapabilities_ReportsStatus), now=0.0)
    assert not reply.message.HasField("remote_config")


def test_changed_desired_config_is_pushed_to_websocket_agents_only() -> None:
    source = Fixed(None)
    core = ServerCore(desired=source)
    ws = core.open(now=0.0)
    core.receive(first(), now=0.0, conn=ws)
    core.receive(first(uid=OTHER), now=0.0)  # HTTP
    assert core.pending_offers() == []
    source.config = RemoteConfig.single(b"new")
    pushed = core.pending_offers()
    assert [(c, m.instance_uid) for c, m in pushed] == [(ws, UID)]
    assert pushed[0][1].remote_config.config_hash == source.config.hash
    assert core.pending_offers() == []  # not twice


def _applied(config: RemoteConfig, seq: int) -> pb.AgentToServer:
    msg = beat(seq=seq)
    msg.remote_config_status.last_remote_config_hash = config.hash
    msg.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
    return msg


def test_reoffer_sends_the_config_again_to_an_agent_that_reports_it() -> None:
    config = RemoteConfig.single(b"a: 1\n")
    core = ServerCore(desired=Fixed(config))
    ws = core.open(now=0.0)
    core.receive(first(), now=0.0, conn=ws)
    core.receive(_applied(config, 1), now=1.0, conn=ws)
    assert core.pending_offers() == []
    assert core.reoffer_config(UID)
    pushed = core.pending_offers()
    assert [m.remote_config.config_hash for _, m in pushed] == [config.hash]
    assert core.pending_offers() == []  # once per request
    # Over HTTP the re-offer rides on the next poll's reply, once.
    core.receive(first(uid=OTHER), now=0.0)
    core.receive(beat(OTHER, 1), now=0.5)
    http_applied = _applied(config, 2)
    http_applied.instance_uid = OTHER
    assert not core.receive(http_applied, now=1.0).message.HasField("remote_config")
    assert core.reoffer_config(OTHER)
    assert core.receive(beat(OTHER, 3), now=2.0).message.HasField("remote_config")
    assert not core.receive(beat(OTHER, 4), now=3.0).message.HasField("remote_config")


def test_reoffer_and_restart_need_the_capability() -> None:
    core = ServerCore(desired=Fixed(RemoteConfig.single(b"x")))
    core.receive(first(caps=pb.AgentCapabilities_ReportsStatus), now=0.0)
    assert not core.reoffer_config(UID)
    assert not core.request_restart(UID)
    assert not core.reoffer_config(OTHER)  # unknown agent


def test_restart_command_travels_alone() -> None:
    config = RemoteConfig.single(b"a: 1\n")
    core = ServerCore(desired=Fixed(config))
    caps = ACCEPTS | pb.AgentCapabilities_AcceptsRestartCommand
    ws = core.open(now=0.0)
    core.receive(first(caps=caps), now=0.0, conn=ws)
    core.receive(_applied(config, 1), now=1.0, conn=ws)
    assert core.reoffer_config(UID)
    assert core.request_restart(UID)
    pushed = [m for _, m in core.pending_offers()]
    assert len(pushed) == 2
    assert pushed[0].HasField("remote_config")
    assert not pushed[0].HasField("command")
    assert pushed[1].command.type == pb.CommandType_Restart
    assert [f.name for f, _ in pushed[1].ListFields()] == ["instance_uid", "command"]
    # HTTP: the command waits for a reply that carries nothing else.
    core.receive(first(uid=OTHER, caps=caps), now=0.0)
    assert core.request_restart(OTHER)
    busy = core.receive(beat(OTHER, 1), now=1.0).message
    assert busy.HasField("remote_config")
    assert not busy.HasField("command")
    http_applied = _applied(config, 2)
    http_applied.instance_uid = OTHER
    bare = core.receive(http_applied, now=2.0).message
    assert bare.command.type == pb.CommandType_Restart
    assert not core.receive(beat(OTHER, 3), now=3.0).message.HasField("command")


FLEET_A, FLEET_B = AgentIdentity(fleet="ns/fleet-a"), AgentIdentity(fleet="ns/fleet-b")


def test_authenticated_identity_is_kept_and_a_uid_is_not_taken_across_identities() -> None:
    core = ServerCore()
    ws = core.open(now=0.0, identity=FLEET_A)
    core.receive(first(), now=0.0, conn=ws)
    assert core.agents[UID].identity == FLEET_A
    # Over HTTP, the same uid under another identity (or none) is someone else.
    reply = core.receive(first(), now=1.0, identity=FLEET_B).message
    assert reply.agent_identification.new_instance_uid not in (b"", UID)
    assert core.agents[UID].identity == FLEET_A
    anonymous = core.receive(first(uid=OTHER), now=1.0).message
    assert not anonymous.HasField("agent_identification")
    assert core.agents[OTHER].identity is None
    again = core.receive(beat(OTHER, 1), now=2.0, identity=FLEET_A).message
    assert again.HasField("agent_identification")
    same = core.receive(beat(OTHER, 2), now=3.0).message
    assert not same.HasField("agent_identification")


def test_hash_only_available_components_asks_for_the_list() -> None:
    msg = first()
    msg.available_components.hash = b"abc"
    reply = ServerCore().receive(msg, now=0.0)
    assert reply.message.flags & pb.ServerToAgentFlags_ReportAvailableComponents
    full = beat(seq=1)
    full.available_components.hash = b"abc"
    full.available_components.components["receivers"].sub_component_map["otlp"].SetInParent()
    core = ServerCore()
    core.receive(full, now=0.0)
    assert (
        not core.receive(full, now=0.0).message.flags
        & pb.ServerToAgentFlags_ReportAvailableComponents
    )


def test_effective_config_hash_is_the_config_map_hash() -> None:
    msg = first()
    msg.effective_config.config_map.config_map["b"].body = b"2"
    msg.effective_config.config_map.config_map["a"].body = b"1"
    core = ServerCore()
    core.receive(msg, now=0.0)
    want = files_hash({"a": ConfigFile(b"1", ""), "b": ConfigFile(b"2", "")})
    assert core.agents[UID].effective_config_hash == want


# ---- what one agent may make the server keep (AgentLimits) ------------------------------


def limited(**limits: float) -> ServerCore:
    return ServerCore(CoreSettings(limits=AgentLimits(**limits)))  # type: ignore[arg-type]


def test_a_description_over_its_caps_is_refused_and_nothing_is_kept() -> None:
    core = limited(max_attributes=3, max_description_bytes=200)
    many = first()  # service.name, and three more: 4 attributes
    many.agent_description.non_identifying_attributes.extend(
        attributes.from_dict({f"k{i}": "v" for i in range(3)})
    )
    reply = core.receive(many, now=0.0)
    assert reply.refusal is Refusal.TOO_LARGE
    assert reply.message.error_response.type == pb.ServerErrorResponseType_BadRequest
    assert "4 attributes, over the limit of 3" in reply.message.error_response.error_message
    big = first(note="x" * 300)
    assert core.receive(big, now=0.0).refusal is Refusal.TOO_LARGE
    assert "bytes, over the limit of 200" in (
        core.receive(big, now=0.0).message.error_response.error_message
    )
    assert core.agents == {}
    ok = core.receive(first(note="x"), now=0.0)
    assert ok.refusal is None
    assert UID in core.agents


def test_an_effective_config_over_its_cap_is_kept_as_its_hash_only() -> None:
    core = limited(max_effective_config_bytes=1000)
    big = first()
    big.effective_config.config_map.config_map[""].body = b"a" * 2000
    reply = core.receive(big, now=0.0)
    agent = core.agents[UID]
    assert reply.refusal is None
    assert reply.trimmed == ["effective_config"]
    assert agent.trimmed == {"effective_config"}
    assert agent.effective_config == pb.EffectiveConfig()
    assert agent.effective_config_hash == files_hash({"": ConfigFile(b"a" * 2000, "")})
    # Another large config is a change (by its hash), the same one is not.
    other = beat(seq=1)
    other.effective_config.config_map.config_map[""].body = b"b" * 2000
    changed = core.receive(other, now=1.0)
    assert [e.changed for e in changed.events] == [frozenset({"effective_config"})]
    assert agent.effective_config_hash == files_hash({"": ConfigFile(b"b" * 2000, "")})
    same = beat(seq=2)
    same.effective_config.CopyFrom(other.effective_config)
    assert core.receive(same, now=2.0).events == []
    small = beat(seq=3)
    small.effective_config.config_map.config_map[""].body = b"c"
    core.receive(small, now=3.0)
    assert agent.trimmed == frozenset()
    assert agent.effective_config == small.effective_config
    # From a stand-in to an empty config: both are empty messages, yet a change.
    big.sequence_num = 4
    core.receive(big, now=4.0)
    empty = beat(seq=5)
    empty.effective_config.SetInParent()
    assert [e.changed for e in core.receive(empty, now=5.0).events] == [
        frozenset({"effective_config"})
    ]
    assert agent.trimmed == frozenset()
    assert agent.effective_config_hash == files_hash({})


def test_components_over_their_cap_are_kept_as_the_hash_and_not_asked_for_again() -> None:
    msg = first()
    msg.available_components.hash = b"h1"
    receivers = msg.available_components.components["receivers"]
    for name in ("otlp", "jaeger", "zipkin"):
        receivers.sub_component_map[name].SetInParent()
    assert component_count(msg.available_components) == 4
    core = limited(max_components=3)
    reply = core.receive(msg, now=0.0)
    assert reply.trimmed == ["available_components"]
    assert core.agents[UID].available_components == pb.AvailableComponents(hash=b"h1")
    assert not reply.message.flags & pb.ServerToAgentFlags_ReportAvailableComponents
    again = beat(seq=1)
    again.available_components.CopyFrom(msg.available_components)
    assert core.receive(again, now=1.0).events == []


def _reporting(uid: bytes, body: bytes, seq: int = 0) -> pb.AgentToServer:
    msg = first(uid=uid, seq=seq)
    msg.effective_config.config_map.config_map[""].body = body
    msg.available_components.hash = b"h"
    msg.available_components.components["receivers"].sub_component_map["otlp"].SetInParent()
    return msg


def test_what_all_agents_keep_together_is_bounded_and_given_back_when_forgotten() -> None:
    core = limited(max_kept_bytes=5000)
    core.receive(_reporting(UID, b"a" * 3000), now=0.0)
    kept = core.agents[UID].config_bytes + core.agents[UID].components_bytes
    assert core.kept_bytes == kept > 3000
    # A second agent's config would take the total past it: its hash only.
    reply = core.receive(_reporting(OTHER, b"b" * 3000), now=0.0)
    assert reply.trimmed == ["effective_config"]
    other = core.agents[OTHER]
    assert other.effective_config == pb.EffectiveConfig()
    assert other.effective_config_hash == files_hash({"": ConfigFile(b"b" * 3000, "")})
    assert other.available_components is not None  # small: it fits
    assert core.kept_bytes == kept + other.components_bytes <= 5000
    # The first one replacing its own config is judged by the difference only.
    core.receive(_reporting(UID, b"c" * 3100, seq=1), now=1.0)
    assert core.agents[UID].trimmed == frozenset()
    # Forgotten: its bytes are free, and the next report of the other agent is kept.
    bye = pb.AgentToServer(instance_uid=UID, sequence_num=2)
    bye.agent_disconnect.SetInParent()
    core.receive(bye, now=1.0)
    later = 1.0 + core.settings.forget_after_seconds + 1
    core.receive(beat(uid=OTHER, seq=1), now=later)
    core.tick(now=later)
    assert UID not in core.agents
    assert core.kept_bytes == other.components_bytes
    core.receive(_reporting(OTHER, b"d" * 3000, seq=2), now=later)
    assert other.trimmed == frozenset()
    assert core.kept_bytes == other.config_bytes + other.components_bytes


def test_an_agent_that_never_describes_itself_is_forgotten_within_seconds() -> None:
    core = limited(forget_undescribed_after_seconds=15)
    core.receive(beat(uid=OTHER, seq=0), now=0.0)  # a bare poll with a fresh uid
    core.receive(first(), now=0.0)
    conn = core.open(now=0.0)
    held = bytes(range(201, 217))
    core.receive(beat(uid=held, seq=0), now=0.0, conn=conn)
    assert core.tick(now=15.0) == []
    forgotten = core.tick(now=15.5)
    assert [(e.kind, e.instance_uid) for e in forgotten] == [(EventKind.FORGOTTEN, OTHER)]
    # Described, or held by an open WebSocket: kept.
    assert set(core.agents) == {UID, held}
    core.close(conn, now=20.0)
    assert [e.instance_uid for e in core.tick(now=36.0)] == [held]


def test_at_max_agents_the_best_record_to_forget_makes_room_else_new_agents_wait() -> None:
    core = limited(max_agents=3)
    a, b, c, d, e = (bytes([i]) * 16 for i in range(1, 6))
    conn = core.open(now=0.0)
    core.receive(first(uid=a), now=0.0, conn=conn)  # described, on a WebSocket
    core.receive(first(uid=b), now=0.0)  # described, HTTP
    core.receive(beat(uid=c, seq=0), now=1.0)  # never described
    core.tick(now=2.0)
    # Full: the never-described record goes first.
    assert core.receive(first(uid=d), now=3.0).refusal is None
    assert set(core.agents) == {a, b, d}
    # Nothing more tick() found to forget: the newcomer is told to come back later.
    full = core.receive(first(uid=e), now=4.0)
    assert full.refusal is Refusal.FULL
    assert full.message.error_response.type == pb.ServerErrorResponseType_Unavailable
    assert e not in core.agents
    # Known agents are still served.
    assert core.receive(beat(uid=b, seq=1), now=4.0).refusal is None
    # A WebSocket agent that left is forgettable at the next tick; a live one never is.
    core.close(conn, now=5.0)
    core.tick(now=6.0)
    assert core.receive(first(uid=e), now=7.0).refusal is None
    assert set(core.agents) == {b, d, e}


# ---- properties ---------------------------------------------------------------------


def _msg(
    uid: bytes, seq: int, caps: int, healthy: bool | None, disconnect: bool
) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=caps)
    if healthy is not None:
        msg.health.healthy = healthy
    if disconnect:
        msg.agent_disconnect.SetInParent()
    return msg


uids = st.one_of(st.binary(min_size=0, max_size=20), st.sampled_from([UID, OTHER]))
messages = st.builds(
    _msg,
    uids,
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**20),
    st.none() | st.booleans(),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(messages, st.sampled_from([None, 0, 1]), st.booleans()), max_size=40))
def test_core_invariants_hold_for_any_message_sequence(
    steps: list[tuple[pb.AgentToServer, int | None, bool]],
) -> None:
    """Whatever agents send, in any order: every reply has capabilities and a valid uid,
    every agent in the table has a valid uid, and one uid is held by at most one
    open WebSocket."""
    core = ServerCore(desired=Fixed(RemoteConfig.single(b"c")))
    conns = [core.open(now=0.0), core.open(now=0.0)]
    now = 0.0
    for msg, which, close_after in steps:
        now += 1.0
        conn = None if which is None else conns[which]
        reply = core.receive(msg, now=now, conn=conn)
        assert reply.message.capabilities == SERVER_CAPABILITIES
        assert ids.valid_uid(reply.message.instance_uid)
        if (reply.close or close_after) and conn is not None:
            core.close(conn, now=now)
            conns[which or 0] = core.open(now=now)
        core.tick(now)
        assert all(ids.valid_uid(uid) for uid in core.agents)
        held = [a.instance_uid for _, a in core.websocket_agents() if a.connected]
        assert len(held) == len(set(held))


def _overdue(core: ServerCore, agent: AgentRecord, now: float) -> bool:
    """What a scan of every agent would act on at `now` (the rules tick() keeps)."""
    held = agent.conn is not None and any(a is agent for _, a in core.websocket_agents())
    limits = core.settings.limits
    if (
        not held
        and agent.description is None
        and now - agent.last_seen > limits.forget_undescribed_after_seconds
    ):
        return True
    if agent.state is not AgentState.CONNECTED:
        since = agent.last_seen
        if agent.state is AgentState.DISCONNECTED and agent.state_since is not None:
            since = agent.state_since
        return now - since > core.settings.forget_after_seconds
    beats = agent.can(pb.AgentCapabilities_ReportsHeartbeat) or agent.transport is Transport.HTTP
    return beats and now - agent.last_seen > 3 * agent.heartbeat_seconds


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            messages,
            st.sampled_from([None, 0, 1]),
            st.booleans(),
            st.sampled_from([0.0, 0.5, 5.0, 16.0, 95.0, 700.0]),
        ),
        max_size=40,
    )
)
def test_tick_acts_on_every_agent_a_full_scan_would(
    steps: list[tuple[pb.AgentToServer, int | None, bool, float]],
) -> None:
    """tick() looks only at agents whose check is due; after it, no agent is left that a
    scan of them all would have marked stale or forgotten (a scan took two ticks too)."""
    core = ServerCore(desired=Fixed(RemoteConfig.single(b"c")))
    conns = [core.open(now=0.0), core.open(now=0.0)]
    now = 0.0
    for msg, which, close_after, wait in steps:
        conn = None if which is None else conns[which]
        reply = core.receive(msg, now=now, conn=conn)
        if (reply.close or close_after) and conn is not None:
            core.close(conn, now=now)
            conns[which or 0] = core.open(now=now)
        now += wait
        core.tick(now)
        core.tick(now)  # one tick marks a long-silent agent stale, the next forgets it
        assert not [a.instance_uid for a in core.agents.values() if _overdue(core, a, now)]


def test_message_kinds() -> None:
    bye = beat()
    bye.agent_disconnect.SetInParent()
    status = beat()
    status.health.healthy = True
    assert [message_kind(m) for m in (first(), status, beat(), bye)] == [
        "full_state",
        "status",
        "heartbeat",
        "disconnect",
    ]


def test_one_agent_cannot_poison_another_builds_components_through_its_hash() -> None:
    """Issue 14: the parsed components were cached by the hash the agent sent, process-wide:
    an agent claiming a real build's hash with an almost empty list changed what every
    agent of that build was taken to have (rollout preflight). They are now cached by the
    server's digest of the list itself."""
    honest, poisoner = first(UID), first(OTHER)
    honest.available_components.hash = b"build-1"
    for kind, name in (("receivers", "otlp"), ("exporters", "debug"), ("processors", "batch")):
        honest.available_components.components[kind].sub_component_map[name].SetInParent()
    poisoner.available_components.hash = b"build-1"
    poisoner.available_components.components["receivers"].sub_component_map["nop"].SetInParent()
    core = ServerCore()
    core.receive(poisoner, now=0.0)  # first in: its list would have been cached as build-1's
    core.receive(honest, now=1.0)
    mine, theirs = agent_view(core.agents[UID]), agent_view(core.agents[OTHER])
    assert mine.components is not None
    assert theirs.components is not None
    assert mine.components["exporters"] == frozenset({"debug"})
    assert theirs.components == {"receivers": frozenset({"nop"})}
    assert core.agents[UID].components_digest != core.agents[OTHER].components_digest
    # Agents of one build share one digest (and one parsed list), whatever order of keys.
    again = first(bytes(range(31, 47)))
    for kind, name in (("processors", "batch"), ("exporters", "debug"), ("receivers", "otlp")):
        again.available_components.components[kind].sub_component_map[name].SetInParent()
    core.receive(again, now=2.0)
    assert core.agents[bytes(range(31, 47))].components_digest == core.agents[UID].components_digest


def test_an_agent_s_view_is_rebuilt_when_and_only_when_what_it_shows_changed() -> None:
    core = ServerCore()
    conn = core.open(now=0.0)
    core.receive(first(), now=0.0, conn=conn)
    agent = core.agents[UID]
    view = agent_view(agent)
    core.receive(beat(seq=1), now=1.0, conn=conn)  # a heartbeat changes nothing shown
    assert agent_view(agent) is view
    sick = beat(seq=2)
    sick.health.healthy = False
    core.receive(sick, now=2.0, conn=conn)
    assert agent_view(agent).healthy is False
    healthy = agent_view(agent)
    core.close(conn, now=3.0)
    assert agent_view(agent) is not healthy
    assert not agent_view(agent).connected
