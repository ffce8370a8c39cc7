"""How long the simulator's agents wait for the server's answers (SimulationStats.replied):
what benchmarks/loop_lag.py reads the honest agents' side of a loop stall by."""

from __future__ import annotations

import json

from opamp_operator.simulator.stats import SimulationStats, histogram_percentiles


def test_a_wait_runs_from_the_oldest_unanswered_message_to_the_next_answer() -> None:
    stats = SimulationStats(2)
    stats.agent_connected(0, 0.0)
    stats.awaiting_reply(0, 1.0)
    stats.awaiting_reply(0, 1.5)  # sent again before an answer: still waiting since 1.0
    assert stats.oldest_unanswered(2.0) == 1.0
    stats.replied(0, 2.25)
    stats.replied(0, 2.5)  # no wait left to end (a second frame, a push)
    assert stats.reply_ms == {1250: 1}
    assert stats.oldest_unanswered(3.0) is None
    stats.awaiting_reply(1, 3.0)
    stats.replied(1, 3.0001)
    assert stats.reply_ms == {1250: 1, 1: 1}, "rounded up to the millisecond"
    summary = json.loads(stats.summary(4.0, "test").to_json())
    assert summary["reply_latency_s"] == {"p50": 0.001, "p90": 1.25, "p99": 1.25, "max": 1.25}


def test_a_message_lost_with_its_connection_is_not_answered_late() -> None:
    stats = SimulationStats(1)
    stats.agent_connected(0, 0.0)
    stats.awaiting_reply(0, 1.0)
    stats.agent_disconnected(0, 5.0)
    assert stats.oldest_unanswered(6.0) is None
    stats.agent_connected(0, 7.0)
    stats.awaiting_reply(0, 7.0)
    stats.replied(0, 7.010)
    assert stats.reply_ms == {10: 1}


def test_histogram_percentiles_are_nearest_rank_over_the_counts() -> None:
    assert histogram_percentiles({}) == {}
    assert histogram_percentiles({5: 0}) == {}
    counts = {ms: 1 for ms in range(1, 101)}
    assert histogram_percentiles(counts) == {"p50": 0.05, "p90": 0.09, "p99": 0.099, "max": 0.1}
    assert histogram_percentiles({2: 98, 900: 1, 4000: 1}) == {
        "p50": 0.002,
        "p90": 0.002,
        "p99": 0.9,
        "max": 4.0,
    }
