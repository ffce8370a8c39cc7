"""The `agent-ready` readiness gate on the pods that declare it, level-triggered.

Each status tick compares the condition the pod has (from the pod watch) with the one
its agent calls for, and patches only the pods where they differ: a condition changed or
removed by anything else is put back at the next tick, and a restarted operator writes
nothing where the pods are already right.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import AGENT_READY_CONDITION
from opamp_operator.fleet.health import agent_ready_condition
from opamp_operator.fleet.mapping import MappingResult
from opamp_operator.fleet.views import PodView
from opamp_operator.k8s.reads import now_iso
from opamp_operator.k8s.state import FleetRecord, OperatorState


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
    )


def gate_updates(
    state: OperatorState, record: FleetRecord, mapping: MappingResult
) -> dict[str, dict[str, str]]:
    """Pod key -> the agent-ready condition it should have, for the gated pods whose
    condition differs from it."""
    updates = {}
    for key, pod in mapping.pods.items():
        if AGENT_READY_CONDITION not in pod.readiness_gates:
            continue
        uid = mapping.agent_of.get(key)
        agent = mapping.agents.get(uid) if uid is not None else None
        expected_hash = state.expected(record, uid)[1] if uid is not None else ""
        cond = agent_ready_condition(agent, expected_hash, AGENT_READY_CONDITION)
        if pod.gate_conditions.get(AGENT_READY_CONDITION) != (cond["status"], cond["reason"]):
            updates[key] = cond
    return updates


async def write_gates(pods: Mapping[str, PodView], updates: Mapping[str, dict[str, str]]) -> int:
    """Patch the pods' gate conditions; returns how many pods were patched."""
    now = now_iso()
    patched = 0
    for key, cond in updates.items():
        pod = pods[key]
        body: dict[str, Any] = {"status": {"conditions": [{**cond, "lastTransitionTime": now}]}}
        try:
            await asyncio.to_thread(
                k8s.CoreV1Api().patch_namespaced_pod_status, pod.name, pod.namespace, body
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            continue
        patched += 1
    return patched
