"""Which Kubernetes Events a fleet's status change deserves, decided over plain data.

The shell only emits what these return: one Event per transition or per rise of a count,
never one per agent or per heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opamp_operator.fleet.conditions import READY
from opamp_operator.fleet.health import Reason

EVENT_MESSAGE_LIMIT = 1024
NAMES_SHOWN = 5


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


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
)


def condition_events(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]
) -> list[Event]:
    """One Event for every condition whose status changed: Normal when it moved the good
    way (Ready True, the others False), Warning otherwise."""
    before = {c.get("type"): c.get("status") for c in old}
    events = []
    for cond in new:
        if before.get(cond["type"]) == cond["status"]:
            continue
        good = (cond["type"] == READY) == (cond["status"] == "True")
        events.append(
            Event(
                "Normal" if good else "Warning",
                f"{cond['type']}{cond['status']}",
                f"{cond['reason']}: {cond.get('message', '')}"[:EVENT_MESSAGE_LIMIT],
            )
        )
    return events


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


def name_some(names: Iterable[str]) -> str:
    """A few names for a message, and how many more there are."""
    ordered = sorted(names)
    more = len(ordered) - NAMES_SHOWN
    return ", ".join(ordered[:NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")
