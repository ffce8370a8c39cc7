"""A CollectorFleet's status, built from what the shell read, as one plain dict.

The shape is `api.models.CollectorFleetStatus`'s (a unit test holds them together); the
shell compares it with the status it read and patches only when something changed, so a
fleet whose agents do nothing new is never written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opamp_operator.fleet.conditions import Why, merge
from opamp_operator.fleet.events import Event, condition_events, count_events
from opamp_operator.fleet.health import FleetHealth, conditions


@dataclass(frozen=True)
class FleetFacts:
    """What the status says besides the agents' health."""

    observed_generation: int
    generation: int  # metadata.generation as read now
    revision: str | None
    desired_hash: str
    stable_revision: str
    stable_hash: str
    blocker: Why | None
    unauthenticated: int = 0
    overlapping: Sequence[str] = ()


def fleet_status(
    health: FleetHealth, facts: FleetFacts, old: Mapping[str, Any], now_iso: str
) -> dict[str, Any]:
    """The whole status the operator owns, conditions merged with the old ones."""
    new_conditions = conditions(health, facts.observed_generation, facts.generation, facts.blocker)
    return {
        **health.to_status(),
        "observedGeneration": facts.observed_generation,
        "conditions": merge(old.get("conditions", []), new_conditions, now_iso),
        "desiredRevision": facts.revision,
        "desiredHash": facts.desired_hash or None,
        "stableRevision": facts.stable_revision or None,
        "stableHash": facts.stable_hash or None,
        "agentsUnauthenticated": facts.unauthenticated,
        "overlappingFleets": sorted(facts.overlapping),
    }


def status_update(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Event]] | None:
    """The patch and the Events a new status calls for; None when nothing changed."""
    if all(old.get(key) == value for key, value in new.items()):
        return None
    events = condition_events(old.get("conditions", []), new["conditions"])
    return dict(new), events + count_events(old, new)
