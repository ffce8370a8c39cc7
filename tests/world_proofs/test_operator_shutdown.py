"""SIGTERM under `run`: the agents are told to reconnect (WebSocket close 1001) as kopf
cleans up, and the process exits at once. kopf gives every task started after it 5 s to
end before it returns: a stop flag nobody set, and the agents' WebSocket handlers, were
such tasks, and each stop took 5.1 s (a rollout of the operator's Deployment, and every
operator restart of the test world, paid it)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from world.cluster import LocalCluster
from world.collector import start_go_agent
from world.operator import start_operator

pytestmark = pytest.mark.world

PROMPT = 3.0
"""Seconds the exit may take: it took 0.11-0.17 s here, 5.1 s before."""


@pytest.mark.usefixtures("crds")
def test_sigterm_tells_agents_to_go_and_exits_without_kopf_s_grace(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    operator = start_operator(cluster.kubeconfig, tmp_path)
    with start_go_agent(operator.ws_url, "--heartbeat=1s") as agent:
        agent.wait_for("connected", timeout=30)
        started = time.monotonic()
        operator.proc.send_signal(signal.SIGTERM)
        assert operator.proc.wait(timeout=30) == 0
        took = time.monotonic() - started
        agent.wait_for("connect_failed", timeout=30)
    log = Path(operator.record.log).read_text()
    assert "close 1001" in log
    assert took < PROMPT, f"the operator took {took:.2f} s to exit"
