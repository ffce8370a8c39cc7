"""The ConfigRollout planner (docs/rollout.md) as a pure function.

`plan` takes the rollout's policy, its progress as persisted in status, the fleet's live
agents, the time and the control annotations, and returns the next progress, which agents
are members (offered the desired revision) and what to report. Everything the planner
remembers between ticks is in `Progress`, which round-trips exactly through the status
dict: a restarted operator, or the standby taking over, plans exactly as the old one would
have. Membership is a bucket cutoff plus the selectors of the armed selector steps, so the
members follow from the progress alone, whatever agents come and go.

One `plan` call runs the state machine to a fixed point: a step that passes moves to the
next one, which is armed (preflight, cutoff raised) and evaluated in the same call, so
a rollout whose gates already hold never waits a tick per step.

Phases change only through `_to`, which refuses a move `ALLOWED` does not list and resets
what the new phase does not carry (`ONLY_IN`): the transitions are data, stated below.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from fractions import Fraction
from typing import Any

from opamp_operator.fleet.events import Event
from opamp_operator.fleet.text import HASH_SHOWN, truncate

MAX_BUCKET = 2**64 - 1
# The cutoff of a membership that holds nobody: every bucket is above it.
NOBODY = -1
# At most this many failing agents are reported (status.failingAgents), worst first.
FAILING_LIMIT = 10
# At most this many missing components are listed in status.preflight.missing.
MISSING_SHOWN = 20
# The control annotations (opampoperator.io/<name>), in the order they are acted on.
CONTROL_NAMES = ("promote", "abort", "retry")


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


class OnFailure(StrEnum):
    ROLLBACK = "Rollback"
    PAUSE = "Pause"


class PauseReason(StrEnum):
    STEP = "Step"  # a step's pause: seconds, or until promoted
    SPEC = "SpecPaused"  # spec.paused: holds everything, a step's pause included


class FailReason(StrEnum):
    """Why a member counts against the gates, worst first."""

    CONFIG_FAILED = "ConfigFailed"
    APPLY_TIMEOUT = "ApplyTimeout"
    UNHEALTHY = "Unhealthy"
    DRIFTED = "Drifted"


SEVERITY: Mapping[str, int] = {reason.value: rank for rank, reason in enumerate(FailReason)}

# The phases an abort acts in, and those a retry acts in.
ABORTABLE = frozenset({Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED, Phase.FAILED})
RETRYABLE = frozenset({Phase.FAILED, Phase.ROLLED_BACK, Phase.ABORTED})
# The rollout is over (for this revision and attempt); `finished_at` says when.
TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK, Phase.ABORTED})
# Stopped short of the desired revision: nothing moves until abort, retry or a new one.
STOPPED = frozenset({Phase.FAILED, Phase.ROLLED_BACK, Phase.ABORTED})

# Where each phase may go; `_to` raises `IllegalTransitionError` on any other move. Why:
#   any -> Pending       a new fleet revision supersedes whatever runs (restart at step 0)
#   any -> Succeeded     the desired revision is the stable one: nothing to roll out
#   Pending, Progressing, Paused (the active phases) -> any of them: arm a step, pause
#       (a step's pause, spec.paused), end a pause (time, promote, spec.paused cleared),
#       pass a step; -> Succeeded (the last step passed), Failed / RolledBack (a gate
#       broke, onFailure Pause / Rollback), Aborted (the abort control)
#   Failed -> Aborted    abort also acts on a rollout that failed and holds its members
#   Failed, RolledBack, Aborted -> Progressing   the retry control: attempt + 1, step 0
# Succeeded never moves but for a new revision: a stable revision is not judged again.
ALLOWED: Mapping[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset(Phase),
    Phase.PROGRESSING: frozenset(Phase),
    Phase.PAUSED: frozenset(Phase),
    Phase.SUCCEEDED: frozenset({Phase.PENDING}),
    Phase.FAILED: frozenset({Phase.PENDING, Phase.SUCCEEDED, Phase.ABORTED, Phase.PROGRESSING}),
    Phase.ROLLED_BACK: frozenset({Phase.PENDING, Phase.SUCCEEDED, Phase.PROGRESSING}),
    Phase.ABORTED: frozenset({Phase.PENDING, Phase.SUCCEEDED, Phase.PROGRESSING}),
}
# Progress fields only some phases carry; `_to` resets them to their defaults in any other.
ONLY_IN: Mapping[str, frozenset[Phase]] = {
    "pause_reason": frozenset({Phase.PAUSED}),
    "paused_at": frozenset({Phase.PAUSED}),
    "pause_until": frozenset({Phase.PAUSED}),
    "finished_at": TERMINAL,
    # After a rollback or an abort nobody is a member: no cutoff, no armed selector.
    "cutoff": frozenset(Phase) - {Phase.ROLLED_BACK, Phase.ABORTED},
    "step_armed": frozenset(Phase) - {Phase.ROLLED_BACK, Phase.ABORTED},
}


class IllegalTransitionError(RuntimeError):
    """A move `ALLOWED` does not list, or a field set in a phase that does not carry it:
    a bug in the planner, never a user error."""


@dataclass(frozen=True)
class Gates:
    max_failed: int = 0
    # When set: allowed failures = floor(pct * members / 100), instead of max_failed.
    max_failed_percent: float | None = None
    max_unhealthy: int = 0
    require_effective_config: bool = True
    bake_seconds: float = 0.0
    apply_timeout_seconds: float = 300.0
    # Only agents holding their pod by a credential count in the gates: one that merely
    # claims a pod (a spoofer, in a fleet with agentAuth None) can neither fail a step
    # nor make it pass. It is still offered the config.
    verified_only: bool = False


@dataclass(frozen=True)
class Step:
    """One step: `agents` or `percent` (cumulative), else a selector step.

    A selector step adds the agents whose attributes and pod labels include all of its
    own; a selector step with neither adds nobody (a step of only a pause or gates).
    """

    agents: int | None = None
    percent: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pause_seconds: float | None = None
    pause_until_promoted: bool = False
    gates: Gates = Gates()

    @property
    def is_selector(self) -> bool:
        return self.agents is None and self.percent is None

    @property
    def pauses(self) -> bool:
        return self.pause_seconds is not None or self.pause_until_promoted


@dataclass(frozen=True)
class Policy:
    steps: tuple[Step, ...] = ()  # empty means one step of percent=100, with `gates`
    gates: Gates = Gates()  # the rollout's own gates (spec.gates); steps carry their own
    on_failure: OnFailure = OnFailure.ROLLBACK
    paused: bool = False  # spec.paused
    preflight: bool = True
    block_on_unreported: bool = False


@dataclass(frozen=True)
class Controls:
    """The control annotations' tokens, "" when absent."""

    promote: str = ""
    abort: str = ""
    retry: str = ""

    def tokens(self) -> dict[str, str]:
        return {
            name: token
            for name, token in zip(
                CONTROL_NAMES, (self.promote, self.abort, self.retry), strict=True
            )
            if token
        }


