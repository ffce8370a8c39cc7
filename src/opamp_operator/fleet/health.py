"""What a fleet's status says, computed from the agent ↔ pod mapping.

Status is aggregated (docs/architecture.md): counts, a bounded versions histogram and a
bounded list of the worst agents, so a CollectorFleet object stays a few KiB at 10,000
agents. Conditions follow kstatus (Ready, Reconciling, Stalled) so Flux and Argo CD can
read them. Per-agent detail belongs to the read API and to pod conditions (`agent_ready`).

Which agents count: every live agent of the mapping, and every agent holding a pod even
when it is gone (its pod has no live Collector, which is a problem to show). An agent that
is neither live nor on a pod is a Collector that went away with its pod or restarted; the
registry forgets it soon, and the status does not count it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from opamp_operator.fleet.conditions import KState, Why, kstatus
from opamp_operator.fleet.mapping import FleetSelector, MappingResult
from opamp_operator.fleet.text import short_hash as _short
from opamp_operator.fleet.text import truncate
from opamp_operator.fleet.versions import outdated, package_problem, package_progress
from opamp_operator.fleet.views import AgentView
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.session import AgentState

VERSIONS_LIMIT = 10
OTHER_VERSIONS = "(other)"
UNKNOWN_VERSION = "(unknown)"


class ConfigState(StrEnum):
    """Where an agent is with the desired config."""

    APPLIED = "Applied"
    APPLYING = "Applying"
    FAILED = "Failed"
    PENDING = "Pending"  # reports nothing, or a status for another config
    NOT_REQUIRED = "NotRequired"  # the fleet has no desired config


class Reason(StrEnum):
    """Why an agent is not fine, as CamelCase condition and status reasons."""

    CONFIG_FAILED = "ConfigFailed"
    UNHEALTHY = "Unhealthy"
    DISCONNECTED = "Disconnected"
    STALE = "Stale"
    DRIFTED = "Drifted"
    CONFIG_APPLYING = "ConfigApplying"
    CONFIG_PENDING = "ConfigPending"
    PACKAGE_FAILED = "PackageFailed"
    OUTDATED = "Outdated"


# Lower is worse: the order of the worst-agents list.
SEVERITY: Mapping[Reason, int] = {
    Reason.CONFIG_FAILED: 0,
    Reason.UNHEALTHY: 1,
    Reason.DISCONNECTED: 2,
    Reason.STALE: 2,
    Reason.DRIFTED: 3,
    Reason.CONFIG_APPLYING: 4,
    Reason.CONFIG_PENDING: 5,
    # Neither unreadies a pod (agent_ready): the agent still runs what it ran.
    Reason.PACKAGE_FAILED: 6,
    Reason.OUTDATED: 7,
}


def config_state(agent: AgentView, desired_hash: str) -> ConfigState:
    """The agent's remote config status, read only when it is about the desired config."""
    if not desired_hash:
        return ConfigState.NOT_REQUIRED
    if agent.remote_config_hash.lower() != desired_hash.lower():
        return ConfigState.PENDING
    return {
        "APPLIED": ConfigState.APPLIED,
        "APPLYING": ConfigState.APPLYING,
        "FAILED": ConfigState.FAILED,
    }.get(agent.remote_config_status or "", ConfigState.PENDING)


def problem(
    agent: AgentView, desired_hash: str, drifted: bool | None = None
) -> tuple[Reason, str] | None:
    """The agent's worst problem and a message, or None when it is fine.

    What a gone or silent agent last said is old news, so for it only that is reported.
    """
    if agent.state is AgentState.DISCONNECTED:
        return Reason.DISCONNECTED, "disconnected from the OpAMP server"
    if agent.state is AgentState.STALE:
        return Reason.STALE, "connected but silent for longer than its heartbeat allows"
    return _live_problem(agent, desired_hash, drifted)


def _live_problem(
    agent: AgentView, desired_hash: str, drifted: bool | None
) -> tuple[Reason, str] | None:
    state = config_state(agent, desired_hash)
    if state is ConfigState.FAILED:
        error = agent.remote_config_error or "no error message"
        return Reason.CONFIG_FAILED, f"config {_short(desired_hash)} failed: {error}"
    if agent.healthy is False:
        return Reason.UNHEALTHY, f"unhealthy: {agent.health_error or 'no error message'}"
    if drifted:
        return (
            Reason.DRIFTED,
            f"effective config {_short(agent.effective_config_hash)}"
            f" differs from desired {_short(desired_hash)}",
        )
    if state is ConfigState.APPLYING:
        return Reason.CONFIG_APPLYING, f"applying config {_short(desired_hash)}"
    if state is ConfigState.PENDING:
        reported = agent.remote_config_status or "no status"
        return (
            Reason.CONFIG_PENDING,
            f"config {_short(desired_hash)} not applied yet"
            f" (reports {reported} for {_short(agent.remote_config_hash)})",
        )
    return None


