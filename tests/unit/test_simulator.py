"""The simulator's agent logic without I/O: what a simulated agent sends, how it numbers its
messages, and how it reacts to what a server sends it."""

from __future__ import annotations

import argparse
import hashlib
import json
import ssl
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opamp_operator.cli import build_parser
from opamp_operator.opamp import wire
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.server.tls import self_signed
from opamp_operator.simulator import Simulation
from opamp_operator.simulator.command import settings_from_args
from opamp_operator.simulator.protocol import (
    APPLIED,
    APPLYING,
    CAPABILITIES,
    COMPONENTS,
    DEFAULT_LOCAL_CONFIG,
    FAILED,
    FULL_STATE,
    AgentCore,
    AgentOptions,
    ConfigFiles,
    ConfigOffered,
    ConfigReported,
    FullStateAcked,
    HeartbeatChanged,
    InstanceUidChanged,
    Part,
    ProtocolError,
    ServerError,
    backoff_delay,
    decide_remote_config,
    parse_retry_after,
    uid_text,
    uuid7,
)
from opamp_operator.simulator.settings import SimulationSettings, endpoint_for, transport_of
from opamp_operator.simulator.stats import SimulationStats, percentiles

UID = bytes(range(16))
OTHER_UID = bytes(range(16, 32))
CONFIG = b"receivers:\n  otlp: {}\n"


def _core(**options: object) -> AgentCore:
    return AgentCore(7, AgentOptions(**options), instance_uid=UID, started_unix_nano=123)  # type: ignore[arg-type]


def _attrs(kvs: object) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in kvs}  # type: ignore[attr-defined]


def _offer(body: bytes = CONFIG, name: str = "collector.yaml") -> pb.ServerToAgent:
    msg = pb.ServerToAgent(instance_uid=UID)
    msg.remote_config.config.config_map[name].body = body
    msg.remote_config.config.config_map[name].content_type = "text/yaml"
    msg.remote_config.config_hash = hashlib.sha256(body).digest()
    return msg


def _connected(core: AgentCore, now: float = 0.0) -> pb.AgentToServer:
    """Connect and send the first message, answered by an empty ServerToAgent."""
    core.connected()
    first = core.next_message(now)
    core.handle(pb.ServerToAgent(instance_uid=UID), now)
    return first


# identity


@given(st.integers(0, (1 << 48) - 1), st.binary(min_size=10, max_size=10))
def test_uuid7_has_version_variant_and_timestamp(unix_ms: int, rand: bytes) -> None:
    uid = uuid7(unix_ms, rand)
    parsed = uuid.UUID(bytes=uid)
    assert len(uid) == 16
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert int.from_bytes(uid[:6], "big") == unix_ms


def test_uuid7_is_unique_and_time_ordered() -> None:
    uids = [uuid7() for _ in range(1000)]
    assert len(set(uids)) == 1000
    assert uid_text(uids[0]) == str(uuid.UUID(bytes=uids[0]))


# what an agent sends


def test_first_message_is_the_full_state() -> None:
    core = _core(pod_prefix="collector", namespace="observability", service_name="otelcol")
    core.connected()
    msg = core.next_message(0.0)
    assert msg.instance_uid == UID
    assert msg.sequence_num == 0
    assert msg.capabilities == CAPABILITIES
    assert _attrs(msg.agent_description.identifying_attributes) == {
        "service.name": "otelcol",
        "service.instance.id": str(uuid.UUID(bytes=UID)),
        "k8s.pod.name": "collector-7",
        "k8s.namespace.name": "observability",
    }
    assert _attrs(msg.agent_description.non_identifying_attributes)["host.name"] == "collector-7"
    assert msg.health.healthy
    assert msg.health.start_time_unix_nano == 123
    body = msg.effective_config.config_map.config_map[""].body
    assert body == DEFAULT_LOCAL_CONFIG[0][1]
    assert msg.available_components.hash == COMPONENTS.hash
    assert not msg.available_components.components, "only the hash until the server asks"
    assert not msg.HasField("remote_config_status"), "no remote config received yet"
    assert not msg.HasField("agent_disconnect")


