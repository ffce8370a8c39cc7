"""Kubernetes Events as plain data: the pure layers decide them, the shell emits them —
one per transition or per rise of a count, never one per agent or per heartbeat."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opamp_operator.fleet.conditions import READY
from opamp_operator.fleet.versions import UP_TO_DATE

EVENT_MESSAGE_LIMIT = 1024
GOOD_WHEN_TRUE = frozenset({READY, UP_TO_DATE})
NAMES_SHOWN = 5


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


def condition_events(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]
) -> list[Event]:
    """One Event for every condition whose status changed to True or False: Normal when
    it moved the good way (Ready and AgentsUpToDate True, the others False), Warning
    otherwise. Unknown is no news."""
    before = {c.get("type"): c.get("status") for c in old}
    events = []
    for cond in new:
        if before.get(cond["type"]) == cond["status"] or cond["status"] == "Unknown":
            continue
        good = (cond["type"] in GOOD_WHEN_TRUE) == (cond["status"] == "True")
        events.append(
            Event(
                "Normal" if good else "Warning",
                f"{cond['type']}{cond['status']}",
                f"{cond['reason']}: {cond.get('message', '')}"[:EVENT_MESSAGE_LIMIT],
            )
        )
    return events


def name_some(names: Iterable[str]) -> str:
    """A few names for a message, and how many more there are."""
    ordered = sorted(names)
    more = len(ordered) - NAMES_SHOWN
    return ", ".join(ordered[:NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")
