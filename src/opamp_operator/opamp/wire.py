"""Encoding OpAMP messages for the two transports, and the protobuf backend check.

WebSocket frames carry a header before the protobuf bytes: a varint that is 0 in this
version of the spec. Plain HTTP bodies are the bare protobuf bytes, gzip-compressed when
the agent says so (Inflater).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
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


_GZIP_WBITS = 16 + zlib.MAX_WBITS
CONTENT_ENCODINGS = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": zlib.MAX_WBITS}
"""Content-Encodings of request bodies the server decompresses: gzip (the spec's), and
deflate (a zlib stream) as HTTP defines it."""


class Inflater:
    """A compressed request body, decompressed a bounded step at a time as it arrives.

    A few KiB of gzip can inflate to gigabytes: no call here returns more than `step`
    bytes, so the caller can count what it has, stop at its limit and refuse the rest
    before it is ever decompressed. Concatenated gzip members are one body, as RFC 1952
    allows."""

    def __init__(self, encoding: str, step: int = 256 * 1024) -> None:
        if encoding not in CONTENT_ENCODINGS:
            raise WireError(f"unsupported Content-Encoding {encoding!r} (gzip or deflate)")
        self.encoding = encoding
        self._wbits = CONTENT_ENCODINGS[encoding]
        self._step = step
        self._inflating = zlib.decompressobj(self._wbits)
        self._fed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decompressed bytes of `data`, at most `step` at a time."""
        self._fed = self._fed or bool(data)
        while True:
            if self._inflating.eof and data:
                if self._wbits != _GZIP_WBITS:
                    raise WireError("data after the end of the deflate stream")
                self._inflating = zlib.decompressobj(self._wbits)  # the next gzip member
            try:
                out = self._inflating.decompress(data, self._step)
            except zlib.error as exc:
                raise WireError(f"request body is not valid {self.encoding}: {exc}") from None
            eof = self._inflating.eof
            data = self._inflating.unused_data if eof else self._inflating.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < self._step:
                return

    def finish(self) -> None:
        """The body has ended: it must not end inside a compressed stream."""
        if self._fed and not self._inflating.eof:
            raise WireError(f"request body ends inside its {self.encoding} stream")


class FrameCounter:
    """Follows the frames of a client's WebSocket byte stream (RFC 6455 section 5.2)
    without keeping them: the payload bytes of data frames seen so far, and whether a
    message has begun and not ended. Control frames (ping, pong, close) are not counted:
    they are answered at once, never held. Fed from the first byte after the handshake,
    which a client may not send before it has the server's answer."""

    def __init__(self) -> None:
        self.data_bytes = 0
        self.in_message = False
        self._head = bytearray()
        self._in_payload = False
        self._left = 0
        self._data = False
        self._fin = False

    def feed(self, chunk: bytes) -> None:
        i, n = 0, len(chunk)
        while i < n:
            if not self._in_payload:
                take = min(self._header_size() - len(self._head), n - i)
                self._head += chunk[i : i + take]
                i += take
                if len(self._head) == self._header_size():
                    self._start_frame()
            else:
                take = min(self._left, n - i)
                if self._data:
                    self.data_bytes += take
                self._left -= take
                i += take
            if self._in_payload and self._left == 0:
                self._end_frame()

    def _header_size(self) -> int:
        if len(self._head) < 2:
            return 2
        code = self._head[1] & 0x7F
        extended = 2 if code == 126 else 8 if code == 127 else 0
        return 2 + extended + (4 if self._head[1] & 0x80 else 0)

    def _start_frame(self) -> None:
        first, second = self._head[0], self._head[1]
        code = second & 0x7F
        if code == 126:
            length = int.from_bytes(self._head[2:4], "big")
        elif code == 127:
            length = int.from_bytes(self._head[2:10], "big")
        else:
            length = code
        self._data = first & 0x0F < 0x8
        self._fin = bool(first & 0x80)
        if self._data:
            self.in_message = True
        self._left = length
        self._in_payload = True
        self._head.clear()

    def _end_frame(self) -> None:
        if self._data and self._fin:
            self.in_message = False
        self._in_payload = False
