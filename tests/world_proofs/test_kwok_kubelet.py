"""Proofs of the test world itself: kwok answers for readiness gates as a kubelet does
(tests/world/kwok-pod-stages.yaml). It never writes a gate condition, so a pod whose gate
nobody sets stays not Ready; Ready follows the gate condition within a second or two of
every change; a pod without gates becomes Ready as before."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client as k8s

from world.fleets import create_deployment, running_pods

pytestmark = pytest.mark.world

GATE = "opampoperator.io/agent-ready"
LABELS = {"app": "gated"}
# What "within a second or two" means here: a kubelet recomputes Ready on the pod update.
FOLLOW_SECONDS = 2.0


def _conditions(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    pod: Any = k8s.CoreV1Api(api_client).read_namespaced_pod(name, namespace)
    return {c.type: c for c in pod.status.conditions or []}


def _set_gate(api_client: Any, namespace: str, name: str, status: str) -> None:
    """What the gate's owner (the operator) does: patch the condition on the status."""
    k8s.CoreV1Api(api_client).patch_namespaced_pod_status(
        name,
        namespace,
        {"status": {"conditions": [{"type": GATE, "status": status, "reason": "Proof"}]}},
        _content_type="application/strategic-merge-patch+json",
    )


def _ready_within(api_client: Any, namespace: str, name: str, want: str, limit: float) -> float:
    """Seconds until the pod's Ready condition is `want`; fails after `limit`."""
    start = time.monotonic()
    ready = None
    while time.monotonic() - start < limit:
        cond = _conditions(api_client, namespace, name).get("Ready")
        ready = cond.status if cond is not None else None
        if ready == want:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"Ready still {ready!r}, not {want!r}, {limit}s after the gate changed")


def _one_running_pod(api_client: Any, namespace: str, labels: dict[str, str]) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = running_pods(api_client, namespace, labels)
        if len(pods) == 1:
            return pods[0]
        time.sleep(0.1)
    raise AssertionError(f"no Running pod with {labels} after 60 s")


def test_a_gated_pod_is_ready_only_while_its_gate_is_true(api_client: Any, namespace: str) -> None:
    create_deployment(api_client, namespace, "gated", LABELS, readiness_gates=(GATE,))
    name = _one_running_pod(api_client, namespace, LABELS).metadata.name

    # Running, containers ready, nobody set the gate: not Ready, and kwok wrote no gate
    # condition. Held for 3 s on purpose: this proves nothing changes meanwhile.
    hold_until = time.monotonic() + 3
    while time.monotonic() < hold_until:
        conds = _conditions(api_client, namespace, name)
        assert GATE not in conds, "kwok wrote the readiness-gate condition itself"
        assert conds["ContainersReady"].status == "True"
        assert "Ready" not in conds or conds["Ready"].status == "False", conds["Ready"]
        time.sleep(0.2)
    ready = _conditions(api_client, namespace, name)["Ready"]
    assert (ready.status, ready.reason) == ("False", "ReadinessGatesNotReady")
    assert GATE in ready.message
    deployment: Any = k8s.AppsV1Api(api_client).read_namespaced_deployment("gated", namespace)
    assert not deployment.status.ready_replicas

    took: dict[str, float] = {}
    _set_gate(api_client, namespace, name, "True")
    took["True"] = _ready_within(api_client, namespace, name, "True", FOLLOW_SECONDS)
    _set_gate(api_client, namespace, name, "False")
    took["False"] = _ready_within(api_client, namespace, name, "False", FOLLOW_SECONDS)
    _set_gate(api_client, namespace, name, "True")
    took["True again"] = _ready_within(api_client, namespace, name, "True", FOLLOW_SECONDS)
    print(f"Ready followed the gate in {took}")

    # kwok still never wrote the gate: its only writer is this test.
    assert _conditions(api_client, namespace, name)[GATE].reason == "Proof"


def test_an_ungated_pod_becomes_ready(api_client: Any, namespace: str) -> None:
    labels = {"app": "ungated"}
    create_deployment(api_client, namespace, "ungated", labels)
    name = _one_running_pod(api_client, namespace, labels).metadata.name
    _ready_within(api_client, namespace, name, "True", 10)
    conds = _conditions(api_client, namespace, name)
    assert {t: conds[t].status for t in ("Initialized", "ContainersReady", "Ready")} == {
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert conds["Ready"].reason is None


def test_ready_counts_every_gate(api_client: Any, namespace: str) -> None:
    """Two gates: Ready only once both conditions are True; a missing one counts False."""
    other = "proof.opampoperator.io/other"
    labels = {"app": "two-gates"}
    create_deployment(api_client, namespace, "two-gates", labels, readiness_gates=(GATE, other))
    name = _one_running_pod(api_client, namespace, labels).metadata.name
    _ready_within(api_client, namespace, name, "False", 10)
    _set_gate(api_client, namespace, name, "True")
    # Still not Ready: `other` is missing. Given a moment to prove kwok does not flip it.
    time.sleep(1)
    ready = _conditions(api_client, namespace, name)["Ready"]
    assert ready.status == "False"
    assert other in ready.message
    k8s.CoreV1Api(api_client).patch_namespaced_pod_status(
        name,
        namespace,
        {"status": {"conditions": [{"type": other, "status": "True"}]}},
        _content_type="application/strategic-merge-patch+json",
    )
    _ready_within(api_client, namespace, name, "True", FOLLOW_SECONDS)
