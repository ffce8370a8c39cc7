"""Fuzzing the sans-I/O OpAMP core: whatever bytes arrive on either transport, the server
answers or refuses them, and an honest agent beside them keeps being served.

`CoreFuzzer.feed` takes one input as a fuzzer produces it (bytes) and plays it against a
`ServerCore` the way the transports do: the first byte picks an action (a WebSocket
frame on one of a few connections, an HTTP body, opening or closing a connection, time
passing), the rest is the frame or body. After every action the honest agent sends a
heartbeat, which must be answered like any other. Used by the property tests
(tests/unit/test_fuzz_core.py) and the coverage-guided run (benchmarks/fuzz_opamp.py).

`agent_messages()` is a hypothesis strategy for AgentToServer messages built from the
descriptor, every field and nested message included, so generated inputs reach past the
decoder into the session logic; `seeds()` gives realistic messages to start mutating from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from hypothesis import strategies as st

from opamp_operator.opamp import ids, wire
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import SERVER_CAPABILITIES, AgentRecord, ServerCore
from opamp_operator.simulator.protocol import COMPONENTS

HONEST_UID = bytes.fromhex("0190f1a2b3c47d8e9fa0b1c2d3e4f506")
CONNECTIONS = 4
DESIRED = RemoteConfig.single(b"receivers: {otlp: {protocols: {grpc: {}}}}\n")


class _Desired:
    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        return DESIRED

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        return None

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        """A package offered to every agent that accepts packages, so fuzzed package
        statuses meet an offer."""
        return PACKAGE


PACKAGE = PackageOffer("", "0.150.0", "https://downloads.example/otelcol.tgz", bytes(range(32)))


@dataclasses.dataclass
class Outcome:
    """What a run of inputs did: counted, so a fuzzer's report says what it reached."""

    inputs: int = 0
    refused: int = 0  # WireError: not an OpAMP message; the transport answers with an error
    answered: int = 0
    closed: int = 0  # replies that close the WebSocket (agent_disconnect, errors)
    honest_answers: int = 0


class CoreFuzzer:
    """One ServerCore, a few WebSocket connections for hostile inputs, and the honest
    agent on a WebSocket of its own."""

    def __init__(self) -> None:
        self.core = ServerCore(desired=_Desired())
        self.now = 0.0
        self.conns = [self.core.open(self.now, peer="10.0.0.1") for _ in range(CONNECTIONS)]
        self.honest_conn = self.core.open(self.now, peer="10.0.0.2")
        self.honest_seq = 0
        self.outcome = Outcome()
        hello = pb.AgentToServer(
            instance_uid=HONEST_UID,
            capabilities=pb.AgentCapabilities_ReportsStatus
            | pb.AgentCapabilities_AcceptsRemoteConfig
            | pb.AgentCapabilities_ReportsHealth,
        )
        hello.agent_description.identifying_attributes.add(
            key="service.name"
        ).value.string_value = "honest"
        hello.health.healthy = True
        self._honest(hello)

    def feed(self, data: bytes) -> None:
        """Play one input; raises AssertionError when an invariant breaks."""
        self.outcome.inputs += 1
        if not data:
            return
        action, payload = data[0] % 8, data[1:]
        if action < CONNECTIONS:
            self._hostile(payload, self.conns[action])
        elif action == 4:
            self._hostile(payload, None)
        elif action == 5:
            which = payload[0] % CONNECTIONS if payload else 0
            self.core.close(self.conns[which], self.now)
            self.conns[which] = self.core.open(self.now, peer="10.0.0.1")
        elif action == 6:
            self.now += float(int.from_bytes(payload[:2] or b"\x01", "big"))
            self.core.tick(self.now)
        else:
            for _, offer in self.core.pending_offers():
                self._check_reply(offer, pushed=True)
        self.now += 0.001
        self._heartbeat()

    def _hostile(self, payload: bytes, conn: int | None) -> None:
        try:
            frame = wire.split_ws_frame(payload) if conn is not None else payload
            msg = wire.decode_agent_message(frame)
        except wire.WireError as exc:
            refusal = str(exc)
            assert refusal.strip(), "a refusal that says nothing"
            self.outcome.refused += 1
            return
        if msg.instance_uid == HONEST_UID:
            # Another client presenting the honest agent's uid is the duplicate-uid case
            # of the session tests, not fuzzing's: keep the honest agent's record its own.
            msg.instance_uid = b"\x01" * 16
        reply = self.core.receive(msg, self.now, conn=conn, peer="10.0.0.1")
        self._check_reply(reply.message)
        self.outcome.answered += 1
        if reply.close and conn is not None:
            self.outcome.closed += 1
            index = self.conns.index(conn)
            self.core.close(conn, self.now)
            self.conns[index] = self.core.open(self.now, peer="10.0.0.1")

    def _honest(self, msg: pb.AgentToServer) -> pb.ServerToAgent:
        msg.sequence_num = self.honest_seq
        self.honest_seq += 1
        reply = self.core.receive(msg, self.now, conn=self.honest_conn).message
        self._check_reply(reply)
        assert reply.instance_uid == HONEST_UID, reply
        assert not reply.HasField("error_response"), reply.error_response
        self.outcome.honest_answers += 1
        return reply

    def _heartbeat(self) -> None:
        self._honest(pb.AgentToServer(instance_uid=HONEST_UID))
        record = self.core.agents.get(HONEST_UID)
        assert record is not None, "the honest agent lost its record"
        assert record.connected, "the honest agent was disconnected"

    @staticmethod
    def _check_reply(reply: pb.ServerToAgent, pushed: bool = False) -> None:
        """A reply names a valid agent and the server's capabilities; a message the server
        pushes may leave capabilities unset (the spec: MUST in the first message only)."""
        allowed = {SERVER_CAPABILITIES, 0} if pushed else {SERVER_CAPABILITIES}
        assert reply.capabilities in allowed, f"capabilities {reply.capabilities:#x}"
        assert ids.valid_uid(reply.instance_uid), f"instance uid {reply.instance_uid.hex()!r}"
        if pushed:
            assert reply.ListFields(), "an empty message pushed"
        data = reply.SerializeToString()
        assert wire.decode_server_message(data) == reply


