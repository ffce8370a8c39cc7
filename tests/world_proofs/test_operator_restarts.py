"""An operator crash and restart hurts nothing (issue 14): gated pods whose agents have
not reconnected yet keep their agent-ready condition for the startup grace, and an agent
given up on by drift remediation stays given up.

One scenario for the module, on the session's cluster: operator one brings a gated fleet
to Ready and gives up on a drifting agent; it is SIGKILLed; operator two starts on the
same port while the gated agents stay frozen (SIGSTOP) for a few seconds and one never
comes back. A Kubernetes watch records every agent-ready condition the pods go through.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from opamp_operator.api.models import AGENT_READY_CONDITION
from opamp_operator.k8s.gates import REMEDIATION_ANNOTATION
from opamp_operator.k8s.settings import HandlerSettings
from world.cluster import LocalCluster
from world.collector import JsonlProcess, start_go_agent
from world.fleets import CONFIG_V1, CONFIG_V2, create_deployment, create_fleet, running_pods
from world.operator import OperatorProcess, start_operator
from world.podwatch import PodWatch
from world.processes import eventually

pytestmark = pytest.mark.world

GRACE = HandlerSettings().gate_startup_grace
REMEDIATION_WAIT = 2.0
FROZEN = 5.0  # seconds the returning agents stay away after the new operator listens
GATED = {"app": "gated"}
DRIFTING = {"app": "drifting"}


class GateLog:
    """Every agent-ready condition (status, reason) the pods of a namespace go through,
    with when it was seen (world/podwatch.py)."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.changes: list[tuple[float, str, tuple[str, str] | None]] = []
        self._last: dict[str, tuple[str, str] | None] = {}
        self._watch = PodWatch(self.api, namespace, lambda _, pod: self._record(pod))

    def _record(self, pod: Any) -> None:
        name = pod.metadata.name
        found = next(
            (
                (c.status, c.reason)
                for c in pod.status.conditions or []
                if c.type == AGENT_READY_CONDITION
            ),
            None,
        )
        if name not in self._last or self._last[name] != found:
            self._last[name] = found
            self.changes.append((time.time(), name, found))

    def of(self, pod: str) -> list[tuple[float, tuple[str, str] | None]]:
        return [(at, cond) for at, name, cond in list(self.changes) if name == pod]

    def close(self) -> None:
        try:
            self._watch.close()
        finally:
            self.api.close()


@dataclass
class Restart:
    api: Any
    gated_ns: str
    drifting_ns: str
    gated_pods: list[str]  # returning, returning, never back, forged
    drifting_pod: str
    stuck: JsonlProcess
    before: dict[str, Any]  # what the stuck agent and the Events showed before the crash
    operator: OperatorProcess
    started: float  # just before operator two was spawned
    gates: GateLog
    agents: list[JsonlProcess] = field(default_factory=list)


def _namespace(core: Any, prefix: str) -> str:
    meta = k8s.V1ObjectMeta(generate_name=f"{prefix}-")
    return str(core.create_namespace(k8s.V1Namespace(metadata=meta)).metadata.name)


def _running(api: Any, namespace: str, labels: dict[str, str], n: int) -> list[Any]:
    pods: list[Any] = eventually(
        f"{n} Running pods in {namespace}",
        lambda: p if len(p := running_pods(api, namespace, labels)) == n else None,
    )
    return sorted(pods, key=lambda p: p.metadata.name)


def _gate(api: Any, namespace: str, pod: str) -> tuple[str, str] | None:
    core: Any = k8s.CoreV1Api(api)
    found = core.read_namespaced_pod(pod, namespace)
    return next(
        (
            (c.status, c.reason)
            for c in found.status.conditions or []
            if c.type == AGENT_READY_CONDITION
        ),
        None,
    )


def _annotation(api: Any, namespace: str, pod: str) -> dict[str, Any] | None:
    core: Any = k8s.CoreV1Api(api)
    value = (core.read_namespaced_pod(pod, namespace).metadata.annotations or {}).get(
        REMEDIATION_ANNOTATION
    )
    return json.loads(value) if value else None


REMEDIATION_EVENTS = frozenset({"DriftRemediating", "Remediated", "RemediationFailed"})


