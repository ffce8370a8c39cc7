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
from opamp_operator.fleet.events import EVENT_MESSAGE_LIMIT, NAMES_SHOWN, Event, condition_events
from opamp_operator.fleet.health import FleetHealth, Reason, conditions
from opamp_operator.fleet.versions import version_condition

# Status counts whose rise is announced: the Event's reason, its wording, and which worst
# agents' reasons name who.
_COUNTS: tuple[tuple[str, str, str, frozenset[str]], ...] = (
    (
        "configFailed",
        "ConfigFailed",
        "agents report the config FAILED",
        frozenset({Reason.CONFIG_FAILED.value}),
    ),
    (
        "drifted",
        "DriftDetected",
        "agents run something other than the desired config",
        frozenset({Reason.DRIFTED.value}),
    ),
    (
        "unhealthy",
        "AgentsUnhealthy",
        "agents are unhealthy, disconnected or silent",
        frozenset({Reason.UNHEALTHY.value, Reason.DISCONNECTED.value, Reason.STALE.value}),
    ),
    (
        "agentsOutdated",
        "Outdated",
        "agents run another version than the fleet's",
        frozenset({Reason.OUTDATED.value}),
    ),
    (
        "packageFailed",
        "PackageFailed",
        "agents report the offered package failed to install",
        frozenset({Reason.PACKAGE_FAILED.value}),
    ),
)


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
    unverified: int = 0
    overlapping: Sequence[str] = ()


def fleet_status(
    health: FleetHealth, facts: FleetFacts, old: Mapping[str, Any], now_iso: str
) -> dict[str, Any]:
    """The whole status the operator owns, conditions merged with the old ones."""
    new_conditions = conditions(health, facts.observed_generation, facts.generation, facts.blocker)
    new_conditions.append(
        version_condition(
            health.target_version, health.agents_connected, health.agents_outdated, health.versions
        )
    )
    return {
        **health.to_status(),
        "observedGeneration": facts.observed_generation,
        "conditions": merge(old.get("conditions", []), new_conditions, now_iso),
        "desiredRevision": facts.revision,
        "desiredHash": facts.desired_hash or None,
        "stableRevision": facts.stable_revision or None,
        "stableHash": facts.stable_hash or None,
        "agentsUnauthenticated": facts.unauthenticated,
        "agentsUnverified": facts.unverified,
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


def count_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """A Warning when the number of failed, drifted or unhealthy agents rises; the worst
    agents' reasons name who."""
    events = []
    for key, reason, text, worst_reasons in _COUNTS:
        before, after = int(old.get(key) or 0), int(new.get(key) or 0)
        if after <= before:
            continue
        who = [
            w.get("pod") or w.get("instanceUid", "")
            for w in new.get("worstAgents", [])
            if w.get("reason") in worst_reasons
        ]
        named = f" (e.g. {', '.join(who[:NAMES_SHOWN])})" if who else ""
        events.append(
            Event("Warning", reason, f"{after} {text}, was {before}{named}"[:EVENT_MESSAGE_LIMIT])
        )
    return events
