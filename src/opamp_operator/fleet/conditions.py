"""The kstatus conditions of every object the operator writes status for, built here only.

kstatus (Flux) and Argo CD's health scripts read three condition types together: an
object is Current when Ready is True, InProgress while Reconciling is True, Failed when
Stalled is True. A writer that emitted only some of them would leave the others from an
earlier write (a fleet showing Reconciling=True beside Stalled=True), so every status
names exactly one `KState` and gets all three types from `kstatus`; `merge` then keeps
transition times and conditions of other types (someone else's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from opamp_operator.fleet.text import CONDITION_MESSAGE_LIMIT, truncate


def now_iso() -> str:
    """The wall clock as Kubernetes writes times (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
TYPES = (READY, RECONCILING, STALLED)


class KState(StrEnum):
    """What the object's conditions say, as kstatus computes it."""

    READY = "Ready"  # Current
    PROGRESSING = "Progressing"  # InProgress: the operator is still acting
    NOT_READY = "NotReady"  # settled, nothing in progress, but not Ready (e.g. agents unhealthy)
    STALLED = "Stalled"  # Failed: nothing moves until the spec (or a referenced object) changes


@dataclass(frozen=True)
class Why:
    reason: str  # CamelCase, as Kubernetes condition reasons are
    message: str


class FleetProblem(Exception):  # noqa: N818 - a condition to report, not an error
    """What keeps an object from progressing until its spec (or an object it names)
    changes, raised where it is found and written as Stalled with its own reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.why = Why(reason, message)


def condition(kind: str, status: bool, why: Why, generation: int) -> dict[str, Any]:
    """One condition, without its lastTransitionTime (that is `merge`'s)."""
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": why.reason,
        "message": truncate(why.message, CONDITION_MESSAGE_LIMIT),
        "observedGeneration": generation,
    }


def kstatus(
    state: KState,
    why: Why,
    generation: int,
    *,
    settled: Why | None = None,
    sound: Why | None = None,
) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled for `state`. `why` explains the state; `settled`
    is Reconciling's explanation when it is False, `sound` Stalled's when it is False
    (both default to `why`)."""
    settled = settled or why
    sound = sound or why
    if state is KState.STALLED:
        return [
            condition(READY, False, why, generation),
            condition(RECONCILING, False, Why("Stalled", f"stalled: {why.reason}"), generation),
            condition(STALLED, True, why, generation),
        ]
    return [
        condition(READY, state is KState.READY, why, generation),
        condition(
            RECONCILING,
            state is KState.PROGRESSING,
            why if state is KState.PROGRESSING else settled,
            generation,
        ),
        condition(STALLED, False, sound, generation),
    ]


def merge(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], now_iso: str
) -> list[dict[str, Any]]:
    """New conditions with lastTransitionTime kept from the old ones whose status did not
    change, and `now_iso` where it did. Conditions of other types (someone else's) are
    kept as they were, after ours. The inputs are not modified."""
    old_by_type = {c.get("type"): c for c in old}
    merged: list[dict[str, Any]] = []
    for cond in new:
        out = dict(cond)
        before = old_by_type.get(cond["type"])
        if before is not None and before.get("status") == cond["status"]:
            out["lastTransitionTime"] = before.get("lastTransitionTime") or now_iso
        else:
            out["lastTransitionTime"] = now_iso
        merged.append(out)
    ours = {c["type"] for c in new}
    merged.extend(dict(c) for c in old if c.get("type") not in ours)
    return merged