@dataclass(frozen=True)
class Revision:
    name: str
    hash: str
    # Component types the config defines per plural kind, e.g. {"exporters": {"debug"}}.
    components: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutAgent:
    """A live agent of the fleet, as the planner needs it."""

    uid: str
    pod: str = ""  # "namespace/name" or ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    accepts_remote_config: bool = True  # False: unmanaged, not in the population at all
    healthy: bool | None = None
    config_status: str | None = None  # "APPLIED" | "APPLYING" | "FAILED" | "UNSET" | None
    config_hash: str = ""  # the hash config_status is about
    config_error: str = ""
    drifted: bool | None = None  # effective config vs the one offered; None unknown
    components: Mapping[str, frozenset[str]] | None = None  # None: not reported
    connected_at: float = 0.0
    health_error: str = ""
    verified: bool = True  # holds its pod by a credential (fleet.mapping.Trust above CLAIMED)


@dataclass(frozen=True)
class StepCounts:
    """One step's members as counted at its last evaluation."""

    offered: int = 0
    applied: int = 0
    failed: int = 0
    unhealthy: int = 0
    drifted: int = 0
    started_at: float | None = None
    finished_at: float | None = None

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "offered": self.offered,
            "applied": self.applied,
            "failed": self.failed,
            "unhealthy": self.unhealthy,
            "drifted": self.drifted,
        }
        _put_time(out, "startedAt", self.started_at)
        _put_time(out, "finishedAt", self.finished_at)
        return out

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> StepCounts:
        return cls(
            offered=_int(status.get("offered"), 0),
            applied=_int(status.get("applied"), 0),
            failed=_int(status.get("failed"), 0),
            unhealthy=_int(status.get("unhealthy"), 0),
            drifted=_int(status.get("drifted"), 0),
            started_at=_parse_time(status.get("startedAt")),
            finished_at=_parse_time(status.get("finishedAt")),
        )