def agent_ready(agent: AgentView | None, desired_hash: str) -> tuple[bool, str]:
    """The pod readiness gate `<group>/agent-ready`: connected, healthy, desired config
    applied. Returns (ready, CamelCase reason). Drift does not unready a pod: the pod still
    runs what it was given, and drift has its own policy. Health not reported (the agent
    lacks ReportsHealth, or has not said yet) does not block: only reported failure does.
    """
    if agent is None:
        return False, "NoAgent"
    found = problem(agent, desired_hash)
    if found is None:
        return True, "AgentReady"
    return False, found[0].value


def agent_ready_condition(
    agent: AgentView | None, desired_hash: str, condition_type: str
) -> dict[str, str]:
    """The pod condition for the readiness gate, with a message for `kubectl describe`."""
    ready, reason = agent_ready(agent, desired_hash)
    found = problem(agent, desired_hash) if agent is not None else None
    if agent is None:
        message = "no OpAMP agent maps to this pod"
    elif found is not None:
        message = found[1]
    else:
        message = "connected, not unhealthy" + (
            f", config {_short(desired_hash)} applied" if desired_hash else ""
        )
    return {
        "type": condition_type,
        "status": "True" if ready else "False",
        "reason": reason,
        "message": truncate(message),
    }


@dataclass(frozen=True)
class WorstAgent:
    instance_uid: str
    pod: str  # the pod it claimed, "" when none
    reason: Reason
    message: str  # at most MESSAGE_LIMIT characters

    def to_dict(self) -> dict[str, str]:
        return {
            "instanceUid": self.instance_uid,
            "pod": self.pod,
            "reason": self.reason.value,
            "message": self.message,
        }


@dataclass(frozen=True)
class FleetHealth:
    """A fleet's aggregated state; every field is a count or a bounded list."""

    fleet: str
    desired_hash: str
    pods_selected: int
    agents_connected: int  # live
    agents_mapped: int  # holding a pod, live or not
    healthy: int  # live and reporting healthy
    unhealthy: int  # reporting unhealthy, or holding a pod while disconnected or stale
    config_applied: int  # live agents, by config_state
    config_applying: int
    config_failed: int
    config_pending: int
    drifted: int  # live agents with a drift verdict of True
    pods_without_agent: int
    agents_without_pod: int  # live agents that claimed no pod
    duplicate_agents: int  # live agents that claimed a pod another agent holds
    versions: tuple[tuple[str, int], ...]  # (service.version, live agents), most first
    worst: tuple[WorstAgent, ...]
    target_version: str = ""  # spec.version.expected; "" when the fleet names none
    agents_outdated: int = 0  # live agents on another service.version than the target
    package_installing: int = 0  # live agents downloading or installing the offer
    package_failed: int = 0  # live agents reporting the offer failed to install

    def to_status(self) -> dict[str, Any]:
        """The status fields, camelCase, ready to be written."""
        return {
            "podsSelected": self.pods_selected,
            "agentsConnected": self.agents_connected,
            "agentsMapped": self.agents_mapped,
            "healthy": self.healthy,
            "unhealthy": self.unhealthy,
            "configApplied": self.config_applied,
            "configApplying": self.config_applying,
            "configFailed": self.config_failed,
            "configPending": self.config_pending,
            "drifted": self.drifted,
            "podsWithoutAgent": self.pods_without_agent,
            "agentsWithoutPod": self.agents_without_pod,
            "duplicateAgents": self.duplicate_agents,
            "versions": [{"version": v, "count": n} for v, n in self.versions],
            "targetVersion": self.target_version or None,
            "agentsOutdated": self.agents_outdated,
            "packageInstalling": self.package_installing,
            "packageFailed": self.package_failed,
            "worstAgents": [w.to_dict() for w in self.worst],
        }


def versions_histogram(
    agents: Sequence[AgentView], limit: int = VERSIONS_LIMIT
) -> tuple[tuple[str, int], ...]:
    """service.version counts: the `limit` most common, the rest summed as OTHER_VERSIONS."""
    counts = Counter(a.service_version or UNKNOWN_VERSION for a in agents)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    top, rest = ranked[:limit], ranked[limit:]
    if rest:
        top.append((OTHER_VERSIONS, sum(n for _, n in rest)))
    return tuple(top)


