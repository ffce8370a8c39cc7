"""The decoder never fails in any way but WireError, whatever bytes arrive."""

from __future__ import annotations

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