@dataclass(frozen=True)
class Progress:
    """Everything the planner remembers between ticks; persisted as the rollout's status.

    `cutoff` is NOBODY (-1, omitted from status) until the first count or percent step
    arms. `step_armed` says the current step's cutoff or selector is in force (its
    preflight passed). Every time is a whole number of seconds, so status keeps it exactly.
    """

    phase: Phase = Phase.PENDING
    pause_reason: PauseReason | None = None
    message: str = ""
    desired_revision: str = ""
    desired_hash: str = ""
    stable_revision: str = ""
    stable_hash: str = ""
    current_step: int = 0
    cutoff: int = NOBODY
    step_armed: bool = False
    attempt: int = 1
    started_at: float | None = None
    step_started_at: float | None = None
    bake_started_at: float | None = None
    paused_at: float | None = None
    pause_until: float | None = None
    finished_at: float | None = None
    steps: tuple[StepCounts, ...] = ()
    controls: Mapping[str, str] = field(default_factory=dict)

    def to_status(self) -> dict[str, Any]:
        """Every status key the planner owns, always the same keys: None marks one it
        leaves out, which a merge patch removes (api.models.ConfigRolloutStatus has them)."""
        return {
            "phase": self.phase.value,
            "pauseReason": None if self.pause_reason is None else self.pause_reason.value,
            "message": self.message,
            "currentStep": self.current_step,
            "stepArmed": self.step_armed,
            "cutoff": f"{min(self.cutoff, MAX_BUCKET):016x}" if self.cutoff >= 0 else None,
            "attempt": self.attempt,
            "desiredRevision": self.desired_revision,
            "desiredHash": self.desired_hash,
            "stableRevision": self.stable_revision,
            "stableHash": self.stable_hash,
            "startedAt": _time(self.started_at),
            "stepStartedAt": _time(self.step_started_at),
            "bakeStartedAt": _time(self.bake_started_at),
            "pausedAt": _time(self.paused_at),
            "pauseUntil": _time(self.pause_until),
            "finishedAt": _time(self.finished_at),
            "steps": [counts.to_status() for counts in self.steps],
            "controls": dict(self.controls),
        }

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Progress:
        """The progress a status holds; missing or unreadable keys take their defaults.

        An empty status gives a progress with no stable revision: for a rollout seen for
        the first time, use `initial_progress` instead.
        """
        try:
            phase = Phase(status.get("phase", Phase.PENDING.value))
        except (ValueError, TypeError):
            phase = Phase.PENDING
        steps = status.get("steps")
        controls = status.get("controls")
        return cls(
            phase=phase,
            pause_reason=_pause_reason(status.get("pauseReason")),
            message=_str(status.get("message")),
            desired_revision=_str(status.get("desiredRevision")),
            desired_hash=_str(status.get("desiredHash")),
            stable_revision=_str(status.get("stableRevision")),
            stable_hash=_str(status.get("stableHash")),
            current_step=max(0, _int(status.get("currentStep"), 0)),
            cutoff=_parse_cutoff(status.get("cutoff")),
            step_armed=status.get("stepArmed") is True,
            attempt=max(1, _int(status.get("attempt"), 1)),
            started_at=_parse_time(status.get("startedAt")),
            step_started_at=_parse_time(status.get("stepStartedAt")),
            bake_started_at=_parse_time(status.get("bakeStartedAt")),
            paused_at=_parse_time(status.get("pausedAt")),
            pause_until=_parse_time(status.get("pauseUntil")),
            finished_at=_parse_time(status.get("finishedAt")),
            steps=tuple(
                StepCounts.from_status(counts)
                for counts in (steps if isinstance(steps, list) else [])
                if isinstance(counts, Mapping)
            ),
            controls=(
                {str(k): str(v) for k, v in controls.items()}
                if isinstance(controls, Mapping)
                else {}
            ),
        )


def persisted(status: Mapping[str, Any]) -> Progress | None:
    """The progress a rollout's status holds; None for a rollout never planned."""
    return Progress.from_status(status) if status.get("desiredHash") else None


@dataclass(frozen=True)
class Preflight:
    blocked: bool
    missing: Mapping[str, int]  # "exporters/kafka" -> number of joining agents lacking it
    unreported: int  # joining agents that report no components
    checked: int  # joining agents checked

    def to_status(self) -> dict[str, Any]:
        """status.preflight: the components most agents lack first, at most MISSING_SHOWN."""
        worst = sorted(self.missing.items(), key=lambda item: -item[1])[:MISSING_SHOWN]
        return {
            "blocked": self.blocked,
            "missing": [{"component": c, "agents": n} for c, n in worst],
            "unreported": self.unreported,
            "checked": self.checked,
        }


@dataclass(frozen=True)
class FailingAgent:
    uid: str
    pod: str
    reason: str  # a FailReason
    message: str

    def to_status(self) -> dict[str, Any]:
        """An item of status.failingAgents."""
        return {
            "instanceUid": self.uid,
            "pod": self.pod,
            "reason": self.reason,
            "message": truncate(self.message),
        }


@dataclass(frozen=True)
class Membership:
    """Which agents are offered the desired revision: bucket <= cutoff, or matched by the
    selector of an armed selector step, or everyone."""

    desired_hash: str
    cutoff: int = NOBODY
    selectors: tuple[tuple[Mapping[str, str], Mapping[str, str]], ...] = ()
    everyone: bool = False

    @classmethod
    def nobody(cls, desired_hash: str) -> Membership:
        return cls(desired_hash)

    @classmethod
    def all(cls, desired_hash: str) -> Membership:
        return cls(desired_hash, cutoff=MAX_BUCKET, everyone=True)

    def contains(
        self, uid: str, attributes: Mapping[str, str], pod_labels: Mapping[str, str]
    ) -> bool:
        if self.everyone or self.cutoff >= MAX_BUCKET:
            return True
        if any(_matches(sel, attributes, pod_labels) for sel in self.selectors):
            return True
        return self.cutoff >= 0 and bucket(self.desired_hash, uid) <= self.cutoff

    def runs(
        self,
        revision_hash: str,
        uid: str,
        attributes: Mapping[str, str],
        pod_labels: Mapping[str, str],
    ) -> bool:
        """Whether the agent is to run `revision_hash`, the fleet's desired revision: a
        member of this membership, which must be of that very revision (one the rollout
        has not planned yet is nobody's: the file or spec just changed)."""
        return self.desired_hash == revision_hash and self.contains(uid, attributes, pod_labels)

    def contains_agent(self, agent: RolloutAgent) -> bool:
        return self.contains(agent.uid, agent.attributes, agent.pod_labels)

    @property
    def is_empty(self) -> bool:
        """Nobody, whatever agents there are."""
        return (
            not self.everyone
            and self.cutoff < 0
            and not any(attributes or labels for attributes, labels in self.selectors)
        )


