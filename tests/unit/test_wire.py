"""The decoder never fails in any way but WireError, whatever bytes arrive."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.opamp import wire
from opamp_operator.opamp.proto import opamp_pb2 as pb


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=512))
def test_any_frame_decodes_or_raises_wire_error(frame: bytes) -> None:
    """Any other exception would escape the transport and drop the connection silently."""
    try:
        result: pb.AgentToServer | str = wire.decode_agent_message(wire.split_ws_frame(frame))
    except wire.WireError as exc:
        result = str(exc)
    assert isinstance(result, pb.AgentToServer) or result.strip()


@settings(max_examples=500, deadline=None)
@given(
    st.builds(
        pb.AgentToServer,
        instance_uid=st.binary(max_size=16),
        sequence_num=st.integers(min_value=0, max_value=2**64 - 1),
        capabilities=st.integers(min_value=0, max_value=2**64 - 1),
    )
)
def test_round_trip_through_the_websocket_framing(msg: pb.AgentToServer) -> None:
    frame = wire.WS_HEADER + msg.SerializeToString()
    assert wire.decode_agent_message(wire.split_ws_frame(frame)) == msg


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", "not a complete varint"),
        (b"\x80", "not a complete varint"),
        (b"\x01\x08\x01", "header 1"),
        (b"\x80\x01", "header 128"),
        (b"\x00\xff\xff", "malformed AgentToServer"),
    ],
)
def test_bad_frames_say_what_is_wrong(frame: bytes, error: str) -> None:
    with pytest.raises(wire.WireError, match=error):
        wire.decode_agent_message(wire.split_ws_frame(frame))


def test_header_may_be_a_multibyte_zero() -> None:
    """0 encoded in two bytes is still header 0; the payload starts after it."""
    msg = pb.AgentToServer(sequence_num=5)
    assert (
        wire.decode_agent_message(wire.split_ws_frame(b"\x80\x00" + msg.SerializeToString())) == msg
    )


# ---- compressed request bodies ------------------------------------------------------------


def _inflate(inflater: wire.Inflater, data: bytes, chunk: int) -> list[bytes]:
    pieces = [p for i in range(0, len(data), chunk) for p in inflater.feed(data[i : i + chunk])]
    inflater.finish()
    return pieces


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**9])
def test_gzip_and_deflate_bodies_inflate_whatever_their_chunks(chunk: int) -> None:
    body = bytes(range(256)) * 3000
    zipped = gzip.compress(body[:100_000]) + gzip.compress(body[100_000:])  # two members
    assert b"".join(_inflate(wire.Inflater("gzip"), zipped, chunk)) == body
    assert b"".join(_inflate(wire.Inflater("deflate"), zlib.compress(body), chunk)) == body


def test_a_bomb_inflates_a_bounded_step_at_a_time_and_only_as_far_as_it_is_read() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(packer.compress(bytes(2**20)) for _ in range(64)) + packer.flush()
    assert len(bomb) < 100_000
    inflater = wire.Inflater("gzip", step=4096)
    pieces = inflater.feed(bomb)
    taken = [next(pieces) for _ in range(3)]  # a reader that stops at its limit
    assert [len(p) for p in taken] == [4096] * 3
    assert sum(len(p) for p in _inflate(wire.Inflater("gzip", step=65536), bomb, 8192)) == 2**26


@pytest.mark.parametrize(
    ("encoding", "data", "error"),
    [
        ("gzip", b"not gzip at all", "not valid gzip"),
        ("deflate", zlib.compress(b"a") + b"more", "after the end of the deflate stream"),
        ("gzip", gzip.compress(b"a" * 1000)[:-6], "ends inside its gzip stream"),
    ],
)
def test_a_body_that_is_not_its_encoding_is_a_wire_error(
    encoding: str, data: bytes, error: str
) -> None:
    with pytest.raises(wire.WireError, match=error):
        _inflate(wire.Inflater(encoding), data, 5)


def test_only_gzip_and_deflate_are_inflated() -> None:
    with pytest.raises(wire.WireError, match="unsupported Content-Encoding 'br'"):
        wire.Inflater("br")
    assert set(wire.CONTENT_ENCODINGS) == {"gzip", "x-gzip", "deflate"}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256), st.sampled_from(["gzip", "deflate"]))
def test_any_bytes_inflate_or_raise_wire_error(data: bytes, encoding: str) -> None:
    """Never zlib.error or anything else out of the transport's body reader."""
    try:
        result = b"".join(_inflate(wire.Inflater(encoding, step=64), data, 16))
    except wire.WireError as exc:
        result = str(exc).encode()
    assert isinstance(result, bytes)


# ---- following a client's WebSocket frames -------------------------------------------------


def _ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 65536:
        head = bytes([first, bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, bit | 127]) + n.to_bytes(8, "big")
    return head + (b"\1\2\3\4" if mask else b"") + payload


frames = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]),
        st.sampled_from([0, 1, 125, 126, 65535, 65536, 70000]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(min_value=1, max_value=70000))
def test_frames_are_followed_whatever_their_chunks(
    spec: list[tuple[int, int, bool, bool]], chunk: int
) -> None:
    stream = b"".join(_ws_frame(op, bytes(n), fin=fin, mask=mask) for op, n, fin, mask in spec)
    counter = wire.FrameCounter()
    for i in range(0, len(stream), chunk):
        counter.feed(stream[i : i + chunk])
    data = [(n, fin) for op, n, fin, _ in spec if op < 0x8]
    assert counter.data_bytes == sum(n for n, _ in data)
    assert counter.in_message is bool(data and not data[-1][1])


def test_a_message_is_in_progress_from_its_first_byte_to_its_last_fragment() -> None:
    counter = wire.FrameCounter()
    first = _ws_frame(0x2, b"a" * 1000, fin=False)
    counter.feed(first[:3])  # part of the header
    assert counter.in_message is False
    counter.feed(first[3:10])
    assert counter.in_message is True
    counter.feed(first[10:] + _ws_frame(0xA, b"") + _ws_frame(0x9, b"ping"))
    assert (counter.data_bytes, counter.in_message) == (1000, True)
    counter.feed(_ws_frame(0x0, b"b" * 10))
    assert (counter.data_bytes, counter.in_message) == (1010, False)
