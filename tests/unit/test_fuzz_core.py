"""Whatever bytes arrive on either transport, in any order, the core answers or refuses
them and the honest agent beside them keeps being answered (tests/world/fuzzing.py; the
coverage-guided run with a million inputs is benchmarks/fuzz_opamp.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opamp_operator.opamp.proto import opamp_pb2 as pb
from world.fuzzing import CoreFuzzer, agent_messages, inputs, seeds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(inputs(), max_size=30))
def test_any_input_sequence_is_answered_or_refused_and_the_honest_agent_is_served(
    steps: list[bytes],
) -> None:
    fuzzer = CoreFuzzer()
    for data in steps:
        fuzzer.feed(data)
    outcome = fuzzer.outcome
    assert outcome.honest_answers == 1 + sum(1 for d in steps if d)
    assert outcome.refused + outcome.answered <= len(steps)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agent_messages())
def test_generated_messages_reach_the_session_and_round_trip(msg: pb.AgentToServer) -> None:
    """The structured strategy makes messages the decoder takes as they were built, so
    inputs built from it get past the wire into the session logic."""
    data = msg.SerializeToString()
    assert pb.AgentToServer.FromString(data) == msg
    fuzzer = CoreFuzzer()
    fuzzer.feed(bytes([4]) + data)
    assert fuzzer.outcome.refused == 0


def test_the_seeds_are_answered_not_refused() -> None:
    fuzzer = CoreFuzzer()
    for data in seeds():
        fuzzer.feed(data)
    assert fuzzer.outcome.refused == 0
    assert fuzzer.outcome.answered == 6
    assert fuzzer.outcome.closed == 1  # the agent_disconnect over WebSocket


def test_a_broken_invariant_is_caught() -> None:
    """The checks can fail: a reply that names another agent is refused by them."""
    fuzzer = CoreFuzzer()
    bad = pb.ServerToAgent(instance_uid=b"\x00")
    try:
        fuzzer._check_reply(bad)
    except AssertionError:
        return
    raise AssertionError("an invalid reply passed the fuzzer's checks")
