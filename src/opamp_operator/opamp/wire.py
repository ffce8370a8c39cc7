"""Encoding OpAMP messages for the two transports, and the protobuf backend check.

WebSocket frames carry a header before the protobuf bytes: a varint that is 0 in this
version of the spec. Plain HTTP bodies are the bare protobuf bytes.
"""

from __future__ import annotations

from google.protobuf.internal import api_implementation
from google.protobuf.message import DecodeError

from opamp_operator.opamp.proto import opamp_pb2 as pb

WS_HEADER = b"\x00"
_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """Bytes that are not an OpAMP message; the text says what was wrong, for the peer."""


def protobuf_backend() -> str:
    """'upb' is the fast C backend; 'python' is 20-140x slower and should be fixed."""
    return str(api_implementation.Type())


def _read_varint(data: bytes) -> tuple[int, int]:
    """(value, bytes consumed) of the varint at the start of `data`."""
    value = 0
    for i, byte in enumerate(data[:_MAX_VARINT_BYTES]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise WireError("WebSocket message header is not a complete varint")


def split_ws_frame(frame: bytes) -> bytes:
    """The protobuf payload of a WebSocket binary frame, after checking its header."""
    header, used = _read_varint(frame)
    if header != 0:
        raise WireError(f"unsupported WebSocket message header {header} (expected 0)")
    return frame[used:]


def decode_agent_message(payload: bytes) -> pb.AgentToServer:
    msg = pb.AgentToServer()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise WireError(f"malformed AgentToServer protobuf: {exc}") from None
    return msg


def encode_ws(msg: pb.ServerToAgent) -> bytes:
    return WS_HEADER + msg.SerializeToString()


def encode_http(msg: pb.ServerToAgent) -> bytes:
    return msg.SerializeToString()


# Client side: what an agent (the simulator) sends and receives.


def encode_agent_ws(msg: pb.AgentToServer) -> bytes:
    return WS_HEADER + msg.SerializeToString()


def encode_agent_http(msg: pb.AgentToServer) -> bytes:
    return msg.SerializeToString()


def decode_server_message(payload: bytes) -> pb.ServerToAgent:
    msg = pb.ServerToAgent()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise WireError(f"malformed ServerToAgent protobuf: {exc}") from None
    return msg


def decode_server_ws_frame(frame: bytes) -> pb.ServerToAgent:
    """A ServerToAgent from a WebSocket binary frame, header checked."""
    return decode_server_message(split_ws_frame(frame))