def test_capabilities_are_the_ones_the_simulator_implements() -> None:
    for cap in (
        pb.AgentCapabilities_ReportsStatus,
        pb.AgentCapabilities_AcceptsRemoteConfig,
        pb.AgentCapabilities_ReportsEffectiveConfig,
        pb.AgentCapabilities_ReportsRemoteConfig,
        pb.AgentCapabilities_ReportsHealth,
        pb.AgentCapabilities_ReportsHeartbeat,
        pb.AgentCapabilities_AcceptsOpAMPConnectionSettings,
        pb.AgentCapabilities_ReportsAvailableComponents,
    ):
        assert CAPABILITIES & cap
    assert not CAPABILITIES & pb.AgentCapabilities_AcceptsPackages
    assert not CAPABILITIES & pb.AgentCapabilities_AcceptsRestartCommand


def test_heartbeat_carries_only_uid_sequence_and_capabilities() -> None:
    core = _core(heartbeat=10.0)
    _connected(core, now=0.0)
    core.tick(5.0)
    assert not core.wants_to_send
    assert core.seconds_until_wakeup(5.0) == pytest.approx(5.0)
    core.tick(10.0)
    assert core.pending == Part.HEARTBEAT
    beat = core.next_message(10.0)
    assert beat == pb.AgentToServer(instance_uid=UID, sequence_num=1, capabilities=CAPABILITIES)


def test_no_heartbeats_when_disabled_but_http_still_polls() -> None:
    core = _core(heartbeat=None)
    _connected(core)
    assert core.seconds_until_wakeup(100.0) is None
    core.tick(1000.0)
    assert not core.wants_to_send
    core.poll_fallback = 30.0
    core.tick(1000.0)
    assert core.pending == Part.HEARTBEAT


def test_disconnect_message() -> None:
    core = _core()
    _connected(core)
    bye = core.disconnect_message(1.0)
    assert bye.HasField("agent_disconnect")
    assert bye.sequence_num == 1
    assert bye.instance_uid == UID


SERVER_FLAGS = st.sampled_from(
    [
        0,
        pb.ServerToAgentFlags_ReportFullState,
        pb.ServerToAgentFlags_ReportAvailableComponents,
        pb.ServerToAgentFlags_ReportFullState | pb.ServerToAgentFlags_ReportAvailableComponents,
    ]
)
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("server"), SERVER_FLAGS),
        st.tuples(st.just("offer"), st.binary(max_size=20)),
        st.tuples(st.just("time"), st.floats(0, 100)),
        st.tuples(st.just("drop"), st.just(0)),
        st.tuples(st.just("garbage"), st.binary(max_size=30)),
    ),
    max_size=40,
)


@given(ACTIONS)
def test_sequence_numbers_go_up_by_one_whatever_happens(actions: list[tuple[str, object]]) -> None:
    """Every message an agent sends is numbered one above the last, across reconnects,
    config changes, server flags and garbage from the server."""
    core = _core(heartbeat=5.0, fail_text=b"x")
    core.connected()
    now = 0.0
    sent = [core.next_message(now)]
    for kind, arg in actions:
        if kind == "server":
            core.handle(pb.ServerToAgent(instance_uid=UID, flags=arg), now)  # type: ignore[arg-type]
        elif kind == "offer":
            core.handle(_offer(arg), now)  # type: ignore[arg-type]
        elif kind == "time":
            now += arg  # type: ignore[operator]
            core.tick(now)
        elif kind == "drop":
            core.disconnected()
        else:
            core.receive(arg, websocket=True, now=now)  # type: ignore[arg-type]
        if core.wants_to_send:
            sent.append(core.next_message(now))
    sent.append(core.disconnect_message(now))
    assert [m.sequence_num for m in sent] == list(range(len(sent)))
    assert all(m.capabilities == CAPABILITIES for m in sent)


def test_an_empty_reply_makes_the_agent_send_nothing() -> None:
    """A status report is sent only when something changed (the spec's loop guard)."""
    core = _core()
    _connected(core)
    for _ in range(3):
        core.handle(pb.ServerToAgent(instance_uid=UID), 1.0)
        assert not core.wants_to_send


# server flags


