"""Encoding OpAMP messages for the two transports, and the protobuf backend check.

WebSocket frames carry a header before the protobuf bytes: a varint that is 0 in this
version of the spec. Plain HTTP bodies are the bare protobuf bytes.
"""

from __future__ import annotations

from typing import TypeVar

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


Message = pb.AgentToServer | pb.ServerToAgent
M = TypeVar("M", pb.AgentToServer, pb.ServerToAgent)


def _decode(payload: bytes, cls: type[M]) -> M:
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise WireError(f"malformed {cls.__name__} protobuf: {exc}") from None
    return msg


def decode_agent_message(payload: bytes) -> pb.AgentToServer:
    return _decode(payload, pb.AgentToServer)


def decode_server_message(payload: bytes) -> pb.ServerToAgent:
    return _decode(payload, pb.ServerToAgent)


def decode_server_ws_frame(frame: bytes) -> pb.ServerToAgent:
    """A ServerToAgent from a WebSocket binary frame, header checked (the client side)."""
    return decode_server_message(split_ws_frame(frame))


def encode_ws(msg: Message) -> bytes:
    """Either direction: the header, then the protobuf."""
    return WS_HEADER + msg.SerializeToString()


def encode_http(msg: Message) -> bytes:
    return msg.SerializeToString()