@dataclass(frozen=True)
class Decision:
    progress: Progress
    membership: Membership
    failing: tuple[FailingAgent, ...]  # at most FAILING_LIMIT, worst first
    preflight: Preflight | None  # the check run by this call, if any
    managed: int  # live agents that take remote config: the population
    unmanaged: int
    events: tuple[Event, ...]


def bucket(desired_hash: str, uid: str) -> int:
    """The agent's place in the rollout order of `desired_hash`: a new revision reshuffles."""
    digest = hashlib.sha256(f"{desired_hash}/{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def effective_steps(policy: Policy) -> tuple[Step, ...]:
    return policy.steps or (Step(percent=100, gates=policy.gates),)


def membership(policy: Policy, progress: Progress) -> Membership:
    """The members a progress stands for; the shell asks it for agents joining between ticks."""
    if progress.phase is Phase.SUCCEEDED:
        return Membership.all(progress.desired_hash)
    if progress.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
        return Membership.nobody(progress.desired_hash)
    last_armed = progress.current_step if progress.step_armed else progress.current_step - 1
    selectors = tuple(
        (step.attributes, step.pod_labels)
        for index, step in enumerate(effective_steps(policy))
        if index <= last_armed and step.is_selector and (step.attributes or step.pod_labels)
    )
    return Membership(progress.desired_hash, cutoff=progress.cutoff, selectors=selectors)


def initial_progress(
    desired: Revision, stable_revision: str, stable_hash: str, controls: Controls
) -> Progress:
    """The progress of a rollout seen for the first time: control annotations already
    present are recorded, not acted on. A fleet with no stable config has nothing to roll
    back to, so its first config is stable at once."""
    if not stable_hash or stable_hash == desired.hash:
        return Progress(
            phase=Phase.SUCCEEDED,
            message=f"revision {desired.name} is stable",
            desired_revision=desired.name,
            desired_hash=desired.hash,
            stable_revision=desired.name,
            stable_hash=desired.hash,
            controls=controls.tokens(),
        )
    return Progress(
        phase=Phase.PENDING,
        message=f"revision {desired.name} waiting to start",
        desired_revision=desired.name,
        desired_hash=desired.hash,
        stable_revision=stable_revision,
        stable_hash=stable_hash,
        controls=controls.tokens(),
    )


def _to(progress: Progress, phase: Phase, **changes: Any) -> Progress:
    """`progress` moved to `phase` with `changes`; what `phase` does not carry is reset.
    Raises IllegalTransitionError on a move ALLOWED does not list, or on a change to a field
    the phase does not carry."""
    if phase not in ALLOWED[progress.phase]:
        raise IllegalTransitionError(f"{progress.phase.value} -> {phase.value}")
    defaults = Progress()
    resets: dict[str, Any] = {}
    for name, phases in ONLY_IN.items():
        if phase in phases:
            continue
        default = getattr(defaults, name)
        if name in changes and changes[name] != default:
            raise IllegalTransitionError(f"{phase.value} does not carry {name}")
        resets[name] = default
    return replace(progress, **(changes | resets), phase=phase)


def _restart(progress: Progress, phase: Phase, **changes: Any) -> Progress:
    """A new run over `progress` (a new revision, a retry), moved to `phase`: only the
    revisions, the recorded controls and `changes` carry over."""
    fresh = Progress(
        phase=progress.phase,
        desired_revision=progress.desired_revision,
        desired_hash=progress.desired_hash,
        stable_revision=progress.stable_revision,
        stable_hash=progress.stable_hash,
        controls=progress.controls,
    )
    return _to(fresh, phase, **changes)


def plan(  # noqa: PLR0917 - the shell's interface, one argument per input
    policy: Policy,
    progress: Progress,
    desired: Revision,
    agents: Sequence[RolloutAgent],
    now: float,
    controls: Controls,
) -> Decision:
    """The next progress of the rollout and what goes with it.

    `agents` are the fleet's live agents; those that do not accept remote config are only
    counted. `now` is truncated to whole seconds.
    """
    now = float(math.floor(now))
    unique = {agent.uid: agent for agent in agents}
    population = tuple(agent for agent in unique.values() if agent.accepts_remote_config)
    tick = _Tick(policy, desired, population, now)
    result = tick.run(tick.spec_pause(tick.controls(tick.supersede(progress), controls)))
    return Decision(
        progress=result,
        membership=membership(policy, result),
        failing=tick.failing,
        preflight=tick.preflight,
        managed=len(population),
        unmanaged=len(unique) - len(population),
        events=tuple(tick.events),
    )


@dataclass(frozen=True)
class _Verdict:
    counts: StepCounts
    failing: tuple[FailingAgent, ...]
    members: int
    done: bool  # every member applied or failed
    breach: str  # why the gates fail, "" when they hold


class _Tick:
    """One plan call: the transitions, and the events and reports they produce."""

    def __init__(
        self, policy: Policy, desired: Revision, population: tuple[RolloutAgent, ...], now: float
    ) -> None:
        self.policy = policy
        self.steps = effective_steps(policy)
        self.desired = desired
        self.population = population
        self.now = now
        self.events: list[Event] = []
        self.failing: tuple[FailingAgent, ...] = ()
        self.preflight: Preflight | None = None

    def emit(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def step(self, index: int) -> Step:
        """A step of the policy; an index past its end (the steps were shortened while it
        ran) stands for the last one."""
        return self.steps[min(index, len(self.steps) - 1)]

    def label(self, index: int) -> str:
        return f"step {index + 1}/{max(len(self.steps), index + 1)}"

    def supersede(self, p: Progress) -> Progress:
        desired = self.desired
        if desired.hash != p.desired_hash:
            if p.desired_hash and p.desired_hash != p.stable_hash:
                self.emit(
                    "Superseded",
                    f"revision {desired.name} supersedes revision {p.desired_revision}"
                    f" ({p.phase.value})",
                )
            p = _restart(
                p,
                Phase.PENDING,
                message=f"revision {desired.name} waiting to start",
                desired_revision=desired.name,
                desired_hash=desired.hash,
            )
        elif desired.name != p.desired_revision:
            p = replace(p, desired_revision=desired.name)
        if p.phase is not Phase.SUCCEEDED and (not p.stable_hash or p.stable_hash == desired.hash):
            p = _to(
                p,
                Phase.SUCCEEDED,
                message=f"revision {desired.name} is stable",
                stable_revision=desired.name,
                stable_hash=desired.hash,
                finished_at=self.now,
            )
            self.emit("Succeeded", f"revision {desired.name} is stable")
        return p

    def controls(self, p: Progress, controls: Controls) -> Progress:
        """Acts on new control tokens; every token seen is recorded, so none acts twice.
        Abort wins over a retry given in the same tick."""
        new = {
            name: token
            for name, token in controls.tokens().items()
            if token != p.controls.get(name)
        }
        if not new:
            return p
        p = replace(p, controls={**p.controls, **new})
        if "abort" in new and p.phase in ABORTABLE:
            self.emit(
                "Aborted",
                f"revision {p.desired_revision} aborted; every agent back to"
                f" revision {p.stable_revision}",
                warning=True,
            )
            return _to(
                p,
                Phase.ABORTED,
                message=f"aborted; every agent back to revision {p.stable_revision}",
                finished_at=self.now,
            )
        if "retry" in new and p.phase in RETRYABLE:
            self.emit("Retried", f"revision {p.desired_revision}: attempt {p.attempt + 1}")
            return _restart(
                p,
                Phase.PROGRESSING,
                message=f"attempt {p.attempt + 1} of revision {p.desired_revision}",
                attempt=p.attempt + 1,
                started_at=self.now,
            )
        if (
            "promote" in new
            and p.phase is Phase.PAUSED
            and p.pause_reason is PauseReason.STEP
            and not self.policy.paused
        ):
            self.emit("Promoted", f"{self.label(p.current_step)}: pause ended by promote")
            return self.next_step(p)
        return p

    def spec_pause(self, p: Progress) -> Progress:
        """spec.paused freezes the rollout where it is, a step's pause included."""
        step_paused = p.phase is Phase.PAUSED and p.pause_reason is PauseReason.STEP
        if self.policy.paused:
            if p.phase in (Phase.PENDING, Phase.PROGRESSING) or step_paused:
                self.emit("Paused", f"{self.label(p.current_step)}: spec.paused is set")
                return _to(
                    p,
                    Phase.PAUSED,
                    pause_reason=PauseReason.SPEC,
                    message=f"{self.label(p.current_step)}: paused by spec.paused",
                    paused_at=p.paused_at if step_paused else self.now,
                )
            return p
        if p.phase is not Phase.PAUSED or p.pause_reason is not PauseReason.SPEC:
            return p
        self.emit("Resumed", f"{self.label(p.current_step)}: spec.paused cleared")
        if self.step_passed(p):
            return _to(
                p,
                Phase.PAUSED,
                pause_reason=PauseReason.STEP,
                message=f"{self.label(p.current_step)} passed; paused",
            )
        return _to(
            p,
            Phase.PENDING if p.started_at is None else Phase.PROGRESSING,
            message=f"{self.label(p.current_step)}: resumed",
            step_started_at=self.now if p.step_armed else p.step_started_at,
            bake_started_at=None if p.bake_started_at is None else self.now,
        )

    @staticmethod
    def step_passed(p: Progress) -> bool:
        """The current step passed and the rollout sits in its pause."""
        i = p.current_step
        return p.step_armed and i < len(p.steps) and p.steps[i].finished_at is not None

    def run(self, p: Progress) -> Progress:
        """Transitions until the rollout waits. Every pass of the loop moves to a later
        step or returns, so it ends."""
        while True:
            if p.phase in (Phase.PENDING, Phase.PROGRESSING):
                if not p.step_armed:
                    armed = self.arm(p)
                    if not armed.step_armed:
                        return self.guard(armed, transitions=True)
                    p = armed
                p = self.evaluate(p)
                if p.phase is Phase.PAUSED and self.pause_over(p):
                    p = self.next_step(p)
                if p.phase is not Phase.PROGRESSING or p.step_armed:
                    return p
            elif p.phase is Phase.PAUSED and p.pause_reason is PauseReason.STEP:
                p = self.guard(p, transitions=True)
                if p.phase is not Phase.PAUSED or not self.pause_over(p):
                    return p
                p = self.next_step(p)
            elif p.phase in (Phase.PAUSED, Phase.FAILED):
                return self.guard(p, transitions=False)
            else:
                return p

    def pause_over(self, p: Progress) -> bool:
        """A step's pause ends at its time, or at once when the policy no longer has it."""
        label = self.label(p.current_step)
        if p.pause_until is not None and self.now >= p.pause_until:
            self.emit("Resumed", f"{label}: pause over")
            return True
        if not self.step(p.current_step).pauses:
            self.emit("Resumed", f"{label}: the step has no pause")
            return True
        return False

    def members(self, p: Progress) -> list[RolloutAgent]:
        current = membership(self.policy, p)
        return [agent for agent in self.population if current.contains_agent(agent)]

    def arm(self, p: Progress) -> Progress:
        """Starts the current step if its joining agents pass preflight."""
        i = p.current_step
        label = self.label(i)
        if not self.population:
            return replace(p, message=f"{label}: waiting for managed agents")
        step = self.step(i)
        current = membership(self.policy, p)
        members = {agent.uid for agent in self.population if current.contains_agent(agent)}
        cutoff = p.cutoff
        if step.is_selector:
            joining = [
                agent
                for agent in self.population
                if agent.uid not in members
                and _matches((step.attributes, step.pod_labels), agent.attributes, agent.pod_labels)
            ]
            what = "selector " + _describe_selector(step)
        else:
            target = _target(step, len(self.population))
            what = f"{step.percent:g}%" if step.agents is None else _agents(target)
            cutoff, joining = _raise_cutoff(
                p.cutoff,
                target,
                self.population,
                members,
                self.desired.hash,
                everyone=step.agents is None and (step.percent is None or step.percent >= 100),
            )
        found = self.check(joining)
        if found is not None and found.blocked:
            message = f"{label} blocked by preflight: {_preflight_text(found)}"
            if message != p.message:
                self.emit("PreflightFailed", message, warning=True)
            return replace(p, message=message)
        offered = len(members) + len(joining)
        everyone = cutoff >= MAX_BUCKET
        self.emit(
            "StepStarted",
            f"{label}: {what} → " + ("every agent" if everyone else _agents(offered)),
        )
        return _to(
            p,
            Phase.PROGRESSING,
            message=f"{label} started: {_agents(offered)} offered revision {p.desired_revision}",
            cutoff=cutoff,
            step_armed=True,
            started_at=self.now if p.started_at is None else p.started_at,
            step_started_at=self.now,
            bake_started_at=None,
            steps=_set_counts(p.steps, i, StepCounts(offered=offered, started_at=self.now)),
        )

    def check(self, joining: Sequence[RolloutAgent]) -> Preflight | None:
        wanted = self.desired.components
        if not self.policy.preflight or not any(wanted.values()):
            return None
        missing: Counter[str] = Counter()
        unreported = 0
        for agent in joining:
            if agent.components is None:
                unreported += 1
                continue
            for kind, types in wanted.items():
                lacking = types - agent.components.get(kind, frozenset())
                missing.update(f"{kind}/{name}" for name in lacking)
        blocked = bool(missing) or (unreported > 0 and self.policy.block_on_unreported)
        self.preflight = Preflight(blocked, dict(sorted(missing.items())), unreported, len(joining))
        return self.preflight

    def verdict(self, p: Progress, index: int, clock: float) -> _Verdict:
        """The gates of step `index` over all current members, timeouts judged at `clock`."""
        gates = self.step(index).gates
        everyone = self.members(p)
        members = [a for a in everyone if a.verified or not gates.verified_only]
        start = p.step_started_at if p.step_started_at is not None else clock
        desired = self.desired.hash.lower()
        applied = failed = unhealthy = drifted = 0
        failing: list[FailingAgent] = []
        done = True
        for agent in members:
            status = agent.config_status if agent.config_hash.lower() == desired else None
            drift = agent.drifted is True
            ok = status == "APPLIED" and not (gates.require_effective_config and drift)
            failure: tuple[FailReason, str] | None = None
            if status == "FAILED":
                failure = (FailReason.CONFIG_FAILED, agent.config_error or "no error message")
            elif not ok and clock - max(start, agent.connected_at) > gates.apply_timeout_seconds:
                failure = _timeout_reason(agent, status, gates.apply_timeout_seconds)
            sick = agent.healthy is False
            applied += ok
            failed += failure is not None
            unhealthy += sick
            drifted += drift
            done = done and (ok or failure is not None)
            if sick and (failure is None or failure[0] is FailReason.DRIFTED):
                failure = (
                    FailReason.UNHEALTHY,
                    f"unhealthy: {agent.health_error or 'no error message'}",
                )
            if failure is not None:
                failing.append(
                    FailingAgent(agent.uid, agent.pod, failure[0].value, truncate(failure[1]))
                )
        failing.sort(key=lambda f: (SEVERITY[f.reason], f.pod, f.uid))
        allowed = (
            gates.max_failed
            if gates.max_failed_percent is None
            else math.floor(_exact(gates.max_failed_percent) * len(members) / 100)
        )
        breaches = []
        if failed > allowed:
            breaches.append(f"{failed} failed > {allowed} allowed")
        if unhealthy > gates.max_unhealthy:
            breaches.append(f"{unhealthy} unhealthy > {gates.max_unhealthy} allowed")
        counts = StepCounts(len(everyone), applied, failed, unhealthy, drifted)
        return _Verdict(counts, tuple(failing), len(members), done, ", ".join(breaches))

    def record(self, p: Progress, index: int, found: _Verdict) -> Progress:
        self.failing = found.failing[:FAILING_LIMIT]
        before = p.steps[index] if index < len(p.steps) else StepCounts()
        counts = replace(found.counts, started_at=before.started_at, finished_at=before.finished_at)
        return replace(p, steps=_set_counts(p.steps, index, counts))

    def guard(self, p: Progress, transitions: bool) -> Progress:
        """Counts the last armed step's members and, with `transitions`, fails the rollout
        when its gates break: a canary that goes bad during a pause, or while the next step
        waits for preflight, does not wait for a human."""
        index = p.current_step if p.step_armed else p.current_step - 1
        if index < 0:
            return p
        clock = self.now
        if p.phase is Phase.PAUSED and p.pause_reason is PauseReason.SPEC:
            clock = min(self.now, p.paused_at if p.paused_at is not None else self.now)
        found = self.verdict(p, index, clock)
        p = self.record(p, index, found)
        if transitions and found.breach:
            return self.fail(p, index, found)
        return p

    def evaluate(self, p: Progress) -> Progress:
        """Gates of the running step: fail it, keep waiting or baking, or pass it.

        A step whose members all left waits for one to come back rather than pass on no
        evidence (agents reconnecting to a restarted operator look the same); a step that
        never had anyone to add (a pause before the first step) passes.
        """
        i = p.current_step
        gates = self.step(i).gates
        found = self.verdict(p, i, self.now)
        p = self.record(p, i, found)
        label = self.label(i)
        if found.breach:
            return self.fail(p, i, found)
        if not found.members and not membership(self.policy, p).is_empty:
            return replace(p, message=f"{label}: waiting for a live member")
        if not found.done:
            return replace(
                p,
                message=f"{label}: {found.counts.applied}/{found.members} members applied"
                f" revision {p.desired_revision}",
            )
        bake_start = self.now if p.bake_started_at is None else p.bake_started_at
        if self.now - bake_start < gates.bake_seconds:
            return replace(
                p,
                bake_started_at=bake_start,
                message=f"{label}: {found.counts.applied}/{found.members} members applied;"
                f" baking {gates.bake_seconds:g}s from {_format_time(bake_start)}",
            )
        return self.pass_step(replace(p, bake_started_at=bake_start), found)

    def pass_step(self, p: Progress, found: _Verdict) -> Progress:
        i = p.current_step
        label = self.label(i)
        counts = replace(p.steps[i], finished_at=self.now)
        p = replace(p, steps=_set_counts(p.steps, i, counts))
        self.emit("StepPassed", f"{label} passed: {found.counts.applied}/{found.members} applied")
        if i >= len(self.steps) - 1:
            text = f"every step passed; revision {p.desired_revision} is stable"
            self.emit("Succeeded", text)
            return _to(
                p,
                Phase.SUCCEEDED,
                message=text,
                stable_revision=p.desired_revision,
                stable_hash=p.desired_hash,
                finished_at=self.now,
            )
        step = self.step(i)
        if not step.pauses:
            return self.next_step(p)
        until = None if step.pause_seconds is None else self.now + math.ceil(step.pause_seconds)
        text = f"{label} passed; paused " + (
            "until promoted" if until is None else f"until {_format_time(until)}"
        )
        self.emit("Paused", text)
        return _to(
            p,
            Phase.PAUSED,
            pause_reason=PauseReason.STEP,
            message=text,
            paused_at=self.now,
            pause_until=until,
        )

    def next_step(self, p: Progress) -> Progress:
        return _to(
            p,
            Phase.PROGRESSING,
            message=f"{self.label(p.current_step + 1)} waiting to start",
            current_step=p.current_step + 1,
            step_armed=False,
            bake_started_at=None,
        )

    def fail(self, p: Progress, index: int, found: _Verdict) -> Progress:
        """The gates broke: roll back, or halt with the members kept (onFailure Pause).
        Messages put the outcome before the worst agent's detail, which truncation cuts."""
        summary = f"{self.label(index)} failed: {found.breach}"
        worst = found.failing[0] if found.failing else None
        detail = (
            f" (first: {worst.pod or worst.uid} {worst.reason}: {worst.message})" if worst else ""
        )
        self.emit("GateFailed", truncate(summary + detail), warning=True)
        if self.policy.on_failure is OnFailure.PAUSE:
            return _to(
                p,
                Phase.FAILED,
                message=truncate(f"{summary}; members keep the revision{detail}"),
                finished_at=self.now,
            )
        back = f"every agent back to revision {p.stable_revision}"
        self.emit("RolledBack", back, warning=True)
        return _to(
            p,
            Phase.ROLLED_BACK,
            message=truncate(f"{summary}; {back}{detail}"),
            finished_at=self.now,
        )


def _matches(
    selector: tuple[Mapping[str, str], Mapping[str, str]],
    attributes: Mapping[str, str],
    pod_labels: Mapping[str, str],
) -> bool:
    wanted_attributes, wanted_labels = selector
    if not wanted_attributes and not wanted_labels:
        return False
    return all(attributes.get(k) == v for k, v in wanted_attributes.items()) and all(
        pod_labels.get(k) == v for k, v in wanted_labels.items()
    )


def _exact(value: float) -> Fraction:
    """A percentage as the user wrote it: 0.1 is 1/10, not the float just above it."""
    return Fraction(repr(value))


def _target(step: Step, population: int) -> int:
    """How many agents a count or percent step wants; `population` or more means all."""
    if step.agents is not None:
        return max(0, step.agents)
    percent = step.percent if step.percent is not None else 100.0
    if percent >= 100:
        return population
    return max(0, math.ceil(_exact(percent) * population / 100))


def _raise_cutoff(
    cutoff: int,
    target: int,
    population: Sequence[RolloutAgent],
    members: set[str],
    desired_hash: str,
    *,
    everyone: bool = False,
) -> tuple[int, list[RolloutAgent]]:
    """The smallest cutoff, never below `cutoff`, that makes `target` agents members,
    and the agents it adds. Only a step of 100 % (`everyone`) takes the maximum, and with
    it every later joiner: a count step covers its number of agents and no more, even
    when fewer are connected (right after an operator or fleet restart, say)."""
    if everyone:
        return MAX_BUCKET, [agent for agent in population if agent.uid not in members]
    needed = target - len(members)
    if needed <= 0:
        return cutoff, []
    ranked = sorted(
        (bucket(desired_hash, agent.uid), agent.uid, agent)
        for agent in population
        if agent.uid not in members
    )
    joining = ranked[:needed]
    if not joining:
        return cutoff, []
    return max(cutoff, joining[-1][0]), [agent for _, _, agent in joining]


def _timeout_reason(
    agent: RolloutAgent, status: str | None, timeout: float
) -> tuple[FailReason, str]:
    if status == "APPLIED":
        return FailReason.DRIFTED, f"effective config still differs after {timeout:g}s"
    reported = agent.config_status or "no status"
    about = agent.config_hash[:HASH_SHOWN] or "(none)"
    why = f": {agent.config_error}" if agent.config_error else ""
    return (
        FailReason.APPLY_TIMEOUT,
        f"not applied within {timeout:g}s (reports {reported} for {about}{why})",
    )


def _describe_selector(step: Step) -> str:
    parts = [f"{k}={v}" for k, v in sorted(step.attributes.items())]
    parts += [f"pod:{k}={v}" for k, v in sorted(step.pod_labels.items())]
    return ",".join(parts) or "(empty)"


def _preflight_text(found: Preflight) -> str:
    parts = []
    if found.missing:
        parts.append("joining agents lack " + ", ".join(found.missing))
    if found.unreported:
        parts.append("joining agents report no components")
    return "; ".join(parts)


def _agents(count: int) -> str:
    return f"{count} agent" + ("" if count == 1 else "s")


def _set_counts(
    steps: tuple[StepCounts, ...], index: int, counts: StepCounts
) -> tuple[StepCounts, ...]:
    padded = steps[:index] + (StepCounts(),) * (index - len(steps))
    return (*padded, counts, *steps[index + 1 :])


def _format_time(value: float) -> str:
    moment = datetime.fromtimestamp(math.floor(value), UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def _time(value: float | None) -> str | None:
    return None if value is None else _format_time(value)


def _put_time(out: dict[str, Any], key: str, value: float | None) -> None:
    if value is not None:
        out[key] = _format_time(value)


def _parse_time(value: Any) -> float | None:
    """Seconds since the epoch from RFC 3339 text (or a number); None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(math.floor(value))
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return float(math.floor(moment.timestamp()))


def _parse_cutoff(value: Any) -> int:
    if isinstance(value, str):
        try:
            parsed = int(value, 16)
        except ValueError:
            return NOBODY
        return min(parsed, MAX_BUCKET) if parsed >= 0 else NOBODY
    if isinstance(value, int) and not isinstance(value, bool):
        return min(value, MAX_BUCKET) if value >= 0 else NOBODY
    return NOBODY


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _pause_reason(value: Any) -> PauseReason | None:
    try:
        return PauseReason(value)
    except (ValueError, TypeError):
        return None