def test_report_full_state_flag_resends_everything() -> None:
    core = _core()
    _connected(core)
    core.handle(pb.ServerToAgent(flags=pb.ServerToAgentFlags_ReportFullState), 1.0)
    assert core.pending == FULL_STATE
    msg = core.next_message(1.0)
    assert msg.HasField("agent_description")
    assert msg.HasField("health")
    assert msg.HasField("effective_config")
    assert msg.available_components.hash == COMPONENTS.hash


def test_report_available_components_flag_sends_the_full_list() -> None:
    core = _core()
    _connected(core)
    core.handle(pb.ServerToAgent(flags=pb.ServerToAgentFlags_ReportAvailableComponents), 1.0)
    assert core.pending == Part.COMPONENTS_FULL
    msg = core.next_message(1.0)
    assert msg.available_components == COMPONENTS
    assert set(msg.available_components.components) >= {"receivers", "exporters"}
    assert not msg.HasField("agent_description")


# remote config


def test_offered_config_is_applied_and_reported_once() -> None:
    core = _core()
    _connected(core)
    offer = _offer()
    reaction = core.handle(offer, 1.0)
    assert reaction.events == [ConfigOffered(offer.remote_config.config_hash)]
    msg = core.next_message(1.0)
    assert msg.remote_config_status.status == APPLIED
    assert msg.remote_config_status.last_remote_config_hash == hashlib.sha256(CONFIG).digest()
    assert msg.effective_config.config_map == offer.remote_config.config
    # the server's answer acknowledges the report
    ack = core.handle(pb.ServerToAgent(instance_uid=UID), 1.1)
    assert ack.events == [ConfigReported(offer.remote_config.config_hash, APPLIED, "")]
    # the same offer again (opamp-go re-offers after each compressed message): no change
    again = core.handle(offer, 2.0)
    assert again.events == []
    assert not core.wants_to_send


def test_config_containing_the_fail_text_is_reported_failed() -> None:
    core = _core(fail_text=b"boom")
    _connected(core)
    core.handle(_offer(b"exporters: {boom: {}}\n", name=""), 1.0)
    msg = core.next_message(1.0)
    status = msg.remote_config_status
    assert status.status == FAILED
    assert status.last_remote_config_hash == hashlib.sha256(b"exporters: {boom: {}}\n").digest()
    assert "boom" in status.error_message
    assert not msg.HasField("effective_config"), "a refused config does not take effect"
    assert core.effective == DEFAULT_LOCAL_CONFIG


FILES = st.lists(
    st.tuples(st.text(max_size=5), st.binary(max_size=40), st.just("text/yaml")),
    max_size=4,
    unique_by=lambda f: f[0],
).map(lambda files: tuple(sorted(files)))


@given(FILES, st.binary(max_size=4))
def test_fail_decision_is_substring_of_any_body(files: ConfigFiles, text: bytes) -> None:
    error = decide_remote_config(files, text)
    expected_fail = bool(text) and any(text in body for _, body, _ in files)
    assert (error is not None) == expected_fail
    if error is not None:
        assert repr(text.decode(errors="replace")) in error


@given(FILES, st.binary(max_size=4))
def test_agent_reports_exactly_what_the_decision_says(files: ConfigFiles, text: bytes) -> None:
    core = _core(fail_text=text or None)
    _connected(core)
    offer = pb.ServerToAgent()
    for name, body, content_type in files:
        offer.remote_config.config.config_map[name].body = body
        offer.remote_config.config.config_map[name].content_type = content_type
    offer.remote_config.config_hash = b"h" + bytes(len(files))
    core.handle(offer, 1.0)
    msg = core.next_message(1.0)
    if decide_remote_config(files, text) is None:
        assert msg.remote_config_status.status == APPLIED
        assert core.effective == files
    else:
        assert msg.remote_config_status.status == FAILED
        assert core.effective == DEFAULT_LOCAL_CONFIG


def test_applying_is_reported_first_when_asked_for() -> None:
    core = _core(report_applying=True, apply_delay=2.0)
    _connected(core)
    core.handle(_offer(), 1.0)
    first = core.next_message(1.0)
    assert first.remote_config_status.status == APPLYING
    assert not first.HasField("effective_config")
    assert core.seconds_until_wakeup(1.0) == pytest.approx(2.0)
    core.tick(2.9)
    assert not core.wants_to_send
    core.tick(3.0)
    second = core.next_message(3.0)
    assert second.remote_config_status.status == APPLIED
    assert second.HasField("effective_config")


