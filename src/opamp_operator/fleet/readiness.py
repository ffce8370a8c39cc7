"""The agent-ready readiness gate across operator starts: which condition to write on a
gated pod, and when to leave it alone.

A new operator process knows no agent: until they reconnect, every gated pod would look
agent-less and drop out of its Services for nothing. So during a startup grace a pod
whose agent this process has not seen yet keeps the condition it has; agents it has seen
(connected, or gone since) are judged at once. The grace starts at the first status tick
(a standby's handlers tick only once it is active) and again after the ticks stopped
for longer than the grace, as they do while a replica is standby.

Times are wall-clock seconds, as the OpAMP core stamps `AgentView.connected_at`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opamp_operator.fleet.views import AgentView


@dataclass(frozen=True)
class Spell:
    """A stretch of time during which this process has been handling fleets."""

    started: float
    last_tick: float


def next_spell(spell: Spell | None, now: float, grace: float, interval: float) -> Spell:
    """The spell a status tick at `now` belongs to. Ticks come every `interval`; a gap of
    more than the grace beyond that means the handlers were paused (standby) and the
    agents refused meanwhile, so a new spell (and grace) begins."""
    if spell is None or now - spell.last_tick > grace + interval:
        return Spell(started=now, last_tick=now)
    return Spell(started=spell.started, last_tick=now)


def held_since(spell: Spell, now: float, grace: float) -> float | None:
    """While the spell's grace lasts, when it started (agents not seen since are held);
    None once it is over."""
    return spell.started if now - spell.started < grace else None


def seen_since(agent: AgentView | None, since: float) -> bool:
    """Whether this process has had the agent's own word since `since`: it is connected,
    or it connected after that and has left since."""
    return agent is not None and (agent.connected or agent.connected_at >= since)


def gate_write(
    observed: tuple[str, str] | None,
    wanted: Mapping[str, str],
    *,
    held: bool,
    now_iso: str,
) -> dict[str, str] | None:
    """The condition to patch onto a pod whose gate shows `observed` (status, reason;
    None: absent), or None to leave it. `held`: its agent is not seen yet during the
    grace. `lastTransitionTime` only when the status changes (the patch merges by type,
    so the pod keeps its own otherwise)."""
    if observed == (wanted["status"], wanted["reason"]) or held:
        return None
    condition = dict(wanted)
    if observed is None or observed[0] != wanted["status"]:
        condition["lastTransitionTime"] = now_iso
    return condition
