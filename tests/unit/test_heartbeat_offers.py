"""Heartbeat intervals offered per fleet: in an OpAMPConnectionSettings naming the URL the
agent connected to, only where that offer repeats its whole connection, again when the
fleet's interval changes, and staleness judged by what the agent may really keep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opamp_operator.api.models import CollectorFleetSpec
from opamp_operator.fleet.mapping import FleetSelector
from opamp_operator.fleet.views import PodView
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp import attributes, wire
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.endpoint import AgentEndpoint, agent_endpoint
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import (
    MAX_HEARTBEAT_SECONDS,
    AgentRecord,
    AgentState,
    CoreSettings,
    ServerCore,
    settings_hash,
)
from opamp_operator.server.app import OpAMPServer
from opamp_operator.standalone.fleets import FileFleets, FleetFileError, parse_fleets

UID = bytes(range(1, 17))
URL = "ws://opamp.example:4320/v1/opamp"
PLAIN = AgentEndpoint(URL)
CAPS = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_ReportsHeartbeat
    | pb.AgentCapabilities_AcceptsOpAMPConnectionSettings
)
STATUS = CAPS | pb.AgentCapabilities_ReportsConnectionSettingsStatus
CRD = Path(__file__).parents[2] / "deploy/crds/collectorfleets.opampoperator.io.yaml"


@dataclass
class Intervals:
    """A desired source that names the same interval for every agent."""

    heartbeat: int | None = None

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        return None

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        return self.heartbeat

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        return None


def hello(caps: int = CAPS, seq: int = 0, attrs: dict[str, str] | None = None) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=seq, capabilities=caps)
    msg.agent_description.identifying_attributes.extend(
        attributes.from_dict({"service.name": "otelcol", **(attrs or {})})
    )
    return msg


def beat(seq: int) -> pb.AgentToServer:
    return pb.AgentToServer(instance_uid=UID, sequence_num=seq)


def settings_status(digest: bytes, status: int) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=1)
    msg.connection_settings_status.last_connection_settings_hash = digest
    msg.connection_settings_status.status = status  # type: ignore[assignment]
    return msg


def core_with(heartbeat: int | None, default: int | None = None) -> ServerCore:
    return ServerCore(CoreSettings(offer_heartbeat_seconds=default), desired=Intervals(heartbeat))


# ---- the endpoint the transport reports ---------------------------------------------


def endpoint(**overrides: Any) -> AgentEndpoint:
    request: dict[str, Any] = {
        "websocket": True,
        "tls": False,
        "host": "opamp.example:4320",
        "target": "/v1/opamp",
        "authorization": False,
    }
    return agent_endpoint(**(request | overrides))


def test_the_endpoint_is_the_url_the_agent_connected_to() -> None:
    assert endpoint() == AgentEndpoint(URL)
    assert endpoint().repeatable
    assert endpoint(websocket=False).url == "http://opamp.example:4320/v1/opamp"
    assert endpoint(host="[::1]:4320").url == "ws://[::1]:4320/v1/opamp"
    assert endpoint(host="opamp.example").url == "ws://opamp.example/v1/opamp"
    secure = endpoint(tls=True)
    assert (secure.url, secure.repeatable) == ("wss://opamp.example:4320/v1/opamp", False)
    assert endpoint(tls=True, websocket=False).url.startswith("https://")


@pytest.mark.parametrize(
    "overrides",
    [
        {"host": None},
        {"host": ""},
        {"host": "user@opamp.example"},
        {"host": "opamp.example/x"},
        {"host": "a b"},
        {"target": "/v1/opamp?token=secret"},
        {"forwarded_host": "public.example"},
        {"forwarded": 'for=1.2.3.4;host="public.example"'},
        {"forwarded_prefix": "/opamp"},
    ],
)
def test_no_url_when_the_request_does_not_tell_it_reliably(overrides: dict[str, Any]) -> None:
    found = endpoint(**overrides)
    assert found.url == ""
    assert not found.repeatable


def test_a_proxy_that_terminated_tls_makes_the_connection_tls() -> None:
    assert endpoint(forwarded_proto="https").tls
    assert endpoint(forwarded_proto="wss, http").tls
    assert endpoint(forwarded="for=1.2.3.4;proto=https").tls
    assert not endpoint(forwarded_proto="http").tls
    same_host = endpoint(forwarded_host="OPAMP.example:4320", forwarded_proto="http")
    assert same_host.repeatable


def test_an_agent_that_sent_credentials_cannot_be_repeated() -> None:
    assert not endpoint(authorization=True).repeatable


# ---- the offer ----------------------------------------------------------------------


def test_the_offer_names_the_agents_url_and_its_fleets_interval() -> None:
    core = core_with(10)
    reply = core.receive(hello(), now=0.0, endpoint=PLAIN)
    offer = reply.message.connection_settings
    assert offer.opamp.destination_endpoint == URL
    assert offer.opamp.heartbeat_interval_seconds == 10
    assert offer.hash == settings_hash(URL, 10)
    assert not offer.opamp.HasField("headers")
    assert not offer.opamp.HasField("tls")
    agent = core.agents[UID]
    assert agent.offered_heartbeat_seconds == 10
    # once: not in the next reply
    assert not core.receive(beat(1), now=1.0, endpoint=PLAIN).message.HasField(
        "connection_settings"
    )


def test_without_a_fleet_interval_the_process_default_is_offered() -> None:
    reply = core_with(None, default=20).receive(hello(), now=0.0, endpoint=PLAIN)
    assert reply.message.connection_settings.opamp.heartbeat_interval_seconds == 20
    assert (
        not core_with(None)
        .receive(hello(), now=0.0, endpoint=PLAIN)
        .message.HasField("connection_settings")
    )


def test_a_fleet_interval_of_zero_offers_nothing_even_with_a_default() -> None:
    core = core_with(0, default=20)
    assert not core.receive(hello(), now=0.0, endpoint=PLAIN).message.HasField(
        "connection_settings"
    )
    assert core.agents[UID].offered_heartbeat_seconds is None


@pytest.mark.parametrize(
    "caps",
    [
        CAPS & ~pb.AgentCapabilities_AcceptsOpAMPConnectionSettings,
        CAPS & ~pb.AgentCapabilities_ReportsHeartbeat,
    ],
)
def test_no_offer_to_an_agent_that_cannot_take_one_or_does_not_heartbeat(caps: int) -> None:
    reply = core_with(10).receive(hello(caps), now=0.0, endpoint=PLAIN)
    assert not reply.message.HasField("connection_settings")


@pytest.mark.parametrize(
    "how",
    [
        None,
        AgentEndpoint(""),
        AgentEndpoint("wss://opamp.example:4320/v1/opamp", tls=True),
        AgentEndpoint(URL, credentials=True),
    ],
)
def test_no_offer_where_it_would_not_repeat_the_connection(how: AgentEndpoint | None) -> None:
    """opampsupervisor would reconnect without its headers, CA or client certificate."""
    core = core_with(10)
    assert not core.receive(hello(), now=0.0, endpoint=how).message.HasField("connection_settings")
    assert core.agents[UID].heartbeat_seconds == 30


def test_a_changed_interval_is_offered_again_to_a_websocket_agent() -> None:
    desired = Intervals(10)
    core = ServerCore(desired=desired)
    conn = core.open(0.0, endpoint=PLAIN)
    first = core.receive(hello(), now=0.0, conn=conn)
    assert first.message.connection_settings.opamp.heartbeat_interval_seconds == 10
    assert core.pending_offers() == []  # nothing changed
    desired.heartbeat = 60
    core.desired_changed()
    [(sent_on, offer)] = core.pending_offers()
    assert sent_on == conn
    assert offer.connection_settings.opamp.heartbeat_interval_seconds == 60
    assert offer.connection_settings.opamp.destination_endpoint == URL
    assert offer.connection_settings.hash == settings_hash(URL, 60)
    assert core.pending_offers() == []


def test_a_reconnect_after_an_offer_is_not_offered_it_again() -> None:
    """opampsupervisor reconnects on every offer: offering again on the new connection
    would have it reconnect for ever."""
    core = core_with(10)
    conn = core.open(0.0, endpoint=PLAIN)
    assert core.receive(hello(), now=0.0, conn=conn).message.HasField("connection_settings")
    core.close(conn, 1.0)
    again = core.open(1.0, endpoint=PLAIN)
    reply = core.receive(hello(seq=0), now=1.0, conn=again)
    assert not reply.message.HasField("connection_settings")
    assert core.agents[UID].state is AgentState.CONNECTED


# ---- what silence is judged by ------------------------------------------------------


def stale_at(core: ServerCore, last_seen: float, until: float) -> float | None:
    """When tick() first marks the agent stale, ticking every second to `until`."""
    now = last_seen
    while now <= until:
        core.tick(now)
        if core.agents[UID].state is AgentState.STALE:
            return now
        now += 1.0
    return None


def test_a_shorter_offer_never_taken_does_not_make_the_agent_stale() -> None:
    core = core_with(5)
    core.receive(hello(), now=0.0, endpoint=PLAIN)
    agent = core.agents[UID]
    assert agent.heartbeat_seconds == 30  # the default until it says it applied 5
    assert stale_at(core, 0.0, 89.0) is None
    assert stale_at(core, 89.0, 95.0) == 91.0


def test_a_longer_offer_is_waited_for_at_once() -> None:
    """It may have taken 120 s without saying so: silence is judged by that."""
    core = core_with(120)
    core.receive(hello(), now=0.0, endpoint=PLAIN)
    assert core.agents[UID].heartbeat_seconds == 120
    assert stale_at(core, 0.0, 359.0) is None


def test_an_applied_offer_is_followed() -> None:
    core = core_with(5)
    core.receive(hello(STATUS), now=0.0, endpoint=PLAIN)
    core.receive(
        settings_status(settings_hash(URL, 5), pb.ConnectionSettingsStatuses_APPLYING),
        now=0.5,
        endpoint=PLAIN,
    )
    assert core.agents[UID].heartbeat_seconds == 30
    applied = settings_status(settings_hash(URL, 5), pb.ConnectionSettingsStatuses_APPLIED)
    applied.sequence_num = 2
    core.receive(applied, now=1.0, endpoint=PLAIN)
    assert core.agents[UID].heartbeat_seconds == 5
    assert stale_at(core, 1.0, 30.0) == 17.0


def test_a_failed_or_foreign_status_leaves_the_bound() -> None:
    """opamp-go applies an offered interval even when it reports the offer FAILED."""
    core = core_with(60)
    core.receive(hello(STATUS), now=0.0, endpoint=PLAIN)
    failed = settings_status(settings_hash(URL, 60), pb.ConnectionSettingsStatuses_FAILED)
    core.receive(failed, now=1.0, endpoint=PLAIN)
    assert core.agents[UID].heartbeat_seconds == 60
    other = settings_status(b"someone else's", pb.ConnectionSettingsStatuses_APPLIED)
    other.sequence_num = 2
    core.receive(other, now=2.0, endpoint=PLAIN)
    assert core.agents[UID].heartbeat_seconds == 60


def test_a_changed_interval_is_judged_by_the_longest_until_applied() -> None:
    desired = Intervals(60)
    core = ServerCore(desired=desired)
    conn = core.open(0.0, endpoint=PLAIN)
    core.receive(hello(STATUS), now=0.0, conn=conn)
    desired.heartbeat = 10
    core.desired_changed()
    assert len(core.pending_offers()) == 1
    agent = core.agents[UID]
    assert agent.heartbeat_seconds == 60  # it may still keep 60
    applied = settings_status(settings_hash(URL, 10), pb.ConnectionSettingsStatuses_APPLIED)
    core.receive(applied, now=1.0, conn=conn)
    assert agent.heartbeat_seconds == 10


def test_a_confirmation_holds_for_its_connection_only() -> None:
    """A restarted agent may have lost the interval: back to the bound until it says
    again that it runs the offer (clients with the capability do, on connecting)."""
    core = core_with(5)
    conn = core.open(0.0, endpoint=PLAIN)
    core.receive(hello(STATUS), now=0.0, conn=conn)
    applied = settings_status(settings_hash(URL, 5), pb.ConnectionSettingsStatuses_APPLIED)
    core.receive(applied, now=1.0, conn=conn)
    assert core.agents[UID].heartbeat_seconds == 5
    core.close(conn, 2.0)
    again = core.open(3.0, endpoint=PLAIN)
    core.receive(hello(STATUS), now=3.0, conn=again)
    assert core.agents[UID].heartbeat_seconds == 30
    applied.sequence_num = 1
    core.receive(applied, now=4.0, conn=again)
    assert core.agents[UID].heartbeat_seconds == 5


def test_an_agent_running_the_offer_already_is_not_offered_it_again() -> None:
    """After the server restarts: the agent's first message says it applied this very
    offer (the hash is the same in every server process)."""
    core = core_with(5)
    msg = hello(STATUS)
    msg.connection_settings_status.last_connection_settings_hash = settings_hash(URL, 5)
    msg.connection_settings_status.status = pb.ConnectionSettingsStatuses_APPLIED
    reply = core.receive(msg, now=0.0, endpoint=PLAIN)
    assert not reply.message.HasField("connection_settings")
    agent = core.agents[UID]
    assert (agent.offered_heartbeat_seconds, agent.heartbeat_seconds) == (5, 5)


# ---- the transport: the URL from the request ----------------------------------------


async def test_the_transport_offers_the_url_each_agent_used() -> None:
    server = OpAMPServer(core_with(7))
    app: web.Application = server.app()
    async with TestClient(TestServer(app)) as client:
        host = f"{client.host}:{client.port}"
        ws = await client.ws_connect("/v1/opamp")
        await ws.send_bytes(wire.encode_ws(hello()))
        got = wire.decode_server_ws_frame(await ws.receive_bytes(timeout=5))
        assert got.connection_settings.opamp.destination_endpoint == f"ws://{host}/v1/opamp"
        assert got.connection_settings.opamp.heartbeat_interval_seconds == 7
        await ws.close()

        headers = {"Content-Type": "application/x-protobuf"}
        msg = hello()
        msg.instance_uid = bytes(range(101, 117))
        response = await client.post("/v1/opamp", data=wire.encode_http(msg), headers=headers)
        got = wire.decode_server_message(await response.read())
        assert got.connection_settings.opamp.destination_endpoint == f"http://{host}/v1/opamp"

        msg.instance_uid = bytes(range(201, 217))
        with_token = headers | {"Authorization": "Bearer t"}
        response = await client.post("/v1/opamp", data=wire.encode_http(msg), headers=with_token)
        got = wire.decode_server_message(await response.read())
        assert not got.HasField("connection_settings")


# ---- where the interval comes from --------------------------------------------------


def test_the_settings_bound_the_default_interval() -> None:
    assert CoreSettings(offer_heartbeat_seconds=0).offer_heartbeat_seconds == 0
    with pytest.raises(ValueError, match="offer_heartbeat_seconds"):
        CoreSettings(offer_heartbeat_seconds=MAX_HEARTBEAT_SECONDS + 1)
    with pytest.raises(ValueError, match="offer_heartbeat_seconds"):
        CoreSettings(offer_heartbeat_seconds=-1)


def test_the_crd_bounds_the_interval_as_the_core_does() -> None:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = spec["properties"]["heartbeatIntervalSeconds"]
    assert (field["minimum"], field["maximum"]) == (0, MAX_HEARTBEAT_SECONDS)
    assert "default" not in field  # unset: the operator's --heartbeat-seconds


FLEETS = """
fleets:
  - name: fast
    selector: {service.name: fast}
    heartbeatIntervalSeconds: 5
    config: "receivers: {}"
  - name: rest
    selector: {}
    config: "receivers: {}"
