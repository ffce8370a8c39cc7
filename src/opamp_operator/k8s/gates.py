"""The `agent-ready` readiness gate on the pods that declare it, level-triggered.

Each status tick compares the condition the pod has (from the pod watch) with the one
its agent calls for, and patches only the pods where they differ: a condition changed or
removed by anything else is put back at the next tick, and a restarted operator writes
nothing where the pods are already right. During the startup grace (fleet/readiness.py)
a pod whose agent this process has not seen yet is left as it is.

The pod watch also brings what the operator keeps on a pod for itself: the persisted
drift-remediation attempt (REMEDIATION_ANNOTATION, fleet/remediation.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import AGENT_READY_CONDITION, GROUP
from opamp_operator.fleet.conditions import now_iso
from opamp_operator.fleet.health import agent_ready_condition
from opamp_operator.fleet.mapping import MappingResult
from opamp_operator.fleet.readiness import gate_write, seen_since
from opamp_operator.fleet.views import PodView
from opamp_operator.k8s.reads import epoch
from opamp_operator.k8s.state import FleetRecord, OperatorState

REMEDIATION_ANNOTATION = f"{GROUP}/remediation"


def pod_view(body: kopf.Body) -> PodView:
    status, spec, meta = body.get("status", {}), body.get("spec", {}), body.metadata
    gates = tuple(g.get("conditionType", "") for g in spec.get("readinessGates", []) or [])
    observed = {
        c.get("type", ""): (c.get("status", ""), c.get("reason", ""))
        for c in status.get("conditions", []) or []
        if c.get("type") in gates
    }
    return PodView(
        namespace=meta.namespace or "",
        name=meta.name or "",
        uid=meta.uid or "",
        ip=status.get("podIP", "") or "",
        labels=dict(meta.labels),
        node=spec.get("nodeName", "") or "",
        phase=status.get("phase", "") or "",
        readiness_gates=gates,
        gate_conditions=observed,
        remediation=meta.annotations.get(REMEDIATION_ANNOTATION, ""),
        created=epoch(meta.get("creationTimestamp")),
        terminating=bool(meta.get("deletionTimestamp")),
    )


def gate_updates(
    state: OperatorState,
    record: FleetRecord,
    mapping: MappingResult,
    held_since: float | None = None,
) -> dict[str, dict[str, str]]:
    """Pod key -> the agent-ready condition to patch, for the gated pods whose condition
    differs from the one their agent calls for. `held_since`: during the startup grace,
    when it began; pods whose agent has not been seen since are left alone."""
    updates = {}
    now = now_iso()
    for key, pod in mapping.pods.items():
        if AGENT_READY_CONDITION not in pod.readiness_gates:
            continue
        uid = mapping.agent_of.get(key)
        agent = mapping.agents.get(uid) if uid is not None else None
        expected_hash = state.expected(record, uid)[1] if uid is not None else ""
        held = held_since is not None and not seen_since(agent, held_since)
        cond = gate_write(
            pod.gate_conditions.get(AGENT_READY_CONDITION),
            agent_ready_condition(agent, expected_hash, AGENT_READY_CONDITION),
            held=held,
            now_iso=now,
        )
        if cond is not None:
            updates[key] = cond
    return updates


async def patch_pod_status(pod: PodView, body: dict[str, Any]) -> bool:
    """One strategic-merge patch of the pod's status subresource: the one pod write the
    operator's RBAC grants (pods/status), and the apiserver takes metadata.annotations
    from it too. False when the pod is gone."""
    try:
        await asyncio.to_thread(
            k8s.CoreV1Api().patch_namespaced_pod_status, pod.name, pod.namespace, body
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
        return False
    return True


async def write_gates(pods: Mapping[str, PodView], updates: Mapping[str, dict[str, str]]) -> int:
    """Patch the pods' gate conditions; returns how many pods were patched."""
    patched = 0
    for key, cond in updates.items():
        patched += await patch_pod_status(pods[key], {"status": {"conditions": [cond]}})
    return patched


async def write_remediation(pod: PodView, value: str | None) -> bool:
    """Persist (or, with None, remove) the pod's drift-remediation attempt."""
    return await patch_pod_status(
        pod, {"metadata": {"annotations": {REMEDIATION_ANNOTATION: value}}}
    )
