"""Proofs that the real OpAMP agents run and speak OpAMP: the Collector with its OpAMP
extension, the Collector under opampsupervisor, and opamp-go's client — each against
opamp-go's reference server, an implementation that is not ours."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from world.collector import Agent, ReferenceServer, start_go_agent, start_reference_server

pytestmark = pytest.mark.world

OFFERED = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\n"


def _children(pid: int) -> list[str]:
    """Command lines of the direct children of `pid`, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_opamp_go_agent_applies_offered_config(
    reference_server: ReferenceServer, transport: str
) -> None:
    url = reference_server.ws_url if transport == "websocket" else reference_server.http_url
    with start_go_agent(
        url, "--heartbeat=1s", "--service-name=proof-agent", "--attr=k8s.pod.name=pod-a"
    ) as agent:
        started = agent.wait_for("started")
        first = reference_server.harness.wait_for(
            "agent_message", where=lambda e: e["instance_uid"] == started["instance_uid"]
        )
        assert first["transport"] == transport
        assert first["identifying"]["service.name"] == "proof-agent"
        assert first["identifying"]["k8s.pod.name"] == "pod-a"

        offered = agent.wait_for("message", where=lambda e: "remote_config" in e)
        want_hash = hashlib.sha256(OFFERED.encode()).hexdigest()
        assert offered["remote_config"]["config_hash"] == want_hash
        assert offered["remote_config"]["files"][""]["body"] == OFFERED

        applied = reference_server.harness.wait_for(
            "agent_message",
            where=lambda e: (
                e.get("remote_config_status", {}).get("status") == "RemoteConfigStatuses_APPLIED"
            ),
        )
        assert applied["remote_config_status"]["hash"] == want_hash
        effective = reference_server.harness.wait_for(
            "agent_message",
            where=lambda e: "effective_config" in e and e["effective_config"].get("") == OFFERED,
        )
        assert effective["instance_uid"] == started["instance_uid"]

        agent.send(cmd="health", healthy=False, status="exporter failing", last_error="boom")
        unhealthy = reference_server.harness.wait_for(
            "agent_message", where=lambda e: e.get("health", {}).get("healthy") is False
        )
        assert unhealthy["health"]["last_error"] == "boom"


def test_collector_answers_health_check_and_reports_over_opamp(
    reference_server: ReferenceServer, collector_factory: Callable[..., Agent]
) -> None:
    collector = collector_factory(reference_server.ws_url)
    collector.wait_healthy(timeout=60)
    report: dict[str, Any] = reference_server.harness.wait_for(
        "agent_message", timeout=60, where=lambda e: "effective_config" in e
    )
    effective = "".join(report["effective_config"].values())
    assert "health_check" in effective
    assert "opamp" in effective
    assert report["transport"] == "websocket"
    assert collector.record.alive()


def test_supervisor_starts_the_collector(
    reference_server: ReferenceServer, collector_factory: Callable[..., Agent]
) -> None:
    supervisor = collector_factory(reference_server.ws_url, supervised=True)
    # The health check is served by the Collector the supervisor started, from the local
    # config file the supervisor merged into the Collector's config.
    supervisor.wait_healthy(timeout=90)
    assert any("otelcol-opamp" in cmd for cmd in _children(supervisor.record.pid)), (
        f"no otelcol-opamp child of the supervisor: {_children(supervisor.record.pid)}"
    )

    report = reference_server.harness.wait_for(
        "agent_message", timeout=60, where=lambda e: "available_components" in e
    )
    components = report["available_components"]
    assert "opamp" in components.get("extensions", [])
    assert "otlp" in components.get("receivers", [])
    # The supervisor also takes the offered config, restarts the Collector with it merged
    # in, and reports it applied.
    want_hash = hashlib.sha256(OFFERED.encode()).hexdigest()
    reference_server.harness.wait_for(
        "agent_message",
        timeout=90,
        where=lambda e: (
            e.get("remote_config_status", {})
            == {"status": "RemoteConfigStatuses_APPLIED", "hash": want_hash, "error": ""}
        ),
    )
    supervisor.wait_healthy(timeout=60)


def test_reference_server_pushes_a_reloaded_config_on_sighup(tmp_path: Path) -> None:
    """Benchmarks use this to time a config push to every agent on opamp-go's server."""
    offered = tmp_path / "offered.yaml"
    offered.write_text(OFFERED)
    with start_reference_server(offered) as server, start_go_agent(server.ws_url) as agent:
        agent.wait_for("remote_config_status")
        offered.write_text(OFFERED + "exporters: {debug: {}}\n")
        server.harness.proc.send_signal(signal.SIGHUP)
        assert server.harness.wait_for("pushed")["agents"] == 1
        want = hashlib.sha256(offered.read_bytes()).hexdigest()
        agent.wait_for(
            "message", where=lambda e: e.get("remote_config", {}).get("config_hash") == want
        )
