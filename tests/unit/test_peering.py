"""Active/standby from kopf's peering status, as the operator reads it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opamp_operator.k8s.peering import Peer, is_active, parse_peers, random_priority

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _seen(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat()


def test_parse_peers_reads_what_kopf_writes() -> None:
    status = {
        "a/1": {"priority": 10, "lifetime": 60, "lastseen": _seen(5)},
        "b/2": {"priority": 20, "lifetime": 30, "lastseen": "2026-11-22T11:59:00"},
        "junk": "not a peer",
        "no-time": {"priority": 1},
    }
    peers = parse_peers(status)
    assert peers == [
        Peer("a/1", 10, NOW + timedelta(seconds=55)),
        Peer("b/2", 20, NOW - timedelta(seconds=30)),
    ]


def test_the_highest_live_priority_is_active() -> None:
    peers = [
        Peer("low", 10, NOW + timedelta(seconds=30)),
        Peer("high", 20, NOW + timedelta(seconds=30)),
    ]
    assert is_active(peers, "high", NOW)
    assert not is_active(peers, "low", NOW)


def test_a_dead_higher_peer_hands_over() -> None:
    peers = [
        Peer("low", 10, NOW + timedelta(seconds=30)),
        Peer("high", 20, NOW - timedelta(seconds=1)),
    ]
    assert is_active(peers, "low", NOW)


def test_equal_priorities_pause_both_as_kopf_does() -> None:
    peers = [Peer("a", 5, NOW + timedelta(seconds=9)), Peer("b", 5, NOW + timedelta(seconds=9))]
    assert not is_active(peers, "a", NOW)
    assert not is_active(peers, "b", NOW)


def test_not_yet_announced_is_standby() -> None:
    assert not is_active([], "me", NOW)
    assert not is_active([Peer("me", 5, NOW - timedelta(seconds=1))], "me", NOW)


def test_random_priorities_are_positive_and_vary() -> None:
    drawn = {random_priority() for _ in range(50)}
    assert min(drawn) >= 1
    assert len(drawn) > 45
