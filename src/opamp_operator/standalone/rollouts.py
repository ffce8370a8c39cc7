"""Staged rollouts under `serve`: a fleets file fleet's `rollout` plans its changes with
the ConfigRollout planner (fleet/rollout.py) and keeps what must survive a restart in
`--state-dir`, as `run` keeps it in a ConfigRollout's status and ControllerRevisions.

Per fleet, one JSON file: the stable revision (its config bytes and version, so a
rollback offers exactly what agents ran before, after a restart too) and the rollout's
status (the same keys as a ConfigRollout's). Each write replaces the file atomically
(written aside, fsynced, renamed) before the membership it records takes effect: a
crash in between repeats an offer and never loses or repeats a step.

Events a ConfigRollout would emit are logged (WARNING for Warning ones); the status is
on the read API (/api/v1/rollouts).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opamp_operator.api.policy import stored_package, to_policy
from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.conditions import now_iso
from opamp_operator.fleet.rollout_agents import (
    DesiredRevision,
    Placement,
    revision_status,
    rollout_agent,
)
from opamp_operator.fleet.rollout_status import RolloutTiming, holds, rollout_status
from opamp_operator.fleet.views import AgentView
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.session import AgentRecord, ServerCore
from opamp_operator.standalone.fleets import FileFleets, Fleet, FleetFileError, Held

log = logging.getLogger(__name__)

STATE_FILE_LIMIT = 64 * 1024 * 1024
"""A state file holds one config (the parser's cap is far below) and a status: a file
larger than this is not ours."""


class StateError(FleetFileError):
    """The state directory cannot be used: serve refuses to start rather than forget
    which revision is stable (it would offer an unproven one to every agent)."""


@dataclass(frozen=True)
class StableRevision:
    """The revision every agent outside a rollout's members runs."""

    revision: str
    hash: str
    config: bytes
    version: str | None = None
    """The fleet's `version` as FleetVersion JSON; None: no package."""

    @classmethod
    def of(cls, fleet: Fleet) -> StableRevision:
        return cls(fleet.revision, fleet.revision_hash, fleet.config.files[""].body, fleet.version)

    def held(self, membership: planner.Membership) -> Held:
        return Held(membership, RemoteConfig.single(self.config), stored_package(self.version))

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "hash": self.hash,
            "config": base64.b64encode(self.config).decode(),
            "version": self.version,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StableRevision:
        version = raw.get("version")
        return cls(
            str(raw["revision"]),
            str(raw["hash"]),
            base64.b64decode(str(raw["config"]), validate=True),
            str(version) if version is not None else None,
        )


@dataclass(frozen=True)
class FleetState:
    """What serve remembers of one fleet across restarts."""

    stable: StableRevision
    status: Mapping[str, Any] = field(default_factory=dict)
    """The rollout's status (a ConfigRollout's keys); empty without a rollout."""


class StateDir:
    """One file per fleet, named by a hash of the fleet's name (any string is a name)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"--state-dir {path}: {exc}") from None

    def _file(self, fleet: str) -> Path:
        return self.path / f"fleet-{hashlib.sha256(fleet.encode()).hexdigest()[:32]}.json"

    def load(self) -> dict[str, FleetState]:
        """Every fleet's state; StateError names a file that cannot be read."""
        found: dict[str, FleetState] = {}
        for path in sorted(self.path.glob("fleet-*.json")):
            try:
                name, state = _read(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StateError(
                    f"state file {path} cannot be read ({exc}): move it away to start "
                    "over, and every fleet's current revision becomes its stable one"
                ) from None
            found[name] = state
        return found

    def save(self, fleet: str, state: FleetState) -> None:
        """Replaces the fleet's file atomically: a reader (or a restart) sees the old
        state or the new one, never part of either."""
        body = json.dumps(
            {"fleet": fleet, "stable": state.stable.to_json(), "status": dict(state.status)},
            sort_keys=True,
        ).encode()
        target = self._file(fleet)
        fd, name = tempfile.mkstemp(dir=self.path, prefix=".fleet-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _read(path: Path) -> tuple[str, FleetState]:
    """A state file's fleet and state; ValueError, KeyError or TypeError when it is not
    one this module wrote."""
    if path.stat().st_size > STATE_FILE_LIMIT:
        raise ValueError(f"larger than {STATE_FILE_LIMIT} bytes")
    raw = json.loads(path.read_bytes())
    status = raw.get("status") or {}
    if not isinstance(status, dict):
        raise TypeError("status is not a mapping")
    return str(raw["fleet"]), FleetState(StableRevision.from_json(raw["stable"]), status)


_Gated = tuple[AgentView, tuple[DesiredRevision, Placement], planner.RolloutAgent]
Gathered = dict[str, list[planner.RolloutAgent]]
"""Fleet name -> its live agents as the gates read them."""
GATHER_BATCH = 1000
"""Agents gathered for a plan between two yields to the loop (~15 ms of work)."""


class ServeRollouts:
    """Plans every fleet's rollout on a timer; holds non-members to the stable revision
    through `FileFleets.held`."""

    def __init__(
        self, fleets: FileFleets, core: ServerCore, store: StateDir, timing: RolloutTiming
    ) -> None:
        self.fleets = fleets
        self.core = core
        self.store = store
        self.timing = timing
        self.states = store.load()
        self._started = time.monotonic()
        self._planned: set[str] = set()
        self.pending: dict[str, FleetState] = {}
        """States changed by `plan`, not written yet."""
        self.durable = dict(self.states)
        """The states on disk: what the read API shows."""
        self._gated: dict[str, _Gated] = {}
        """Per agent uid: the view and revision its RolloutAgent was built from."""
        self._gating: dict[str, _Gated] = {}
        self._keys: dict[str, tuple[DesiredRevision, Placement]] = {}
        """Per fleet: the revision and placement its agents' records were built for, one
        object while they stay equal (so a kept record is checked by identity)."""

    def statuses(self) -> dict[str, Mapping[str, Any]]:
        """Each fleet with a rollout: its status, for the read API."""
        return {
            f.name: self.durable[f.name].status
            for f in self.fleets.fleets
            if f.rollout is not None and f.name in self.durable
        }

    def _gather(self, records: Iterable[AgentRecord], into: Gathered) -> None:
        """The live agents of fleets with a rollout, as the gates read them, into
        `into` by fleet. Each agent's RolloutAgent is kept until its view (itself kept on
        the record until what it shows changes) or its fleet's revision changes."""
        keys: dict[str, tuple[DesiredRevision, Placement]] = {}  # this call's
        for record in records:
            placed = self.fleets.place(record)
            if placed is None or placed[0].rollout is None or not placed[1].live:
                continue
            fleet, view = placed
            key = keys.get(fleet.name)
            if key is None:
                key = (fleet.desired, Placement(verified=bool(fleet.certificate_names)))
                if self._keys.get(fleet.name) != key:
                    self._keys[fleet.name] = key
                key = keys[fleet.name] = self._keys[fleet.name]
            kept = self._gated.get(view.instance_uid)
            if kept is None or kept[0] is not view or kept[1] is not key:
                status = revision_status(view, key[0])
                kept = (view, key, rollout_agent(view, status, key[1]))
            self._gating[view.instance_uid] = kept
            into.setdefault(fleet.name, []).append(kept[2])

    def _gathering(self, into: Gathered) -> Iterator[None]:
        """Gathers every agent into `into`, pausing (a yield) after each GATHER_BATCH: at
        10,000 agents reporting through a step, building their gate records took 0.15 s
        a tick. Records of agents gone since the last plan are dropped at the end."""
        self._gating = {}
        if any(f.rollout is not None for f in self.fleets.fleets):
            records = list(self.core.agents.values())
            for start in range(0, len(records), GATHER_BATCH):
                self._gather(records[start : start + GATHER_BATCH], into)
                yield
        self._gated = self._gating

    def _gathered(self) -> Gathered:
        into: Gathered = {}
        for _ in self._gathering(into):
            pass
        return into

    async def _gathered_in_batches(self) -> Gathered:
        """`_gathered`, the loop given back between batches."""
        into: Gathered = {}
        for _ in self._gathering(into):
            await asyncio.sleep(0)
        return into

    def plan(self, now: float | None = None, gathered: Gathered | None = None) -> dict[str, Held]:
        """One planner run for every fleet, on the event loop (it reads the core's
        agents): what each fleet's non-members are to be held to. The states it changed
        wait in `pending` until `flush` writes them."""
        now = time.time() if now is None else now
        agents = self._gathered() if gathered is None else gathered
        held: dict[str, Held] = {}
        for fleet in self.fleets.fleets:
            found = self._fleet(fleet, agents.get(fleet.name, []), now)
            if found is not None:
                held[fleet.name] = found
        return held

    def flush(self) -> None:
        """Writes the states `plan` changed (blocking: fsync); OSError leaves them
        pending, and the caller applies nothing."""
        while self.pending:
            fleet, state = next(iter(self.pending.items()))
            self.store.save(fleet, state)
            self.durable[fleet] = state
            del self.pending[fleet]

    def apply(self, held: dict[str, Held]) -> None:
        """Hands the holds to the fleets; offers follow where one changed."""
        if held != self.fleets.held:
            self.fleets.held = held
            self.core.desired_changed()

    def tick(self, now: float | None = None) -> None:
        """plan, flush, apply: a state is on disk before the membership it records
        takes effect."""
        held = self.plan(now)
        self.flush()
        self.apply(held)

    async def tick_off_loop(self) -> None:
        """`tick` with the agents gathered in batches and the writes on a thread (an
        fsync can take a disk's while)."""
        held = self.plan(gathered=await self._gathered_in_batches())
        try:
            await asyncio.to_thread(self.flush)
        except OSError as exc:
            log.error("--state-dir %s: %s; rollouts hold where they are", self.store.path, exc)
            return
        self.apply(held)

    def _save(self, fleet: str, state: FleetState) -> None:
        if self.states.get(fleet) != state:
            self.states[fleet] = state
            self.pending[fleet] = state

    def _fleet(self, fleet: Fleet, agents: list[planner.RolloutAgent], now: float) -> Held | None:
        """Plans the fleet's rollout (status saved first); what it holds non-members to."""
        state = self.states.get(fleet.name)
        if fleet.rollout is None or state is None:
            # Offered to every agent at once: the fleet's revision is the stable one.
            self._save(fleet.name, FleetState(StableRevision.of(fleet)))
            return None
        policy = to_policy(fleet.rollout)
        progress = planner.persisted(state.status)
        uptime = time.monotonic() - self._started
        planned = fleet.name in self._planned
        if progress is None or not holds(planned, uptime, self.timing.startup_grace):
            self._planned.add(fleet.name)
            progress = self._plan(fleet, policy, state, progress, agents=agents, now=now)
        return self._held(fleet, policy, progress)

    def _plan(
        self,
        fleet: Fleet,
        policy: planner.Policy,
        state: FleetState,
        progress: planner.Progress | None,
        *,
        agents: list[planner.RolloutAgent],
        now: float,
    ) -> planner.Progress:
        assert fleet.rollout is not None
        controls = fleet.rollout.controls
        desired = planner.Revision(fleet.revision, fleet.revision_hash, fleet.components)
        if progress is None:
            stable = state.stable
            progress = planner.initial_progress(desired, stable.revision, stable.hash, controls)
        decision = planner.plan(policy, progress, desired, agents, now, controls)
        status = rollout_status(decision, 0, state.status, now_iso())
        after = decision.progress
        stable = state.stable
        if after.stable_hash == fleet.revision_hash and stable.hash != fleet.revision_hash:
            stable = StableRevision.of(fleet)
        self._save(fleet.name, FleetState(stable, status))
        for event in decision.events:
            level = logging.WARNING if event.type == "Warning" else logging.INFO
            log.log(level, "rollout of fleet %s: %s: %s", fleet.name, event.reason, event.message)
        return after

    def _held(
        self, fleet: Fleet, policy: planner.Policy, progress: planner.Progress
    ) -> Held | None:
        """Non-members are held to the stable revision, once the state has it."""
        stable = self.states[fleet.name].stable
        if stable.hash != progress.stable_hash:
            log.error(
                "fleet %s: the stable revision %s is not in --state-dir; offering the "
                "desired revision to every agent",
                fleet.name,
                progress.stable_revision,
            )
            return None
        return stable.held(planner.membership(policy, progress))
