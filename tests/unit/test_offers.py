"""A change to what agents should run queues their offers by itself: the core wakes the
transport, which flushes them to WebSocket agents without any caller asking."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from opamp_operator.api.models import CollectorFleetSpec
from opamp_operator.fleet.mapping import FleetSelector
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp import wire
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import AgentRecord, ServerCore
from opamp_operator.server.app import OpAMPServer

UID = bytes(range(16))


class Desired:
    """A desired-config source whose answer the test changes."""

    def __init__(self) -> None:
        self.config: RemoteConfig | None = None

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        return self.config

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        return None

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        return None


def _hello() -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=0)
    msg.capabilities = pb.AgentCapabilities_ReportsStatus | pb.AgentCapabilities_AcceptsRemoteConfig
    msg.agent_description.identifying_attributes.add(key="service.name").value.string_value = "c"
    return msg


def _counting_core() -> tuple[ServerCore, list[int]]:
    core = ServerCore()
    woken: list[int] = []
    core.wake = lambda: woken.append(1)
    return core, woken


def test_remediation_requests_and_desired_changes_wake_the_transport() -> None:
    core, woken = _counting_core()
    core.receive(_hello(), 1.0, peer="p")
    assert core.reoffer_config(UID)
    assert core.request_restart(UID) is False  # does not accept restarts: nothing to send
    core.desired_changed()
    assert len(woken) == 2
    assert core.reoffer_config(b"\x00" * 16) is False
    assert len(woken) == 2


def _record(name: str, text: str) -> FleetRecord:
    spec = CollectorFleetSpec.model_validate(
        {"selector": {"matchLabels": {"app": "x"}}, "config": {"inline": text}}
    )
    record = FleetRecord("obs", name, "uid", 1, FleetSelector("obs", name, 0.0), spec)
    record.config_text = text
    record.config = RemoteConfig.single(text.encode())
    return record


def test_operator_state_changes_queue_offers() -> None:
    core, woken = _counting_core()
    state = OperatorState(core=core)
    record = _record("f", "a: 1\n")
    state.put_fleet(record)
    assert len(woken) == 1
    assert state.set_governance(record, None) is False  # unchanged: nothing queued
    assert len(woken) == 1
    state.drop_fleet("obs/f")
    state.drop_fleet("obs/f")  # already gone
    assert len(woken) == 2


async def test_a_desired_change_reaches_a_connected_websocket_agent() -> None:
    desired = Desired()
    server = OpAMPServer(ServerCore(desired=desired))
    app: web.Application = server.app()
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/v1/opamp")
        await ws.send_bytes(wire.encode_ws(_hello()))
        first = wire.decode_server_ws_frame(await ws.receive_bytes(timeout=5))
        assert not first.HasField("remote_config")
        desired.config = RemoteConfig.single(b"receivers: {}\n")
        server.core.desired_changed()
        offer = wire.decode_server_ws_frame(await ws.receive_bytes(timeout=5))
        assert offer.remote_config.config_hash == desired.config.hash
        # Many wakes in a row: the new offer arrives, and once.
        desired.config = RemoteConfig.single(b"receivers: {otlp: {}}\n")
        for _ in range(50):
            server.core.desired_changed()
        await server.offers_flushed()
        offer = wire.decode_server_ws_frame(await ws.receive_bytes(timeout=5))
        assert offer.remote_config.config_hash == desired.config.hash
        with_timeout = asyncio.wait_for(ws.receive_bytes(), 0.3)
        try:
            extra = await with_timeout
        except TimeoutError:
            extra = None
        assert extra is None
        await ws.close()