# ---- inputs -----------------------------------------------------------------------------

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: st.text(max_size=40),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=40),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: st.integers(0, 2**64 - 1),
}
# Message fields that hold a config body: worth some real YAML, not only random bytes.
_BODIES = st.sampled_from(
    [
        b"receivers: {otlp: {protocols: {grpc: {}}}}\nexporters: {debug: {}}\n",
        b"a: &a [1, 2]\nb: *a\n",
        b"key: ${env:SECRET}\n",
        b"\xff\xfe not utf-8",
    ]
)


def _field(field: Any, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_fields(field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.sampled_from(numbers) | st.integers(-5, 2**31 - 1)
    if field.name == "body":
        return _BODIES | _SCALARS[field.type]
    if field.name == "instance_uid":
        return st.sampled_from([b"\x02" * 16, b"\x03" * 16, b"", b"\x00" * 16]) | st.binary(
            max_size=20
        )
    return _SCALARS[field.type]


@st.composite
def _message(draw: st.DrawFn, descriptor: Any, depth: int) -> dict[str, Any]:
    names = [f.name for f in descriptor.fields]
    chosen = draw(st.sets(st.sampled_from(names), max_size=6)) if names else set()
    fields = {f.name: f for f in descriptor.fields}
    out: dict[str, Any] = {}
    for name in sorted(chosen):
        field = fields[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth >= 4:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = _field(field.message_type.fields_by_name["key"], depth)
            value = _field(field.message_type.fields_by_name["value"], depth)
            out[name] = draw(st.dictionaries(key, value, max_size=3))
        elif field.is_repeated:
            out[name] = draw(st.lists(_field(field, depth), max_size=3))
        else:
            out[name] = draw(_field(field, depth))
    return out


def message_fields(descriptor: Any, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Field values for a message of `descriptor` (upb's or the pure-Python one)."""
    return _message(descriptor, depth)


def _build(cls: type[pb.AgentToServer], fields: dict[str, Any]) -> pb.AgentToServer:
    msg = cls()
    _fill(msg, fields)
    return msg


def _fill(msg: Any, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif field.is_repeated:
            for item in value:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill(target.add(), item)
                else:
                    target.append(item)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(target, value)
            target.SetInParent()
        else:
            _set_scalar(msg, field, value)


def _set_scalar(msg: Any, field: Any, value: Any) -> None:
    if field.type == FieldDescriptor.TYPE_ENUM and value not in field.enum_type.values_by_number:
        # Closed enums refuse unknown numbers in Python; on the wire they still arrive.
        return
    setattr(msg, field.name, value)


def agent_messages() -> st.SearchStrategy[pb.AgentToServer]:
    """Any AgentToServer, every field and nested message a candidate."""
    return message_fields(pb.AgentToServer.DESCRIPTOR).map(
        lambda fields: _build(pb.AgentToServer, fields)
    )


def inputs() -> st.SearchStrategy[bytes]:
    """One fuzz input as `CoreFuzzer.feed` reads it: an action byte, then a WebSocket frame
    or HTTP body made of a structured message, sometimes damaged, or of random bytes."""
    body = st.one_of(
        agent_messages().map(lambda m: m.SerializeToString()),
        agent_messages()
        .flatmap(
            lambda m: st.tuples(st.just(m.SerializeToString()), st.integers(0, 64), st.binary())
        )
        .map(lambda t: t[0][: t[1]] + t[2]),
        st.binary(max_size=256),
    )

    def frame(action: int, data: bytes) -> bytes:
        header = wire.WS_HEADER if action < CONNECTIONS else b""
        return bytes([action]) + header + data

    return st.tuples(st.integers(0, 7), body).map(lambda t: frame(*t))


def seeds() -> Iterator[bytes]:
    """Realistic inputs to start mutating from: the simulator's messages on every action."""
    first = pb.AgentToServer(instance_uid=b"\x02" * 16, capabilities=0xFFFF)
    first.agent_description.identifying_attributes.add(key="service.name").value.string_value = "s"
    first.available_components.CopyFrom(COMPONENTS)
    first.effective_config.config_map.config_map["c.yaml"].body = b"a: 1\n"
    first.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
    first.health.healthy = True
    beat = pb.AgentToServer(instance_uid=b"\x02" * 16, sequence_num=1)
    bye = pb.AgentToServer(instance_uid=b"\x03" * 16)
    bye.agent_disconnect.SetInParent()
    for msg in (first, beat, bye):
        data = msg.SerializeToString()
        yield bytes([0]) + wire.WS_HEADER + data
        yield bytes([4]) + data
    yield bytes([5, 0])
    yield bytes([6, 0, 60])
    yield bytes([7])