"""


def test_the_fleets_file_names_an_interval_per_fleet(tmp_path: Path) -> None:
    fast, rest = parse_fleets(FLEETS, tmp_path)
    assert (fast.heartbeat_seconds, rest.heartbeat_seconds) == (5, None)
    path = tmp_path / "fleets.yaml"
    path.write_text(FLEETS)
    fleets = FileFleets(path)
    core = ServerCore(CoreSettings(offer_heartbeat_seconds=20), desired=fleets)
    core.receive(hello(attrs={"service.name": "fast"}), now=0.0, endpoint=PLAIN)
    assert fleets.heartbeat_for(core.agents[UID]) == 5
    assert core.agents[UID].offered_heartbeat_seconds == 5
    core.agents[UID].description = None
    assert fleets.heartbeat_for(core.agents[UID]) is None  # rest: the flag's


@pytest.mark.parametrize("value", ["5", 5.5, True, -1, MAX_HEARTBEAT_SECONDS + 1])
def test_the_fleets_file_refuses_a_wrong_interval(value: object) -> None:
    text = FLEETS.replace("heartbeatIntervalSeconds: 5", f"heartbeatIntervalSeconds: {value!r}")
    if isinstance(value, bool):
        text = FLEETS.replace("heartbeatIntervalSeconds: 5", "heartbeatIntervalSeconds: true")
    with pytest.raises(FleetFileError, match="heartbeatIntervalSeconds"):
        parse_fleets(text, Path("."))


def _fleet(name: str, app: str, heartbeat: int | None) -> FleetRecord:
    spec = CollectorFleetSpec.model_validate(
        {
            "selector": {"matchLabels": {"app": app}},
            "config": {"inline": "receivers: {}\n"},
            "heartbeatIntervalSeconds": heartbeat,
        }
    )
    selector = FleetSelector("obs", name, 0.0, match_labels={"app": app})
    return FleetRecord("obs", name, f"uid-{name}", 1, selector, spec)


def test_the_operator_offers_the_interval_of_the_agents_fleet() -> None:
    core = ServerCore(CoreSettings(offer_heartbeat_seconds=30))
    state = OperatorState(core=core)
    core.desired = state
    state.pods["obs/p"] = PodView("obs", "p", "pod-uid", labels={"app": "fast"})
    state.put_fleet(_fleet("fast", "fast", 5))
    conn = core.open(0.0, endpoint=PLAIN)
    first = core.receive(hello(attrs={"k8s.pod.uid": "pod-uid"}), now=0.0, conn=conn)
    # not mapped yet: the operator's default
    assert first.message.connection_settings.opamp.heartbeat_interval_seconds == 30
    state.refresh()
    [(_, offer)] = core.pending_offers()
    assert offer.connection_settings.opamp.heartbeat_interval_seconds == 5
    state.put_fleet(_fleet("fast", "fast", 15))  # the spec changed
    [(_, offer)] = core.pending_offers()
    assert offer.connection_settings.opamp.heartbeat_interval_seconds == 15
    state.put_fleet(_fleet("fast", "fast", None))  # unset: the default again
    [(_, offer)] = core.pending_offers()
    assert offer.connection_settings.opamp.heartbeat_interval_seconds == 30
    state.put_fleet(_fleet("fast", "fast", 0))  # nothing more offered
    assert core.pending_offers() == []


# ---- over any sequence --------------------------------------------------------------

STATUSES = [
    pb.ConnectionSettingsStatuses_APPLIED,
    pb.ConnectionSettingsStatuses_APPLYING,
    pb.ConnectionSettingsStatuses_FAILED,
]


@settings(max_examples=200, deadline=None)
# Found by CI: 5 confirmed, 120 offered, 5 offered again (the same hash as the status on
# record), then a status of another hash. The agent may run 120: it is judged by 120.
@example(
    steps=[
        ("interval", 5),
        ("status", pb.ConnectionSettingsStatuses_APPLIED, True),
        ("interval", 120),
        ("interval", 5),
        ("status", pb.ConnectionSettingsStatuses_APPLIED, False),
    ]
)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("interval"), st.sampled_from([None, 0, 5, 30, 120])),
            st.tuples(st.just("status"), st.sampled_from(STATUSES), st.booleans()),
            st.tuples(st.just("reconnect")),
            st.tuples(st.just("beat")),
        ),
        max_size=30,
    )
)
def test_offers_and_the_judged_interval_hold_their_rules(steps: list[tuple[Any, ...]]) -> None:
    """Every offer names the URL and its own hash; an interval is never offered twice in a
    row; silence is judged by the offered interval only while the agent confirms it on
    its connection, else by nothing shorter than the default or than what it may keep."""
    desired = Intervals(10)
    core = ServerCore(desired=desired)
    conn = core.open(0.0, endpoint=PLAIN)
    seq = 0
    core.receive(hello(STATUS), now=0.0, conn=conn)
    offered: list[int] = [10]
    may_keep = {30.0, 10.0}  # what the agent may run: its own, anything offered since
    # A status confirms an offer only if reported after it: one from before an offer of
    # the same interval again carries the same hash, and says nothing of the offers in
    # between (the agent may run any of them).
    reported = True
    for step in steps:
        replies: list[pb.ServerToAgent] = []
        seq += 1
        if step[0] == "interval":
            desired.heartbeat = step[1]
            core.desired_changed()
            replies = [msg for _, msg in core.pending_offers()]
        elif step[0] == "status":
            digest = core.agents[UID].offered_settings_hash or b""
            msg = settings_status(digest if step[2] else b"other", step[1])
            msg.sequence_num = seq
            replies = [core.receive(msg, now=float(seq), conn=conn).message]
            reported = True
            if step[1] == pb.ConnectionSettingsStatuses_APPLIED and step[2]:
                may_keep = {30.0, float(offered[-1])}
        elif step[0] == "reconnect":
            core.close(conn, float(seq))
            conn = core.open(float(seq), endpoint=PLAIN)
            seq = 0
            replies = [core.receive(hello(STATUS), now=float(seq), conn=conn).message]
        else:
            replies = [core.receive(beat(seq), now=float(seq), conn=conn).message]
        for reply in replies:
            if reply.HasField("connection_settings"):
                seconds = reply.connection_settings.opamp.heartbeat_interval_seconds
                assert reply.connection_settings.opamp.destination_endpoint == URL
                assert reply.connection_settings.hash == settings_hash(URL, seconds)
                assert seconds > 0
                assert seconds != offered[-1]
                offered.append(seconds)
                may_keep.add(float(seconds))
                reported = False
        agent = core.agents[UID]
        status = agent.connection_settings_status
        confirmed = (
            reported
            and status is not None
            and status.status == pb.ConnectionSettingsStatuses_APPLIED
            and status.last_connection_settings_hash == settings_hash(URL, offered[-1])
        )
        if confirmed:
            assert agent.heartbeat_seconds == offered[-1]
        else:
            assert agent.heartbeat_seconds == max(may_keep)
