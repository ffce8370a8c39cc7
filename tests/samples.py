"""Plain values more than one test module builds on."""

from __future__ import annotations

from pathlib import Path

from opamp_operator.fleet.health import FleetHealth
from opamp_operator.fleet.status import FleetFacts

T0, T1 = "2026-12-01T00:00:00Z", "2026-12-01T00:01:00Z"
HASH = "ab" * 32
# A fleet at generation 2 on revision f-abababab, nothing in its way.
FACTS = FleetFacts(
    observed_generation=2,
    generation=2,
    revision="f-abababab",
    desired_hash=HASH,
    stable_revision="f-abababab",
    stable_hash=HASH,
    blocker=None,
)


def healthy_fleet(agents: int) -> FleetHealth:
    """`agents` pods, each with a live, healthy agent that applied the desired config."""
    return FleetHealth(
        fleet="obs/f",
        desired_hash=HASH,
        pods_selected=agents,
        agents_connected=agents,
        agents_mapped=agents,
        healthy=agents,
        unhealthy=0,
        config_applied=agents,
        config_applying=0,
        config_failed=0,
        config_pending=0,
        drifted=0,
        pods_without_agent=0,
        agents_without_pod=0,
        duplicate_agents=0,
        versions=(("0.149.0", agents),),
        worst=(),
    )


def executable(path: Path) -> Path:
    """An empty shell script at `path`, standing in for a binary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path