def _remediation_events(api: Any, namespace: str) -> list[str]:
    """The reasons of the fleet's remediation Events (status Events come and go with
    the agent's reconnection)."""
    core: Any = k8s.CoreV1Api(api)
    items = core.list_namespaced_event(namespace).items
    return sorted(
        e.reason
        for e in items
        if e.involved_object.kind == "CollectorFleet" and e.reason in REMEDIATION_EVENTS
    )


def _seen(agent: JsonlProcess, event: str) -> list[dict[str, Any]]:
    """The agent's events named `event` so far, read from its own output."""
    with contextlib.suppress(TimeoutError):
        agent.wait_for("(drain)", timeout=0.2)
    return [e for e in agent.seen if e["event"] == event]


def _offers(agent: JsonlProcess) -> int:
    return sum(1 for e in _seen(agent, "message") if "remote_config" in e)


def _signal(agents: list[JsonlProcess], sig: signal.Signals) -> None:
    for agent in agents:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.proc.pid, sig)


def _before_the_crash(
    api: Any, gated_ns: str, drifting_ns: str, op: OperatorProcess, agents: list[JsonlProcess]
) -> tuple[list[str], str, JsonlProcess]:
    """Operator one: four gated pods True, one drifting agent given up on. The agents
    started are added to `agents`: the four gated ones in pod order, then the stuck one."""
    gated = _running(api, gated_ns, GATED, 4)
    drifting = _running(api, drifting_ns, DRIFTING, 1)[0]
    create_fleet(api, gated_ns, "gated", GATED, CONFIG_V1)
    create_fleet(api, drifting_ns, "drifting", DRIFTING, CONFIG_V2, driftPolicy="Remediate")
    agents.extend(
        start_go_agent(op.ws_url, "--heartbeat=1s", f"--attr=k8s.pod.uid={p.metadata.uid}")
        for p in gated
    )
    # Ignores offers and runs a local edit, but accepts restart commands.
    stuck = start_go_agent(
        op.ws_url,
        "--heartbeat=1s",
        "--apply=ignore",
        "--accept-restart",
        f"--effective-config={CONFIG_V2.replace('detailed', 'basic')}",
        f"--attr=k8s.pod.uid={drifting.metadata.uid}",
    )
    agents.append(stuck)
    names = [p.metadata.name for p in gated]
    eventually(
        "every gated pod's agent-ready True",
        lambda: all(_gate(api, gated_ns, n) == ("True", "AgentReady") for n in names),
    )
    eventually(
        "the drifting agent given up on, on its pod too",
        lambda: (_annotation(api, drifting_ns, drifting.metadata.name) or {}).get("gaveUp"),
        timeout=60,
    )
    return names, drifting.metadata.name, stuck