def test_applied_status_is_resent_after_a_reconnect_and_reported_once() -> None:
    core = _core()
    _connected(core)
    core.handle(_offer(), 1.0)
    core.next_message(1.0)
    core.disconnected()
    full = core.next_message(2.0)
    assert full.remote_config_status.status == APPLIED
    events = core.handle(pb.ServerToAgent(), 2.1).events
    assert FullStateAcked() in events
    assert sum(isinstance(e, ConfigReported) for e in events) == 1
    core.disconnected()
    core.next_message(3.0)
    assert not any(
        isinstance(e, ConfigReported) for e in core.handle(pb.ServerToAgent(), 3.1).events
    )


def test_received_configs_are_shared_between_agents() -> None:
    options = AgentOptions()
    agents = [AgentCore(i, options) for i in range(3)]
    for core in agents:
        core.handle(_offer(), 0.0)
    assert agents[0].effective is agents[1].effective is agents[2].effective


# identification, connection settings, errors


def test_new_instance_uid_is_adopted() -> None:
    core = _core()
    _connected(core)
    msg = pb.ServerToAgent()
    msg.agent_identification.new_instance_uid = OTHER_UID
    assert core.handle(msg, 1.0).events == [InstanceUidChanged(UID, OTHER_UID)]
    core.tick(100.0)
    assert core.next_message(100.0).instance_uid == OTHER_UID
    assert core.original_uid == UID, "service.instance.id stays what it was"


def test_new_instance_uid_of_the_wrong_length_is_refused() -> None:
    core = _core()
    msg = pb.ServerToAgent()
    msg.agent_identification.new_instance_uid = b"short"
    events = core.handle(msg, 1.0).events
    assert len(events) == 1
    assert isinstance(events[0], ProtocolError)
    assert core.instance_uid == UID


def test_offered_heartbeat_interval_is_honoured() -> None:
    core = _core(heartbeat=30.0)
    _connected(core)
    msg = pb.ServerToAgent()
    msg.connection_settings.opamp.heartbeat_interval_seconds = 5
    assert core.handle(msg, 0.0).events == [HeartbeatChanged(5.0)]
    assert core.seconds_until_wakeup(0.0) == pytest.approx(5.0)
    msg.connection_settings.opamp.heartbeat_interval_seconds = 0
    assert core.handle(msg, 0.0).events == [HeartbeatChanged(None)]
    assert core.seconds_until_wakeup(0.0) is None


def test_unavailable_with_retry_info_throttles_for_that_long() -> None:
    core = _core()
    _connected(core)
    msg = pb.ServerToAgent()
    msg.error_response.type = pb.ServerErrorResponseType_Unavailable
    msg.error_response.error_message = "overloaded"
    msg.error_response.retry_info.retry_after_nanoseconds = 2_500_000_000
    reaction = core.handle(msg, 1.0)
    assert reaction.throttled
    assert reaction.retry_after == pytest.approx(2.5)
    assert reaction.events == [ServerError(pb.ServerErrorResponseType_Unavailable, "overloaded")]
    assert core.pending & FULL_STATE == FULL_STATE, "the unprocessed status is sent again"


def test_unavailable_without_retry_info_leaves_the_wait_to_backoff() -> None:
    msg = pb.ServerToAgent()
    msg.error_response.type = pb.ServerErrorResponseType_Unavailable
    reaction = _core().handle(msg, 0.0)
    assert reaction.throttled
    assert reaction.retry_after is None


def test_bad_request_is_not_retried_and_other_fields_are_ignored() -> None:
    core = _core()
    _connected(core)
    msg = _offer()
    msg.error_response.type = pb.ServerErrorResponseType_BadRequest
    reaction = core.handle(msg, 1.0)
    assert not reaction.throttled
    assert [type(e) for e in reaction.events] == [ServerError]
    assert not core.wants_to_send


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (b"\x00\xff\xff\xff", "malformed ServerToAgent"),
        (b"\x01" + pb.ServerToAgent().SerializeToString(), "header 1"),
        (b"\x80", "not a complete varint"),
    ],
)
def test_malformed_frames_become_protocol_errors(frame: bytes, complaint: str) -> None:
    core = _core()
    reaction = core.receive(frame, websocket=True, now=0.0)
    assert len(reaction.events) == 1
    event = reaction.events[0]
    assert isinstance(event, ProtocolError)
    assert complaint in event.message


