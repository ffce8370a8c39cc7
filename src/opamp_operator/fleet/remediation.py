"""Drift remediation (policy Remediate) as a pure function over drift verdicts.

A drifted agent is first offered the desired config again: an agent whose Collector was
restarted with another file, or lost what it applied, takes it back. If the drift
outlives a re-offer and the agent accepts restart commands, it is told to restart once.
If drift still persists, something local overrides the fleet's config (an extra config
file merged after the remote one, an environment variable): the operator stops trying
for that desired config and reports it, rather than fighting the agent forever.

What was tried outlives the operator process: the shell keeps each pod-backed agent's
attempt on its pod as one small JSON value (`encode_attempt`), loads it before deciding
(`known_attempts`) and writes back only what a round changed (`persisted_changes`), so
a restarted or failed-over operator neither repeats a step nor re-offers to an agent it
gave up on. Times are wall-clock seconds, comparable across processes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

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
    None unknown or not judged now); agents missing from it are gone, and their attempts
    are dropped from memory (a pod-backed agent's stays on its pod). An attempt made for
    another desired config does not count: a new config starts over.
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


# ---- persisted attempts -----------------------------------------------------------------

# An encoded attempt is at most this long; anything longer is not one of ours.
PERSISTED_LIMIT = 256
# Steps counted at most in a persisted attempt (the settings allow a handful).
_STEPS_LIMIT = 100
_HASH = re.compile(r"[0-9a-f]{1,64}")


def encode_attempt(attempt: Attempt) -> str:
    """One small JSON value: the desired config's hash, the steps taken, whether the
    operator gave up, and when the last step was taken (whole seconds, UTC)."""
    at = datetime.fromtimestamp(int(attempt.last_at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    value = {
        "hash": attempt.desired_hash,
        "reoffers": attempt.reoffers,
        "restarts": attempt.restarts,
        "gaveUp": attempt.gave_up,
        "at": at,
    }
    return json.dumps(value, separators=(",", ":"))


def _steps(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _STEPS_LIMIT
    return value if ok else None


def decode_attempt(text: str) -> Attempt | None:
    """The attempt `encode_attempt` wrote, or None for anything else (absent, too long,
    edited into something else): such an agent is treated as never tried."""
    if not text or len(text) > PERSISTED_LIMIT:
        return None
    try:
        value = json.loads(text)
        at = datetime.strptime(str(value["at"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        desired_hash, gave_up = value["hash"], value["gaveUp"]
    except (ValueError, TypeError, KeyError):
        return None
    reoffers, restarts = _steps(value.get("reoffers")), _steps(value.get("restarts"))
    if (
        reoffers is None
        or restarts is None
        or not isinstance(gave_up, bool)
        or not isinstance(desired_hash, str)
        or not _HASH.fullmatch(desired_hash)
    ):
        return None
    return Attempt(desired_hash, reoffers, restarts, at.timestamp(), gave_up)


def _progress(attempt: Attempt) -> tuple[bool, int, float]:
    return attempt.gave_up, attempt.reoffers + attempt.restarts, attempt.last_at


def known_attempts(
    memory: Mapping[str, Attempt], persisted: Mapping[str, str], desired_hash: str
) -> dict[str, Attempt]:
    """What has been tried per agent for the desired config: this process's memory and
    what the agents' pods hold (`persisted`, agent → encoded attempt), the further along
    of the two where both exist. Steps only ever add up, so the pod wins after a restart
    or when another replica acted meanwhile, and memory wins while the pod watch has not
    yet shown what this process wrote."""
    found: dict[str, Attempt] = {}
    loaded = {uid: decode_attempt(text) for uid, text in persisted.items()}
    for uid in set(memory) | set(loaded):
        candidates = [
            a for a in (memory.get(uid), loaded.get(uid)) if a and a.desired_hash == desired_hash
        ]
        if candidates:
            found[uid] = max(candidates, key=_progress)
    return found


def persisted_changes(
    plan: RemediationPlan, drift: Mapping[str, bool | None], persisted: Mapping[str, str]
) -> dict[str, str | None]:
    """After a round, what each pod-backed agent's pod should hold where it differs from
    what it holds (`persisted`: every such agent, "" for nothing): the encoded attempt,
    or None to remove it once the agent is back in sync or nothing is being tried for
    the desired config. Agents without a verdict (gone) keep theirs."""
    changes: dict[str, str | None] = {}
    for uid, held in persisted.items():
        if uid in plan.attempts:
            wanted: str | None = encode_attempt(plan.attempts[uid])
        elif uid in drift:
            wanted = None
        else:
            continue
        if (wanted or "") != held:
            changes[uid] = wanted
    return changes
