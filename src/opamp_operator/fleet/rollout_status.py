"""What the ConfigRollout shell (k8s/rollouts.py) would otherwise decide itself, over
plain data: whether a rollout can be planned now (`blocker`, `holds`), the status it
writes (`rollout_status`, `problem_status`) and the patch that status calls for
(`status_patch`), its kstatus conditions, and what its fleet is told (`fleet_problem`).

The status shape is `api.models.ConfigRolloutStatus`: the planner writes the progress
keys (`Progress.to_status`), this module the rest; tests/unit/test_rollout_status.py holds
the two together. Like a fleet's status, it is compared with the status read and only
the keys that changed are patched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opamp_operator.fleet.conditions import KState, Why, kstatus, merge
from opamp_operator.fleet.rollout import STOPPED, Decision, Phase, Progress
from opamp_operator.fleet.text import HASH_SHOWN


@dataclass(frozen=True)
class Facts:
    """What the shell read about a rollout and the fleet it names, before planning."""

    rollout: str  # namespace/name
    fleet: str = ""  # namespace/name of spec.fleetRef ("" when the spec is invalid)
    spec_error: str | None = None  # why the spec does not validate
    reconciled: bool = False  # the operator holds a record of the fleet
    exists: bool = False  # the apiserver has the fleet (asked only when not reconciled)
    governing: str | None = None  # the rollout that governs the fleet (the oldest)
    revision: bool = False  # the fleet has a valid config revision
    fleet_problem: str | None = None  # why it has none, when known


@dataclass(frozen=True)
class Blocker:
    """Why the rollout is not planned this tick."""

    why: Why
    report: bool = True  # False: say nothing; the fleet's own handler comes first


def blocker(facts: Facts) -> Blocker | None:
    """The first reason the rollout cannot be planned, or None. A rollout that cannot act
    says why (Stalled) and changes nothing else."""
    fleet = f"CollectorFleet {facts.fleet}"
    if facts.spec_error is not None:
        return Blocker(Why("InvalidSpec", f"invalid spec: {facts.spec_error}"))
    if not facts.reconciled and facts.exists:
        # E.g. right after a start: the fleet's handler reads it first, then the rollout.
        return Blocker(Why("FleetNotReconciled", f"{fleet} is not reconciled yet"), False)
    if not facts.reconciled:
        return Blocker(Why("FleetNotFound", f"{fleet} does not exist"))
    if facts.governing != facts.rollout:
        other = facts.governing or "?"
        return Blocker(Why("Conflict", f"{fleet} is governed by ConfigRollout {other}"))
    if not facts.revision:
        return Blocker(
            Why(
                "FleetNotReady",
                f"{fleet} has no valid config revision: "
                f"{facts.fleet_problem or 'not reconciled yet'}",
            )
        )
    return None


@dataclass(frozen=True)
class RolloutTiming:
    """How often rollouts are planned and how long a start only holds them: `run`'s
    ConfigRollouts and `serve`'s fleets file rollouts alike."""

    interval: float = 2.0
    """Seconds between runs of each rollout's planner (gate verdicts, step changes)."""
    startup_grace: float = 15.0
    """After a start, how long a rollout only holds its persisted progress while agents
    reconnect, before planning again."""


def holds(planned: bool, uptime: float, grace: float) -> bool:
    """Whether a rollout whose progress is in status only holds it (its members keep the
    desired revision, the others the stable one) instead of being planned: right after a
    start, until this process planned it, a step armed now would size itself on the few
    agents that have reconnected so far."""
    return not planned and uptime < grace


def known_stable(
    fleet_status: Mapping[str, Any], previous: tuple[str, str] | None
) -> tuple[str, str]:
    """(revision, hash) the fleet's agents ran before a rollout ever planned: what the
    fleet's status says, else what the operator knew of the fleet before."""
    stable = (
        str(fleet_status.get("stableRevision") or ""),
        str(fleet_status.get("stableHash") or ""),
    )
    return previous if not stable[1] and previous is not None else stable


def rollout_conditions(
    decision: Decision | None, generation: int, problem: Why | None = None
) -> list[dict[str, Any]]:
    """kstatus: Ready when Succeeded; Reconciling while it moves; Stalled when it stopped
    on a failure, a preflight block, or a spec that references nothing usable."""
    if problem is not None or decision is None:
        return kstatus(KState.STALLED, problem or Why("Unknown", ""), generation)
    phase = decision.progress.phase
    message = decision.progress.message or phase.value
    if decision.preflight is not None and decision.preflight.blocked:
        return kstatus(KState.STALLED, Why("PreflightFailed", message), generation)
    if phase is Phase.SUCCEEDED:
        return kstatus(KState.READY, Why("Succeeded", message), generation)
    if phase in STOPPED:
        return kstatus(KState.STALLED, Why(phase.value, message), generation)
    return kstatus(KState.PROGRESSING, Why(phase.value, message), generation)


_EVERY_AGENT = "every agent runs stable revision {stable}"
_FLEET_SAYS = {
    Phase.ROLLED_BACK: "rolled back revision {revision}; " + _EVERY_AGENT,
    Phase.ABORTED: "was aborted on revision {revision}; " + _EVERY_AGENT,
    Phase.FAILED: "failed on revision {revision} and holds: agents it has not reached run "
    "stable revision {stable}",
}


def fleet_problem(progress: Progress) -> Why | None:
    """What the governed fleet's conditions say while the rollout stopped short."""
    said = _FLEET_SAYS.get(progress.phase)
    if said is None:
        return None
    revision = f"{progress.desired_revision} ({progress.desired_hash[:HASH_SHOWN]})"
    text = said.format(revision=revision, stable=progress.stable_revision)
    return Why(f"Rollout{progress.phase.value}", f"the ConfigRollout {text}: {progress.message}")


def rollout_status(
    decision: Decision, generation: int, old: Mapping[str, Any], now_iso: str
) -> dict[str, Any]:
    """The whole status the operator owns after a plan, conditions merged with the old
    ones. After a rollback nobody is a member any more: the culprits stay on record."""
    failing = [agent.to_status() for agent in decision.failing]
    if not failing and decision.progress.phase in STOPPED:
        failing = list(old.get("failingAgents") or [])
    preflight = decision.preflight
    return {
        **decision.progress.to_status(),
        **_observed(generation, old, rollout_conditions(decision, generation), now_iso),
        "agents": decision.managed,
        "unmanaged": decision.unmanaged,
        "preflight": preflight.to_status() if preflight is not None else None,
        "failingAgents": failing,
    }


def problem_status(
    why: Why, generation: int, old: Mapping[str, Any], now_iso: str
) -> dict[str, Any]:
    """A rollout that cannot act: only its conditions (Stalled, `why`) change."""
    return _observed(generation, old, rollout_conditions(None, generation, why), now_iso)


def _observed(
    generation: int, old: Mapping[str, Any], conditions: list[dict[str, Any]], now_iso: str
) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": merge(old.get("conditions", []), conditions, now_iso),
    }


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The keys of `new` that differ from `old` (None removes one); None when none do."""
    changed = {key: value for key, value in new.items() if old.get(key) != value}
    return changed or None