def test_full_state_is_acknowledged_once_per_connection() -> None:
    core = _core()
    core.connected()
    core.next_message(0.0)
    assert core.handle(pb.ServerToAgent(), 0.1).events == [FullStateAcked()]
    assert core.handle(pb.ServerToAgent(), 0.2).events == []
    core.disconnected()
    core.next_message(1.0)
    assert core.handle(pb.ServerToAgent(), 1.1).events == [FullStateAcked()]


# wire helpers


@given(st.binary(max_size=16), st.integers(0, 2**64 - 1))
def test_agent_messages_round_trip_both_transports(uid: bytes, seq: int) -> None:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=CAPABILITIES)
    assert wire.decode_agent_message(wire.split_ws_frame(wire.encode_ws(msg))) == msg
    assert wire.decode_agent_message(wire.encode_http(msg)) == msg


def test_server_messages_decode_from_both_transports() -> None:
    msg = _offer()
    assert wire.decode_server_ws_frame(wire.encode_ws(msg)) == msg
    assert wire.decode_server_message(wire.encode_http(msg)) == msg
    with pytest.raises(wire.WireError, match="malformed ServerToAgent"):
        wire.decode_server_message(b"\x0a\xff")


# timing helpers


@given(st.integers(0, 200), st.floats(0.01, 10), st.floats(0.01, 100), st.floats(0, 1))
def test_backoff_is_jittered_below_a_doubling_cap(
    failures: int, initial: float, maximum: float, jitter: float
) -> None:
    delay = backoff_delay(failures, initial, maximum, jitter)
    cap = min(maximum, initial * 2**failures)
    assert 0 <= delay <= cap + 1e-9
    assert delay == pytest.approx(jitter * cap)


def test_retry_after_header() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", lambda: 1445412470.0) == 10.0


# settings, stats and the command line


def test_endpoint_follows_the_transport() -> None:
    assert endpoint_for("http://h:4320/v1/opamp", "ws") == "ws://h:4320/v1/opamp"
    assert endpoint_for("wss://h/v1/opamp", "http") == "https://h/v1/opamp"
    assert transport_of("ws://h/v1/opamp") == "ws"
    assert transport_of("http://h/v1/opamp") == "http"
    with pytest.raises(ValueError, match="not an http"):
        endpoint_for("ftp://h/x", "ws")


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="agents"):
        SimulationSettings(endpoint="ws://h/v1/opamp", agents=0)
    with pytest.raises(ValueError, match="heartbeat"):
        SimulationSettings(endpoint="http://h/v1/opamp", agents=1, transport="http", heartbeat=0)


def test_simulate_without_options_is_the_settings_defaults() -> None:
    endpoint = "ws://127.0.0.1:4320/v1/opamp"
    args = build_parser().parse_args(["simulate", "--endpoint", endpoint, "--agents", "3"])
    assert settings_from_args(args) == SimulationSettings(endpoint=endpoint, agents=3)


def test_cli_arguments_become_settings() -> None:
    args = build_parser().parse_args(
        [
            "simulate",
            "--endpoint",
            "http://127.0.0.1:4320/v1/opamp",
            "--agents",
            "20",
            "--fail-configs-matching",
            "BROKEN",
            "--pod-names",
            "web",
            "--namespace",
            "shop",
            "--heartbeat",
            "2",
            "--duration",
            "9",
            "--connect-rate",
            "50",
            "--stop-when",
            "settled",
            "--ca-file",
            "/etc/opamp/ca.crt",
        ]
    )
    assert isinstance(args, argparse.Namespace)
    settings = settings_from_args(args)
    assert settings.transport == "http"
    assert settings.url == "http://127.0.0.1:4320/v1/opamp"
    options = settings.agent_options()
    assert options.fail_text == b"BROKEN"
    assert (options.pod_prefix, options.namespace, options.heartbeat) == ("web", "shop", 2.0)
    assert (settings.duration, settings.connect_rate, settings.stop_when) == (9.0, 50.0, "settled")
    assert settings.ca_file == "/etc/opamp/ca.crt"