def summarize(
    fleet: FleetSelector | str,
    mapping: MappingResult,
    desired_hash: str,
    drift: Mapping[str, bool | None],
    worst_limit: int = 10,
    *,
    versions_limit: int = VERSIONS_LIMIT,
    target_version: str = "",
    package: PackageOffer | None = None,
) -> FleetHealth:
    """Aggregate one fleet's mapping (`FleetAssignment.mapping_for`, or `map_agents` over
    its pods and agents). `drift` maps instance_uid to a verdict; missing means unknown.
    An empty `desired_hash` means the fleet offers no config, so no config is awaited.
    `target_version` and `package`: the fleet's spec.version, if any (fleet/versions.py).
    """
    if worst_limit < 0 or versions_limit < 0:
        raise ValueError("limits must not be negative")
    members = [
        agent for uid, agent in mapping.agents.items() if agent.live or uid in mapping.pod_of
    ]
    live = [a for a in members if a.live]
    states = Counter(config_state(a, desired_hash) for a in live)
    conflicting = set(mapping.conflicting_agents)

    behind = {a.instance_uid for a in outdated(live, target_version)}
    ranked: list[tuple[int, str, Reason, str]] = []
    for agent in members:
        found = problem(agent, desired_hash, drift.get(agent.instance_uid))
        if found is None and agent.live:
            found = _version_problem(agent, target_version, package, behind)
        if found is not None:
            ranked.append((SEVERITY[found[0]], agent.instance_uid, found[0], found[1]))
    progress = package_progress(live, package)
    worst = tuple(
        WorstAgent(
            uid,
            mapping.claims[uid].pod if uid in mapping.claims else "",
            reason,
            truncate(message),
        )
        for _, uid, reason, message in heapq.nsmallest(worst_limit, ranked)
    )
    return FleetHealth(
        fleet=fleet if isinstance(fleet, str) else fleet.key,
        desired_hash=desired_hash,
        pods_selected=len(mapping.pods),
        agents_connected=len(live),
        agents_mapped=len(mapping.pod_of),
        healthy=sum(1 for a in live if a.healthy is True),
        unhealthy=sum(1 for a in members if not a.live or a.healthy is False),
        config_applied=states[ConfigState.APPLIED],
        config_applying=states[ConfigState.APPLYING],
        config_failed=states[ConfigState.FAILED],
        config_pending=states[ConfigState.PENDING],
        drifted=sum(1 for a in live if drift.get(a.instance_uid) is True),
        pods_without_agent=len(mapping.pods_without_agent),
        agents_without_pod=sum(1 for u in mapping.agents_without_pod if mapping.agents[u].live),
        duplicate_agents=sum(1 for u in conflicting if mapping.agents[u].live),
        versions=versions_histogram(live, versions_limit),
        worst=worst,
        target_version=target_version,
        agents_outdated=len(behind),
        package_installing=progress.installing,
        package_failed=progress.failed,
    )


def _version_problem(
    agent: AgentView, target: str, package: PackageOffer | None, behind: set[str]
) -> tuple[Reason, str] | None:
    failed = package_problem(agent, package)
    if failed is not None:
        return Reason.PACKAGE_FAILED, failed
    if agent.instance_uid in behind:
        runs = agent.service_version or "no version it reports"
        return Reason.OUTDATED, f"runs {runs}, the fleet's version is {target}"
    return None


# ---------------------------------------------------------------------------------------
# kstatus conditions


def _not_ready(health: FleetHealth) -> Why | None:
    """Why the fleet is not Ready once nothing is in progress, or None when it is."""
    if health.config_failed:
        return Why("ConfigFailed", f"{health.config_failed} agents failed to apply the config")
    if health.unhealthy:
        return Why("AgentsUnhealthy", f"{health.unhealthy} agents unhealthy, disconnected or stale")
    if health.pods_without_agent:
        return Why("PodsWithoutAgent", f"{health.pods_without_agent} pods have no agent")
    return None


def _in_progress(health: FleetHealth, observed_generation: int, generation: int) -> Why | None:
    if generation != observed_generation:
        return Why(
            "GenerationChanged",
            f"generation {generation} not observed yet (observed {observed_generation})",
        )
    if health.config_applying or health.config_pending:
        return Why(
            "ApplyingConfig",
            f"{health.config_applying + health.config_pending} of"
            f" {health.agents_connected} agents still to apply config"
            f" {_short(health.desired_hash)}",
        )
    return None


def conditions(
    health: FleetHealth,
    observed_generation: int,
    generation: int,
    problem: Why | None = None,
) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled for the fleet.

    Stalled: `problem` (an invalid config, a rolled-back rollout…) keeps the fleet from
    progressing until the spec changes. Reconciling: the spec changed since it was
    observed, or live agents are still to apply the desired config. Ready: neither, and
    every agent holding a pod is live, not unhealthy and on the desired config, with no
    config failure and no pod left without an agent.
    """
    if problem is not None:
        return kstatus(KState.STALLED, problem, observed_generation)
    sound = Why("ConfigValid", "the config is valid")
    settled = Why("Reconciled", "nothing left to apply")
    in_progress = _in_progress(health, observed_generation, generation)
    if in_progress is not None:
        return kstatus(KState.PROGRESSING, in_progress, observed_generation, sound=sound)
    not_ready = _not_ready(health)
    if not_ready is not None:
        return kstatus(
            KState.NOT_READY, not_ready, observed_generation, settled=settled, sound=sound
        )
    ready_text = f"{health.agents_mapped} agents live, none unhealthy" + (
        f", config {_short(health.desired_hash)} applied" if health.desired_hash else ""
    )
    return kstatus(
        KState.READY,
        Why("AgentsReady", ready_text),
        observed_generation,
        settled=settled,
        sound=sound,
    )
