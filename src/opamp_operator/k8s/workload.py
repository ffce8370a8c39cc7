"""Template mode: the Collector workload a fleet renders itself."""

from __future__ import annotations

import kopf

from opamp_operator.k8s.state import FleetRecord


async def reconcile_workload(
    body: kopf.Body, record: FleetRecord, agent_endpoint: str | None
) -> None:
    """Create, update or remove the fleet's own Deployment / DaemonSet."""
    if record.spec.template is None:
        return
    raise NotImplementedError("template mode")