@pytest.fixture(scope="module")
def restart(
    crds: None, cluster: LocalCluster, api_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Restart]:
    core: Any = k8s.CoreV1Api(api_client)
    gated_ns, drifting_ns = _namespace(core, "restart-gates"), _namespace(core, "restart-drift")
    create_deployment(
        api_client, gated_ns, "gated", GATED, replicas=4, readiness_gates=(AGENT_READY_CONDITION,)
    )
    create_deployment(api_client, drifting_ns, "drifting", DRIFTING)
    workdir = tmp_path_factory.mktemp("restarts")
    first = start_operator(
        cluster.kubeconfig, workdir / "one", f"--remediation-wait-seconds={REMEDIATION_WAIT}"
    )
    agents: list[JsonlProcess] = []
    second: OperatorProcess | None = None
    gates: GateLog | None = None
    try:
        names, drifting, stuck = _before_the_crash(api_client, gated_ns, drifting_ns, first, agents)
        before = {
            "restarts": len(_seen(stuck, "command")),
            "offers": _offers(stuck),
            "events": _remediation_events(api_client, drifting_ns),
            "annotation": _annotation(api_client, drifting_ns, drifting),
        }
        gates = GateLog(cluster.kubeconfig, gated_ns)
        eventually("the watch to list the pods", lambda: len({n for _, n, _ in gates.changes}) == 4)
        returning = [agents[0], agents[1], agents[3]]
        _signal(returning, signal.SIGSTOP)
        os.killpg(first.record.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        agents[2].stop()  # never comes back
        # Whatever set it, the pod's own condition is what the new operator goes by.
        forged = {"type": AGENT_READY_CONDITION, "status": "False", "reason": "Forged"}
        core.patch_namespaced_pod_status(names[3], gated_ns, {"status": {"conditions": [forged]}})
        started = time.time()
        second = start_operator(
            cluster.kubeconfig,
            workdir / "two",
            f"--remediation-wait-seconds={REMEDIATION_WAIT}",
            port=first.port,
        )
        time.sleep(max(0.0, started + FROZEN - time.time()))
        _signal(returning, signal.SIGCONT)
        yield Restart(
            api_client,
            gated_ns,
            drifting_ns,
            names,
            drifting,
            stuck,
            before,
            second,
            started,
            gates,
            agents,
        )
    finally:
        _signal(agents, signal.SIGCONT)
        for agent in agents:
            agent.stop()
        if gates is not None:
            gates.close()
        if second is not None:
            second.stop_in_background()
        first.stop_in_background()
        for ns in (gated_ns, drifting_ns):
            core.delete_namespace(ns)


def test_gates_hold_through_the_grace_and_follow_the_pods_after_it(restart: Restart) -> None:
    api, ns, op = restart.api, restart.gated_ns, restart.operator
    back_a, back_b, never, forged = restart.gated_pods
    eventually(
        "the returning agents connected to operator two",
        lambda: op.get(f"/api/v1/fleets/{ns}/gated").get("agentsConnected") == 3,
        timeout=60,
    )
    eventually(
        "the forged pod put back to True by operator two",
        lambda: _gate(api, ns, forged) == ("True", "AgentReady"),
    )
    went_false = eventually(
        "the pod whose agent never came back to go False after the grace",
        lambda: next((at for at, c in restart.gates.of(never) if c and c[0] == "False"), None),
        timeout=GRACE + 30,
    )
    assert went_false >= restart.started + GRACE, (
        f"unreadied {went_false - restart.started:.1f}s after the start, within the grace"
    )
    assert _gate(api, ns, never) == ("False", "NoAgent")
    for pod in (back_a, back_b):
        assert [c for _, c in restart.gates.of(pod)] == [("True", "AgentReady")]
        assert _gate(api, ns, pod) == ("True", "AgentReady")
    assert [c for _, c in restart.gates.of(forged)] == [
        ("True", "AgentReady"),
        ("False", "Forged"),
        ("True", "AgentReady"),
    ]
    assert [c for _, c in restart.gates.of(never)] == [
        ("True", "AgentReady"),
        ("False", "NoAgent"),
    ]


def test_an_agent_given_up_on_is_not_remediated_again_by_the_new_operator(
    restart: Restart,
) -> None:
    api, ns, op, stuck = restart.api, restart.drifting_ns, restart.operator, restart.stuck
    before = restart.before
    assert before["restarts"] == 1
    assert before["events"] == ["DriftRemediating", "DriftRemediating", "RemediationFailed"]
    assert before["annotation"]["gaveUp"] is True
    assert before["annotation"]["hash"] == op.get(f"/api/v1/fleets/{ns}/drifting")["desiredHash"]
    eventually(
        "operator two judging the stuck agent drifted",
        lambda: op.get(f"/api/v1/fleets/{ns}/drifting/agents?state=drifted")["count"] == 1,
        timeout=60,
    )
    connects = _seen(stuck, "connected")
    assert len(connects) == 2, "connected to operator one, then to operator two"
    # A forgetful operator re-offers at once, restarts after the wait, gives up after
    # another: let that window pass since the agent reconnected.
    back = datetime.fromisoformat(connects[1]["time"]).timestamp()
    time.sleep(max(0.0, back + 3 * REMEDIATION_WAIT + 3 - time.time()))
    assert len(_seen(stuck, "command")) == 1
    assert _remediation_events(api, ns) == before["events"]
    assert _annotation(api, ns, restart.drifting_pod) == before["annotation"]
    # Reconnected, it reports no config status, so it is offered the config once as any
    # agent is; a remediation re-offer would be one more.
    assert _offers(stuck) == before["offers"] + 1
