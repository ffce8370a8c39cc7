"""Pure rendering for `kubectl opamp`: kubectl-looking tables and ages, rollout status
summaries, and the patches the rollout controls send. No I/O, so all of it is unit-tested."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from opamp_operator.api.models import GROUP
from opamp_operator.fleet.rollout import ABORTABLE, CONTROL_NAMES, RETRYABLE, TERMINAL, Phase

TERMINAL_PHASES = TERMINAL
# Phases in which the operator acts on a control (fleet/rollout.py); a token given in any
# other phase is recorded and does nothing.
CONTROL_PHASES: Mapping[str, frozenset[Phase]] = {
    "promote": frozenset({Phase.PAUSED}),
    "abort": ABORTABLE,
    "retry": RETRYABLE,
}
NONE = "<none>"


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp as the API server writes it; None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:  # noqa: PLR0911
    """kubectl's AGE (k8s.io/apimachinery duration.HumanDuration), so columns read the same."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(timestamp: str | None, now: datetime) -> str:
    when = parse_time(timestamp)
    return "<unknown>" if when is None else human_duration((now - when).total_seconds())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """kubectl's table layout: left-aligned columns, three spaces between, no padding after
    the last column."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in (list(headers), *rows):
        cells = [c.ljust(w + 3) for c, w in zip(row[:-1], widths, strict=False)]
        lines.append(("".join(cells) + row[-1]).rstrip())
    return "\n".join(lines)


def dump(obj: Any, output: str) -> str:
    """`-o json` / `-o yaml` as kubectl prints them."""
    if output == "json":
        return json.dumps(obj, indent=4, sort_keys=False)
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False).rstrip("\n")


def as_list(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several objects as kubectl wraps them for -o json|yaml."""
    return {"apiVersion": "v1", "kind": "List", "items": list(items), "metadata": {}}


def condition_status(status: Mapping[str, Any], kind: str) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status", "Unknown"))
    return "Unknown"


def _count(status: Mapping[str, Any], key: str) -> str:
    return str(status.get(key) or 0)


FLEET_HEADERS = (
    "NAME",
    "AGENTS",
    "HEALTHY",
    "UNHEALTHY",
    "APPLIED",
    "FAILED",
    "DRIFTED",
    "OUTDATED",
    "DESIRED",
    "STABLE",
    "READY",
    "AGE",
)


def fleets_table(fleets: Sequence[Mapping[str, Any]], now: datetime, all_namespaces: bool) -> str:
    """CollectorFleet objects (as the API returns them) → the `kubectl opamp fleets` table."""
    rows = []
    for fleet in fleets:
        meta = fleet.get("metadata") or {}
        status = fleet.get("status") or {}
        row = [
            str(meta.get("name", "")),
            _count(status, "agentsConnected"),
            _count(status, "healthy"),
            _count(status, "unhealthy"),
            _count(status, "configApplied"),
            _count(status, "configFailed"),
            _count(status, "drifted"),
            # Against a target version only: a fleet without one judges no version.
            f"{_count(status, 'agentsOutdated')}/{status['targetVersion']}"
            if status.get("targetVersion")
            else "-",
            str(status.get("desiredRevision") or NONE),
            str(status.get("stableRevision") or NONE),
            condition_status(status, "Ready"),
            age(meta.get("creationTimestamp"), now),
        ]
        rows.append([str(meta.get("namespace", "")), *row] if all_namespaces else row)
    headers = ("NAMESPACE", *FLEET_HEADERS) if all_namespaces else FLEET_HEADERS
    return table(headers, rows)


AGENT_HEADERS = (
    "INSTANCE-UID",
    "POD",
    "RULE",
    "CONNECTED",
    "HEALTHY",
    "CONFIG",
    "REVISION",
    "VERSION",
)


def _flag(value: Any) -> str:
    return "<unknown>" if value is None else str(bool(value))


def agents_table(agents: Sequence[Mapping[str, Any]]) -> str:
    """Agents from the read API (`GET /api/v1/fleets/{ns}/{name}/agents`) → a table; a
    stale connection (no heartbeat for a while) shows as `Stale`."""
    rows = []
    for a in agents:
        connected = "Stale" if a.get("connected") and a.get("stale") else _flag(a.get("connected"))
        rows.append(
            [
                str(a.get("instanceUid", "")),
                str(a.get("pod") or NONE),
                str(a.get("rule") or NONE),
                connected,
                _flag(a.get("healthy")),
                str(a.get("config") or NONE),
                str(a.get("revision") or NONE),
                str(a.get("version") or NONE),
            ]
        )
    return table(AGENT_HEADERS, rows)


def short_hash(value: str | None) -> str:
    return value[:12] if value else NONE