def test_every_tls_agent_shares_one_context_trusting_the_ca_file(tmp_path: Path) -> None:
    _, _, ca_pem = self_signed(tmp_path, ["127.0.0.1"], "simulator test")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(ca_pem)
    for settings in (
        SimulationSettings(endpoint="wss://127.0.0.1:1/v1/opamp", agents=2, ca_file=str(ca)),
        SimulationSettings(endpoint="https://h/", agents=2, transport="http", ca_file=str(ca)),
    ):
        context = settings.ssl_context()
        assert context is not None
        assert context.cert_store_stats()["x509_ca"] == 1, "the CA file, not the system's"
        assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    sim = Simulation(SimulationSettings(endpoint="wss://127.0.0.1:1/v1/opamp", agents=2))
    assert sim.fleet.ssl_context is not None, "one context for all agents, system CAs"
    assert SimulationSettings(endpoint="ws://h/v1/opamp", agents=1).ssl_context() is None


def test_stats_time_a_config_until_every_agent_applied_it() -> None:
    stats = SimulationStats(3)
    for i in range(3):
        stats.agent_connected(i, 0.1 * i)
        stats.full_state_acked(i, 0.1 * i + 0.05, 0.05)
    assert stats.all_connected_at == pytest.approx(0.2)
    stats.config_offered(0, b"\x01", 1.0)
    stats.config_offered(1, b"\x01", 1.2)
    stats.config_reported(0, b"\x01", APPLIED, "", 1.5)
    stats.config_reported(1, b"\x01", FAILED, "nope", 1.6)
    assert stats.satisfied("connected")
    assert not stats.satisfied("settled")
    stats.config_reported(2, b"\x01", APPLIED, "", 3.0)
    assert stats.satisfied("settled")
    assert not stats.satisfied("applied")
    stats.config_reported(1, b"\x01", APPLIED, "", 4.0)
    assert stats.satisfied("applied")
    stats.agent_disconnected(2, 5.0)
    stats.agent_connected(2, 5.5)
    summary = stats.summary(6.0, "test")
    data = json.loads(summary.to_json())
    assert data["configs"] == [
        {
            "hash": "01",
            "first_offer_s": 1.0,
            "offered": 2,
            "applied": 3,
            "failed": 0,
            "all_applied_s": 3.0,
            "all_reported_s": 2.0,
            "error_example": "nope",
        }
    ]
    assert data["reconnects"] == 1
    assert data["recoveries_s"] == [0.5]
    assert data["all_connected_s"] == 0.2
    assert data["ack_latency_s"]["p50"] == 0.05
    assert "connected 3/3" in stats.progress_line(6.0)


def test_stats_keep_when_each_agent_was_last_answered_and_last_throttled() -> None:
    """What a reconnect storm is timed by: per agent, the answer on its latest connection
    (a second answer on one connection changes nothing), and the server's last refusal."""
    stats = SimulationStats(2)
    assert stats.acked_at == [None, None]
    stats.agent_connected(0, 0.5)
    stats.full_state_acked(0, 1.0, 1.0)
    stats.full_state_acked(0, 1.5, None)
    assert stats.acked_at == [1.0, None]
    stats.agent_disconnected(0, 2.0)
    assert stats.acked_at[0] == 1.0, "kept until the agent is answered again"
    stats.agent_throttled(0, 2.5)
    stats.agent_throttled(1, 2.6)
    stats.agent_throttled(0, 40.0)
    stats.agent_connected(0, 41.0)
    stats.full_state_acked(0, 41.2, None)
    assert stats.acked_at == [41.2, None]
    assert stats.throttled_at == [40.0, 2.6]
    assert stats.throttled == 3
    assert stats.summary(50.0, "test").throttled == 3


def test_errors_are_counted_and_only_the_first_few_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = SimulationStats(1)
    for i in range(50):
        stats.error("bad message from server", f"number {i}")
    assert stats.errors["bad message from server"] == 50
    assert stats.error_examples["bad message from server"] == "number 0"
    assert len([r for r in caplog.records if "bad message" in r.getMessage()]) == 5


def test_percentiles() -> None:
    assert percentiles([]) == {}
    values = [float(i) for i in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
