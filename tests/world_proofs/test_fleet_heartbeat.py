"""A fleet's heartbeat interval reaches opamp-go agents that accept OpAMP connection
settings: offered with the URL each connected to, applied (the server counts their
messages at the new interval), offered again when the fleet's interval changes, and the
agents stay connected, one of them reconnecting with the offer as opampsupervisor does."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest

from world.collector import JsonlProcess, start_go_agent
from world.operator import ServeProcess, start_serve, write_fleets

pytestmark = pytest.mark.world

CONFIG = "receivers:\n  otlp:\n    protocols:\n      http: {}\n"


def _fleets(seconds: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "beating",
            "selector": {"service.name": "beating"},
            "heartbeatIntervalSeconds": seconds,
            "config": CONFIG,
        }
    ]


def _agents(server: ServeProcess) -> dict[str, dict[str, Any]]:
    return {a["instance_uid"].replace("-", ""): a for a in server.agents()}


def _message_times(server: ServeProcess, uids: list[str], seconds: float) -> dict[str, list[float]]:
    """Per agent, when the server's count of its messages went up, watched for `seconds`
    (a measurement: a fixed window, polled every 0.1 s)."""
    counts = {uid: _agents(server)[uid]["messages"] for uid in uids}
    times: dict[str, list[float]] = {uid: [] for uid in uids}
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        for uid, agent in _agents(server).items():
            if uid in counts and agent["messages"] > counts[uid]:
                counts[uid] = agent["messages"]
                times[uid].append(now - start)
        time.sleep(0.1)
    return times


def _drained(agent: JsonlProcess) -> list[dict[str, Any]]:
    """Every event the agent has printed so far."""
    while True:
        try:
            agent.seen.append(agent.events.get_nowait())
        except queue.Empty:
            return agent.seen


def _wait_count(agent: JsonlProcess, event: str, count: int, timeout: float = 10.0) -> None:
    """Wait until the agent has printed `event` `count` times."""
    deadline = time.monotonic() + timeout
    while sum(e["event"] == event for e in _drained(agent)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {count} {event!r} events: {agent.seen[-10:]}")
        time.sleep(0.05)


def _offers(agent: JsonlProcess) -> list[int]:
    return [
        e["heartbeat_interval_seconds"]
        for e in _drained(agent)
        if e["event"] == "opamp_connection_settings"
    ]


def test_a_fleets_interval_is_offered_applied_and_changed(tmp_path: Path) -> None:
    fleets = write_fleets(tmp_path / "fleets.yaml", _fleets(2))
    with (
        start_serve(fleets, tmp_path, "--reload-seconds=0.2") as server,
        # As opampsupervisor: a new client with what the offer carries; no status.
        start_go_agent(
            server.ws_url, "--heartbeat=30s", "--service-name=beating", "--opamp-settings=reconnect"
        ) as supervisor_like,
        # Keeps its connection and reports ConnectionSettingsStatus; polls over HTTP.
        start_go_agent(
            server.http_url,
            "--heartbeat=30s",
            "--service-name=beating",
            "--opamp-settings=apply",
            "--report-settings-status",
        ) as reporting,
    ):
        ws_uid = supervisor_like.wait_for("started")["instance_uid"]
        http_uid = reporting.wait_for("started")["instance_uid"]
        for agent, url in ((supervisor_like, server.ws_url), (reporting, server.http_url)):
            offer = agent.wait_for("opamp_connection_settings")
            assert offer["destination_endpoint"] == url  # the URL it connected with
            assert offer["heartbeat_interval_seconds"] == 2
            assert (offer["headers"], offer["certificate"], offer["tls"]) == (0, False, False)
            assert "error" not in offer
        supervisor_like.wait_for("reconnecting", where=lambda e: e["url"] == server.ws_url)
        _wait_count(supervisor_like, "connected", 2)  # its new client is connected
        applied = server.wait_agent(
            lambda a: (a["connection_settings_status"] or {}).get("status") == "APPLIED",
            "the HTTP agent to report the offer APPLIED",
            timeout=10,
        )
        assert applied["heartbeat_seconds"] == 2  # confirmed: judged by 2 s
        assert _agents(server)[ws_uid]["heartbeat_seconds"] == 30  # unconfirmed: 30 s

        # Both heartbeat (or poll) every 2 s now, not every 30 s as started.
        times = _message_times(server, [ws_uid, http_uid], 6.5)
        for uid, seen in times.items():
            gaps = [b - a for a, b in zip([0.0, *seen], seen, strict=False)]
            assert 2 <= len(seen) <= 5, (uid, seen)
            assert max(gaps) < 3.5, (uid, seen)

        write_fleets(fleets, _fleets(1))  # the fleet's interval changes: offered again
        for agent in (supervisor_like, reporting):
            agent.wait_for(
                "opamp_connection_settings", where=lambda e: e["heartbeat_interval_seconds"] == 1
            )
        server.wait_agent(
            lambda a: (
                a["instance_uid"].replace("-", "") == http_uid and a["heartbeat_seconds"] == 1
            ),
            "the HTTP agent's APPLIED status for 1 s",
            timeout=10,
        )
        _wait_count(supervisor_like, "reconnecting", 2)
        _wait_count(supervisor_like, "connected", 3)

        # Still connected, under the same uids, offered each interval once.
        now = server.wait_agent(
            lambda a: (
                a["instance_uid"].replace("-", "") == ws_uid
                and a["state"] == "connected"
                and a["offered_heartbeat_seconds"] == 1
            ),
            "the reconnected WebSocket agent",
            timeout=10,
        )
        assert now["transport"] == "websocket"
        assert _agents(server)[http_uid]["state"] == "connected"
        assert set(_agents(server)) == {ws_uid, http_uid}
        assert _offers(supervisor_like) == [2, 1]
        assert _offers(reporting) == [2, 1]
        assert not [e for e in _drained(supervisor_like) if e["event"] == "connect_failed"]