def step_target(step: Mapping[str, Any]) -> str:
    """One spec step in words: `1 agent`, `50%`, `selector env=canary`, with its pause."""
    if step.get("agents") is not None:
        n = int(step["agents"])
        what = f"{n} agent" + ("" if n == 1 else "s")
    elif step.get("percent") is not None:
        what = f"{step['percent']:g}%"
    elif step.get("selector") is not None:
        sel = step["selector"] or {}
        pairs = {**(sel.get("attributes") or {}), **(sel.get("podLabels") or {})}
        what = "selector " + (",".join(f"{k}={v}" for k, v in sorted(pairs.items())) or "{}")
    else:
        what = "?"
    pause = step.get("pause") or {}
    if pause.get("untilPromoted"):
        what += ", pause until promoted"
    elif pause.get("seconds"):
        what += f", pause {pause['seconds']}s"
    return what


def spec_steps(rollout: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The spec's steps; an empty list is one step of 100% (docs/rollout.md)."""
    steps: list[Mapping[str, Any]] = list((rollout.get("spec") or {}).get("steps") or [])
    return steps or [{"percent": 100}]


def step_position(rollout: Mapping[str, Any]) -> str:
    """`x/y`, one-based; `-/y` before the first step is armed."""
    status = rollout.get("status") or {}
    total = len(spec_steps(rollout))
    current = status.get("currentStep")
    return f"{'-' if current is None else int(current) + 1}/{total}"


def _step_state(index: int, step: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    if step.get("finishedAt"):
        return "Passed"
    current = status.get("currentStep")
    if current is not None and index == int(current):
        return str(status.get("phase") or "")
    return "Started" if step.get("startedAt") else "-"


def steps_table(rollout: Mapping[str, Any], now: datetime) -> str:
    status = rollout.get("status") or {}
    done = list(status.get("steps") or [])
    rows = []
    for i, spec_step in enumerate(spec_steps(rollout)):
        s: Mapping[str, Any] = done[i] if i < len(done) else {}
        counts = [str(s.get(k, "-")) for k in ("offered", "applied", "failed", "unhealthy")]
        rows.append(
            [
                str(i + 1),
                step_target(spec_step),
                _step_state(i, s, status) if s else "-",
                *counts,
                str(s.get("drifted", "-")),
                age(s["startedAt"], now) if s.get("startedAt") else "-",
            ]
        )
    headers = ("STEP", "TARGET", "STATE", "OFFERED", "APPLIED", "FAILED", "UNHEALTHY")
    return table((*headers, "DRIFTED", "STARTED"), rows)


def _revision(name: str | None, hash_: str | None) -> str:
    return NONE if not name else f"{name} ({short_hash(hash_)})"


def rollout_status_text(rollout: Mapping[str, Any], now: datetime) -> str:
    """What `kubectl opamp rollout status` prints: the phase and where the rollout stands,
    the per-step counts, the failing agents and the conditions."""
    meta = rollout.get("metadata") or {}
    spec = rollout.get("spec") or {}
    status = rollout.get("status") or {}
    phase = str(status.get("phase") or "Unknown")
    if status.get("pauseReason"):
        phase += f" ({status['pauseReason']})"
    fields = [
        ("Name", f"{meta.get('namespace', '')}/{meta.get('name', '')}"),
        ("Fleet", str((spec.get("fleetRef") or {}).get("name", NONE))),
        ("Phase", phase),
        ("Message", str(status.get("message") or "")),
        ("Step", step_position(rollout)),
        ("Desired", _revision(status.get("desiredRevision"), status.get("desiredHash"))),
        ("Stable", _revision(status.get("stableRevision"), status.get("stableHash"))),
        ("Attempt", str(status.get("attempt") or 1)),
        (
            "Agents",
            f"{status.get('agents') or 0} managed, {status.get('unmanaged') or 0} unmanaged",
        ),
    ]
    if spec.get("paused"):
        fields.append(("Paused", "spec.paused is true"))
    if status.get("pauseUntil"):
        fields.append(("Until", str(status["pauseUntil"])))
    width = 10
    parts = ["\n".join(f"{k + ':':<{width}}{v}".rstrip() for k, v in fields)]
    parts.append("Steps:\n" + _indent(steps_table(rollout, now)))
    preflight = status.get("preflight") or {}
    if preflight.get("blocked") or preflight.get("missing"):
        missing = [[m["component"], str(m["agents"])] for m in preflight.get("missing") or []]
        parts.append(
            f"Preflight: blocked={bool(preflight.get('blocked'))}, "
            f"unreported={preflight.get('unreported', 0)}\n"
            + _indent(table(("COMPONENT", "AGENTS-LACKING"), missing))
        )
    failing = status.get("failingAgents") or []
    if failing:
        rows = [
            [str(a.get("pod") or NONE), a["instanceUid"], a["reason"], a.get("message", "")]
            for a in failing
        ]
        parts.append(
            "Failing agents:\n" + _indent(table(("POD", "INSTANCE-UID", "REASON", "MESSAGE"), rows))
        )
    conditions = status.get("conditions") or []
    if conditions:
        rows = [
            [
                c["type"],
                c["status"],
                c.get("reason", ""),
                age(c.get("lastTransitionTime"), now),
                c.get("message", ""),
            ]
            for c in conditions
        ]
        parts.append(
            "Conditions:\n" + _indent(table(("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), rows))
        )
    return "\n\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def progress_line(rollout: Mapping[str, Any], now: datetime) -> str:
    """One line per change in `rollout status --watch`."""
    status = rollout.get("status") or {}
    phase = str(status.get("phase") or "Unknown")
    if status.get("pauseReason"):
        phase += f"/{status['pauseReason']}"
    steps = status.get("steps") or []
    current = status.get("currentStep")
    step: Mapping[str, Any] = (
        steps[int(current)] if current is not None and int(current) < len(steps) else {}
    )
    counts = (
        f"applied {step.get('applied', 0)}/{step.get('offered', 0)}"
        f" failed {step.get('failed', 0)} unhealthy {step.get('unhealthy', 0)}"
    )
    line = (
        f"{now.strftime('%H:%M:%S')}  {phase:<18} step {step_position(rollout):<5} {counts}"
        f"  desired {status.get('desiredRevision') or NONE}"
        f"  stable {status.get('stableRevision') or NONE}"
    )
    return line + (f"  {status['message']}" if status.get("message") else "")


def progress_key(rollout: Mapping[str, Any]) -> str:
    """What a watch compares to decide whether anything the user sees changed."""
    status = dict(rollout.get("status") or {})
    status.pop("kopf", None)
    return json.dumps(status, sort_keys=True)


def is_terminal(rollout: Mapping[str, Any]) -> bool:
    return (rollout.get("status") or {}).get("phase") in TERMINAL_PHASES


HISTORY_HEADERS = ("REVISION", "NAME", "HASH", "AGE", "ROLE")


def history_table(
    revisions: Sequence[Mapping[str, Any]], rollout_status: Mapping[str, Any], now: datetime
) -> str:
    """The fleet's ControllerRevisions (as dicts, oldest first), each marked DESIRED and/or
    STABLE by the rollout's status."""
    rows = []
    for rev in sorted(revisions, key=lambda r: int(r.get("revision") or 0)):
        meta = rev.get("metadata") or {}
        name = str(meta.get("name", ""))
        roles = [
            role
            for role, key in (("DESIRED", "desiredRevision"), ("STABLE", "stableRevision"))
            if rollout_status.get(key) == name
        ]
        config_hash = (meta.get("annotations") or {}).get(f"{GROUP}/config-hash")
        rows.append(
            [
                str(rev.get("revision", "")),
                name,
                short_hash(config_hash),
                age(meta.get("creationTimestamp"), now),
                ",".join(roles) or "-",
            ]
        )
    return table(HISTORY_HEADERS, rows)


def control_patch(control: str, token: str) -> dict[str, Any]:
    """The merge patch of `kubectl annotate configrollout opampoperator.io/<control>=<token>
    --overwrite` (docs/rollout.md, Controls)."""
    if control not in CONTROL_NAMES:
        raise ValueError(f"unknown control {control!r}; one of {', '.join(CONTROL_NAMES)}")
    if not token:
        raise ValueError("a control token must not be empty")
    return {"metadata": {"annotations": {f"{GROUP}/{control}": token}}}


def paused_patch(paused: bool) -> dict[str, Any]:
    return {"spec": {"paused": paused}}


def control_note(control: str, rollout: Mapping[str, Any]) -> str | None:
    """A warning when the rollout's phase means the operator will record the token and do
    nothing (fleet/rollout.py acts on each control only in some phases)."""
    status = rollout.get("status") or {}
    phase = status.get("phase")
    if phase in CONTROL_PHASES[control] and not (
        control == "promote"
        and (status.get("pauseReason") != "Step" or (rollout.get("spec") or {}).get("paused"))
    ):
        return None
    if control == "promote":
        return (
            f"the rollout is {phase}"
            + (f" ({status.get('pauseReason')})" if status.get("pauseReason") else "")
            + "; promote only ends a step's pause (not spec.paused): use `resume` for that"
        )
    allowed = ", ".join(sorted(CONTROL_PHASES[control]))
    return f"the rollout is {phase}; {control} acts only in {allowed}"


def utcnow() -> datetime:
    return datetime.now(UTC)
