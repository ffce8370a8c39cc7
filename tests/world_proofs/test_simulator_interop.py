"""The agent simulator against opamp-go's reference server, an OpAMP implementation that is
not ours: over both transports its agents connect, describe themselves, apply (or refuse)
the offered config, heartbeat, say goodbye, and come back after the server restarts. What
the server saw is compared with what the simulator (its API and its CLI) reports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opamp_operator.simulator import Simulation, SimulationSettings
from opamp_operator.simulator.protocol import CAPABILITIES
from opamp_operator.simulator.settings import Transport
from opamp_operator.simulator.stats import ConfigProgress
from world import binaries
from world.collector import JsonlProcess, ReferenceServer, start_jsonl
from world.operator import start_serve, write_fleets
from world.processes import eventually, free_port

pytestmark = pytest.mark.world

AGENTS = 20
OFFERED = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\n"
OFFERED_HASH = hashlib.sha256(OFFERED.encode()).hexdigest()
SERVER_TRANSPORT = {"ws": "websocket", "http": "http"}
HEARTBEAT_KEYS = {"instance_uid", "sequence_num", "capabilities", "transport", "event", "time"}

Event = dict[str, Any]
_NO_CONFIG = ConfigProgress(b"", 0.0)


def _server_on(port: int, config_file: Path) -> ReferenceServer:
    """The reference server on a chosen port, so a restarted one is found at the same URL."""
    harness = start_jsonl(
        [
            str(binaries.find("opamp-go-server")),
            f"--listen=127.0.0.1:{port}",
            f"--config-file={config_file}",
        ]
    )
    ready = harness.wait_for("listening", timeout=15)
    return ReferenceServer(harness, ready["ws_url"], ready["http_url"])


def _url(server: ReferenceServer, transport: Transport) -> str:
    return server.ws_url if transport == "ws" else server.http_url


def _settings(url: str, transport: Transport, **overrides: Any) -> SimulationSettings:
    options: dict[str, Any] = {
        "agents": AGENTS,
        "heartbeat": 1.0,
        "connect_rate": 100.0,
        "pod_prefix": "sim",
        "namespace": "proofs",
        "service_name": "otelcol-sim",
        "progress_interval": 1.0,
        "backoff_initial": 0.2,
        "backoff_max": 1.0,
        **overrides,
    }
    return SimulationSettings(endpoint=url, transport=transport, **options)


def _per_agent(
    harness: JsonlProcess, uids: set[str], matches: Callable[[Event], bool], timeout: float = 30
) -> dict[str, Event]:
    """The first message from each agent in `uids` that `matches`; waits until all have one."""
    found: dict[str, Event] = {}

    def where(ev: Event) -> bool:
        uid = ev["instance_uid"]
        if uid in uids and uid not in found and matches(ev):
            found[uid] = ev
        return len(found) == len(uids)

    if uids:
        harness.wait_for("agent_message", timeout=timeout, where=where)
    return found


def _status(ev: Event) -> tuple[str, str, str] | None:
    rcs = ev.get("remote_config_status")
    return None if rcs is None else (rcs["status"], rcs["hash"], rcs["error"])


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_agents_describe_themselves_apply_the_offer_and_heartbeat(
    reference_server: ReferenceServer, transport: Transport
) -> None:
    async with Simulation(_settings(_url(reference_server, transport), transport)) as sim:
        assert await sim.wait_until("applied", within=60), sim.stats.progress_line(sim.now())
        uids = {agent.instance_uid.hex() for agent in sim.agents}
        # a heartbeat (1 s) from every agent at the server, before they say goodbye
        await asyncio.to_thread(
            _per_agent, reference_server.harness, uids, lambda e: set(e) <= HEARTBEAT_KEYS
        )
        summary = await sim.stop()

    server = reference_server.harness
    firsts = await asyncio.to_thread(_per_agent, server, uids, lambda e: "identifying" in e)
    assert {e["identifying"]["k8s.pod.name"] for e in firsts.values()} == {
        f"sim-{i}" for i in range(AGENTS)
    }
    for uid, ev in firsts.items():
        pod = ev["identifying"]["k8s.pod.name"]
        assert ev["transport"] == SERVER_TRANSPORT[transport]
        assert ev["sequence_num"] == 0
        assert ev["capabilities"] == CAPABILITIES
        assert ev["identifying"] == {
            "service.name": "otelcol-sim",
            "service.instance.id": str(uuid.UUID(hex=uid)),
            "k8s.pod.name": pod,
            "k8s.namespace.name": "proofs",
        }
        assert ev["non_identifying"]["host.name"] == pod
        assert ev["health"]["healthy"] is True
        assert "available_components_hash" in ev

    applied = _per_agent(
        server, uids, lambda e: _status(e) == ("RemoteConfigStatuses_APPLIED", OFFERED_HASH, "")
    )
    assert all(e["effective_config"] == {"": OFFERED} for e in applied.values())
    # the server asked for the full component list (ReportAvailableComponents) and got it
    components = _per_agent(server, uids, lambda e: "available_components" in e)
    assert all("otlp" in e["available_components"]["receivers"] for e in components.values())
    heartbeats = _per_agent(server, uids, lambda e: set(e) <= HEARTBEAT_KEYS)
    assert len(heartbeats) == AGENTS
    goodbyes = _per_agent(server, uids, lambda e: e.get("disconnect") is True)
    assert len(goodbyes) == AGENTS

    for uid in uids:
        seqs = [
            e["sequence_num"]
            for e in server.seen
            if e["event"] == "agent_message" and e["instance_uid"] == uid
        ]
        assert seqs == list(range(len(seqs))), f"{uid}: sequence numbers {seqs}"

    assert summary.ever_connected == summary.full_state_acked == AGENTS
    assert summary.all_connected_s is not None
    [config] = summary.configs
    assert config.hash == OFFERED_HASH
    assert (config.offered, config.applied, config.failed) == (AGENTS, AGENTS, 0)
    assert config.all_applied_s is not None
    assert summary.heartbeats_sent >= AGENTS
    assert summary.goodbyes_sent == AGENTS
    assert summary.errors == {}
    if transport == "http":
        # opamp-go gzips a response when the request says Accept-Encoding: gzip
        assert summary.gzip_responses == summary.messages_received > 0


async def test_a_config_pushed_by_the_server_reaches_every_websocket_agent(
    reference_server: ReferenceServer, offered: Path
) -> None:
    """Server-initiated offers (opamp-go pushes a reloaded config on SIGHUP), timed from
    the first offer until every agent reported APPLIED."""
    pushed = OFFERED + "exporters:\n  debug: {}\n"
    pushed_hash = hashlib.sha256(pushed.encode()).hexdigest()
    async with Simulation(_settings(reference_server.ws_url, "ws", heartbeat=30.0)) as sim:
        assert await sim.wait_until("applied", within=60)
        await asyncio.to_thread(offered.write_text, pushed)
        reference_server.harness.proc.send_signal(signal.SIGHUP)
        assert await sim.wait_until(
            lambda s: len(s.configs.get(bytes.fromhex(pushed_hash), _NO_CONFIG).applied) == AGENTS,
            within=30,
        ), sim.stats.progress_line(sim.now())
        uids = {agent.instance_uid.hex() for agent in sim.agents}
        summary = await sim.stop()

    server = reference_server.harness
    assert server.wait_for("pushed")["agents"] == AGENTS
    applied = _per_agent(
        server, uids, lambda e: _status(e) == ("RemoteConfigStatuses_APPLIED", pushed_hash, "")
    )
    assert all(e["effective_config"] == {"": pushed} for e in applied.values())
    first, second = summary.configs
    assert (first.hash, second.hash) == (OFFERED_HASH, pushed_hash)
    assert second.applied == AGENTS
    assert second.all_applied_s is not None
    assert second.first_offer_s > first.first_offer_s
    assert summary.heartbeats_sent == 0, "30 s heartbeats: only the push made agents report"


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_cli_refuses_matching_configs_and_its_summary_agrees_with_the_server(
    reference_server: ReferenceServer, transport: Transport
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "opamp_operator",
            "simulate",
            f"--endpoint={_url(reference_server, transport)}",
            f"--transport={transport}",
            f"--agents={AGENTS}",
            "--fail-configs-matching=grpc",
            "--pod-names=cli",
            "--namespace=proofs",
            "--heartbeat=1",
            "--stop-when=settled",
            "--duration=60",
            "--progress-interval=0.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    summary = json.loads(lines[0])
    assert "connected 20/20" in proc.stderr
    assert summary["stopped_by"] == "settled"
    assert summary["transport"] == transport
    assert summary["ever_connected"] == AGENTS
    [config] = summary["configs"]
    assert config["hash"] == OFFERED_HASH
    assert (config["applied"], config["failed"]) == (0, AGENTS)
    assert config["all_reported_s"] is not None
    assert config["all_applied_s"] is None
    assert "grpc" in config["error_example"]

    server = reference_server.harness
    pods: dict[str, str] = {}

    def described(ev: Event) -> bool:
        if ev["event"] == "agent_message" and "identifying" in ev:
            pods[ev["instance_uid"]] = ev["identifying"]["k8s.pod.name"]
        return len(pods) == AGENTS

    server.wait_for("agent_message", where=described)
    assert sorted(pods.values()) == sorted(f"cli-{i}" for i in range(AGENTS))
    uids = set(pods)
    # a goodbye is each agent's last message; after it, everything the CLI sent is here
    assert len(_per_agent(server, uids, lambda e: e.get("disconnect") is True)) == AGENTS
    sent = summary["messages_sent"] + summary["goodbyes_sent"]

    def arrived() -> list[Event]:
        while not server.events.empty():
            server.seen.append(server.events.get())
        return [e for e in server.seen if e.get("instance_uid") in uids]

    # the harness relays what the server got a moment after the goodbyes: wait for it all
    eventually("every message the CLI sent, at the server", lambda: len(arrived()) >= sent, 10)
    received = arrived()
    assert len(received) == sent
    assert summary["goodbyes_sent"] == AGENTS

    failed = _per_agent(
        server, uids, lambda e: (_status(e) or ("",))[0] == "RemoteConfigStatuses_FAILED"
    )
    for ev in failed.values():
        _, config_hash, error = _status(ev) or ("", "", "")
        assert config_hash == OFFERED_HASH
        assert "grpc" in error
    assert not any((_status(e) or ("",))[0] == "RemoteConfigStatuses_APPLIED" for e in received)
    assert all(OFFERED not in e.get("effective_config", {}).values() for e in received)


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_agents_come_back_after_the_server_restarts(
    offered: Path, transport: Transport
) -> None:
    port = free_port()
    first = _server_on(port, offered)
    second: ReferenceServer | None = None
    try:
        async with Simulation(_settings(_url(first, transport), transport)) as sim:
            assert await sim.wait_until("applied", within=60), sim.stats.progress_line(sim.now())
            await asyncio.to_thread(first.harness.stop)
            assert await sim.wait_until(lambda s: s.connected == 0, within=30)
            second = await asyncio.to_thread(_server_on, port, offered)
            assert await sim.wait_until(lambda s: s.connected == s.acked == AGENTS, within=60), (
                sim.stats.progress_line(sim.now())
            )
            uids = {agent.instance_uid.hex() for agent in sim.agents}
            summary = await sim.stop()
        # the new server knows nothing; each agent told it everything again, including
        # the config it had applied before the restart, so nothing needs offering again
        full = await asyncio.to_thread(
            _per_agent,
            second.harness,
            uids,
            lambda e: (
                "identifying" in e
                and _status(e) == ("RemoteConfigStatuses_APPLIED", OFFERED_HASH, "")
                and e.get("effective_config") == {"": OFFERED}
            ),
        )
        assert len(full) == AGENTS
    finally:
        first.harness.stop()
        if second is not None:
            second.harness.stop()

    assert summary.reconnects == AGENTS
    assert summary.disconnects == AGENTS
    assert len(summary.recoveries_s) == 1
    assert summary.configs[0].applied == AGENTS


async def test_agents_honour_our_servers_heartbeat_offer_and_retry_after(tmp_path: Path) -> None:
    """Our own server (`opamp-operator serve`) offers a 1 s heartbeat and refuses WebSocket
    upgrades past its limit with 503 + Retry-After (5 s): the agents beat every second
    instead of every 30, and the refused ones wait instead of retrying with backoff."""
    fleets = write_fleets(
        tmp_path / "fleets.yaml",
        [{"name": "sims", "selector": {"service.name": "otelcol-sim"}, "config": OFFERED}],
    )
    with start_serve(fleets, tmp_path, "--heartbeat-seconds=1", "--max-websockets=15") as server:
        settings = _settings(server.ws_url, "ws", heartbeat=30.0)
        async with Simulation(settings) as sim:
            assert await sim.wait_until(lambda s: s.connected == 15, within=30)
            # Two 1 s heartbeats per connected agent and the config applied by all 15: well
            # within the 5 s Retry-After, so a refused agent that retried would show.
            assert await sim.wait_until(
                lambda s: (
                    s.heartbeats_sent >= 15 * 2
                    and any(len(c.applied) == 15 for c in s.configs.values())
                ),
                within=30,
            )
            served = await asyncio.to_thread(server.agents)
            summary = await sim.stop()

    assert summary.ever_connected == 15
    assert summary.throttled == AGENTS - 15, "each refused agent tried once, then waited"
    assert summary.connect_failures == 0
    assert summary.heartbeats_sent >= 15 * 2
    assert summary.configs[0].applied == 15
    live = [a for a in served if a["connected"]]
    assert len(live) == 15
    assert all(a["remote_config_status"]["status"] == "APPLIED" for a in live)
    assert all(not a["drifted"] for a in live)
