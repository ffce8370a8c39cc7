"""Every scriptable OpAMP client against our server (`opamp-operator serve`): opamp-go
over both transports, opentelemetry-opamp-client (PyPI) and @elastic/opamp-client-node
(npm), both HTTP-only. Each connects and describes itself, gets the fleet's config and
reports it APPLIED (or FAILED), and after our server restarts — a new process that knows
nothing of it — is back with its description: its bare poll is out of sequence for the new
server, which answers with ReportFullState."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from world.collector import JsonlProcess, start_go_agent
from world.fleets import single_file_hash
from world.operator import ServeProcess, start_serve, write_fleets
from world.peers import start_node_agent, start_python_agent

pytestmark = pytest.mark.world

CONFIG = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\n"


@dataclass(frozen=True)
class Peer:
    name: str
    start: Callable[..., JsonlProcess]
    websocket: bool = False
    reports_effective_config: bool = True
    # Seconds the client waits after a failed request before it tries again.
    retry_after_failure: float = 10.0


PEERS = [
    Peer("opamp-go-ws", start_go_agent, websocket=True),
    Peer("opamp-go-http", start_go_agent),
    Peer("python", start_python_agent),
    # @elastic/opamp-client-node 0.5.0 refuses the ReportsEffectiveConfig capability.
    Peer("node", start_node_agent, reports_effective_config=False, retry_after_failure=35.0),
]


@pytest.fixture
def fleets(tmp_path: Path) -> Path:
    return write_fleets(
        tmp_path / "fleets.yaml", [{"name": "all", "selector": {}, "config": CONFIG}]
    )


@pytest.fixture
def server(fleets: Path, tmp_path: Path) -> Iterator[ServeProcess]:
    with start_serve(fleets, tmp_path) as s:
        yield s


def _url(server: ServeProcess, peer: Peer) -> str:
    return server.ws_url if peer.websocket else server.http_url


def _named(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda a: a["identifying_attributes"].get("service.name") == name


@pytest.mark.parametrize("peer", PEERS, ids=[p.name for p in PEERS])
def test_peer_applies_the_fleet_config(server: ServeProcess, peer: Peer) -> None:
    name = f"peer-{peer.name}"
    with peer.start(_url(server, peer), "--heartbeat=1s", f"--service-name={name}") as agent:
        started = agent.wait_for("started")
        offered = agent.wait_for("message", timeout=60, where=lambda e: "remote_config" in e)
        assert offered["remote_config"]["config_hash"] == single_file_hash(CONFIG)
        assert offered["remote_config"]["files"][""]["body"] == CONFIG
        seen = server.wait_agent(
            lambda a: (
                _named(name)(a) and (a["remote_config_status"] or {}).get("status") == "APPLIED"
            ),
            f"{peer.name} to report APPLIED",
        )
        assert seen["instance_uid"].replace("-", "") == started["instance_uid"]
        assert seen["transport"] == ("websocket" if peer.websocket else "http")
        assert seen["remote_config_status"]["hash"] == single_file_hash(CONFIG)
        assert seen["drifted"] is False
        if peer.reports_effective_config:
            # The effective config it reports is the file it was given, byte for byte (its
            # hash); the API shows it in canonical form, secrets masked.
            applied = server.wait_agent(
                lambda a: (
                    _named(name)(a) and a["effective_config_hash"] == single_file_hash(CONFIG)
                ),
                f"{peer.name} to report the config as effective",
            )
            detail = server.get(f"/api/v1/agents/{applied['instance_uid']}")
            assert list(detail["effective_config"]) == [""]
            assert yaml.safe_load(detail["effective_config"][""]) == yaml.safe_load(CONFIG)
        else:
            assert seen["effective_config_hash"] is None


@pytest.mark.parametrize("peer", PEERS, ids=[p.name for p in PEERS])
def test_peer_reports_failed_apply(server: ServeProcess, peer: Peer) -> None:
    name = f"failing-{peer.name}"
    with peer.start(_url(server, peer), "--heartbeat=1s", "--apply=fail", f"--service-name={name}"):
        seen = server.wait_agent(
            lambda a: (
                _named(name)(a) and (a["remote_config_status"] or {}).get("status") == "FAILED"
            ),
            f"{peer.name} to report FAILED",
        )
        assert seen["remote_config_status"]["error_message"]
        assert seen["drifted"] is True


@pytest.mark.parametrize("peer", PEERS, ids=[p.name for p in PEERS])
def test_peer_returns_with_full_state_after_server_restart(
    fleets: Path, tmp_path: Path, peer: Peer
) -> None:
    name = f"returning-{peer.name}"
    first = start_serve(fleets, tmp_path)
    port = first.port
    url = _url(first, peer)
    try:
        with peer.start(url, "--heartbeat=1s", f"--service-name={name}") as agent:
            first.wait_agent(
                lambda a: (
                    _named(name)(a) and (a["remote_config_status"] or {}).get("status") == "APPLIED"
                ),
                "APPLIED on the first server",
            )
            first.stop()
            with start_serve(fleets, tmp_path, port=port) as second:
                back = second.wait_agent(
                    _named(name), "the description on the new server", 30 + peer.retry_after_failure
                )
                assert back["remote_config_status"] is not None
                assert back["remote_config_status"]["hash"] == single_file_hash(CONFIG)
                assert agent.proc.poll() is None
    finally:
        first.stop()
