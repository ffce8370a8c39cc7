"""Drift remediation (policy Remediate) as a pure function over drift verdicts.

A drifted agent is first offered the desired config again: an agent whose Collector was
restarted with another file, or lost what it applied, takes it back. If the drift
outlives a re-offer and the agent accepts restart commands, it is told to restart once.
If drift still persists, something local overrides the fleet's config (an extra config
file merged after the remote one, an environment variable): the operator stops trying
for that desired config and reports it, rather than fighting the agent forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from opamp_operator.fleet.events import Event, name_some


class Action(StrEnum):
    REOFFER = "Reoffer"
    RESTART = "Restart"


@dataclass(frozen=True)
class Attempt:
    """What has been tried for one agent against one desired config."""

    desired_hash: str
    reoffers: int = 0
    restarts: int = 0
    last_at: float = 0.0
    gave_up: bool = False


@dataclass(frozen=True)
class RemediationSettings:
    # Time for an agent to apply and report before the next step is taken.
    wait_seconds: float = 30.0
    max_reoffers: int = 1
    max_restarts: int = 1


@dataclass(frozen=True)
class RemediationPlan:
    actions: Mapping[str, Action]
    attempts: Mapping[str, Attempt]
    # Agents that were being remediated and are no longer drifted.
    remediated: tuple[str, ...]
    # Agents for which every step has been tried, newly this round.
    gave_up: tuple[str, ...]


def plan_remediation(
    drift: Mapping[str, bool | None],
    attempts: Mapping[str, Attempt],
    desired_hash: str,
    can_restart: Mapping[str, bool],
    *,
    now: float,
    settings: RemediationSettings | None = None,
) -> RemediationPlan:
    """The next remediation step per drifted agent.

    `drift` holds the verdicts of the fleet's live agents (True drifted, False in sync,
    None unknown); agents missing from it are gone, and their attempts are dropped. An
    attempt made for another desired config does not count: a new config starts over.
    """
    settings = settings or RemediationSettings()
    actions: dict[str, Action] = {}
    kept: dict[str, Attempt] = {}
    remediated: list[str] = []
    gave_up: list[str] = []
    for uid, verdict in sorted(drift.items()):
        attempt = attempts.get(uid)
        if attempt is not None and attempt.desired_hash != desired_hash:
            attempt = None
        if verdict is not True:
            if verdict is False and attempt is not None and not attempt.gave_up:
                remediated.append(uid)
            elif verdict is None and attempt is not None:
                kept[uid] = attempt
            continue
        attempt = attempt or Attempt(desired_hash)
        waited = attempt.reoffers + attempt.restarts == 0 or (
            now - attempt.last_at >= settings.wait_seconds
        )
        if attempt.gave_up or not waited:
            kept[uid] = attempt
            continue
        if attempt.reoffers < settings.max_reoffers:
            actions[uid] = Action.REOFFER
            attempt = replace(attempt, reoffers=attempt.reoffers + 1, last_at=now)
        elif can_restart.get(uid, False) and attempt.restarts < settings.max_restarts:
            actions[uid] = Action.RESTART
            attempt = replace(attempt, restarts=attempt.restarts + 1, last_at=now)
        else:
            attempt = replace(attempt, gave_up=True)
            gave_up.append(uid)
        kept[uid] = attempt
    return RemediationPlan(actions, kept, tuple(remediated), tuple(gave_up))


# What each outcome of a round tells the fleet's users: (Event type, reason, wording).
_EVENTS = (
    (
        Action.REOFFER,
        "Normal",
        "DriftRemediating",
        "re-offered the desired config to {n} drifted agents: {who}",
    ),
    (
        Action.RESTART,
        "Normal",
        "DriftRemediating",
        "drift outlived the re-offer; restarting {n} agents: {who}",
    ),
    ("remediated", "Normal", "Remediated", "{n} agents run the desired config again: {who}"),
    (
        "gave_up",
        "Warning",
        "RemediationFailed",
        "drift persists on {n} agents after re-offer"
        " and restart; a local config may override the fleet's: {who}",
    ),
)


def remediation_events(plan: RemediationPlan, pod_of: Mapping[str, str]) -> list[Event]:
    """One Event per kind of outcome in the round, naming a few pods (or agents)."""
    groups: dict[object, list[str]] = {
        action: [uid for uid, a in plan.actions.items() if a is action] for action in Action
    }
    groups["remediated"] = list(plan.remediated)
    groups["gave_up"] = list(plan.gave_up)
    events = []
    for key, kind, reason, wording in _EVENTS:
        uids = groups[key]
        if uids:
            who = name_some(pod_of.get(uid, uid) for uid in uids)
            events.append(Event(kind, reason, wording.format(n=len(uids), who=who)))
    return events
