"""The fleet status tick: refresh the mapping, set readiness gates, remediate drift,
write the aggregated status — never per heartbeat, only when something changed.

Restarts: the readiness gates hold pods whose agents have not reconnected yet for the
startup grace (fleet/readiness.py), and remediation attempts are persisted on the
agents' pods before anything is acted on (fleet/remediation.py), so a new process
neither unreadies pods nor repeats remediation steps for nothing.
"""

from __future__ import annotations

import asyncio
import time

import kopf

from opamp_operator.api.models import DriftPolicy
from opamp_operator.fleet.conditions import FleetProblem, now_iso
from opamp_operator.fleet.mapping import FleetAssignment, MappingResult
from opamp_operator.fleet.readiness import Spell, held_since, next_spell
from opamp_operator.fleet.remediation import (
    Action,
    known_attempts,
    persisted_changes,
    plan_remediation,
    remediation_events,
)
from opamp_operator.fleet.status import FleetFacts, fleet_status, status_update
from opamp_operator.k8s import reads
from opamp_operator.k8s.events import emit
from opamp_operator.k8s.gates import (
    gate_updates,
    write_gates,
    write_remediation,
)
from opamp_operator.k8s.settings import HandlerSettings
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp.ids import uid_str
from opamp_operator.opamp.proto import opamp_pb2 as pb


async def read_token(state: OperatorState, record: FleetRecord) -> None:
    """The fleet's token digest, read again. A Secret deleted, emptied or unreadable
    (403) revokes the token, and the problem shows in status; an apiserver that fails
    to answer (any other error) revokes nothing: the handler retries."""
    try:
        digest = await asyncio.to_thread(reads.fleet_token_digest, record.namespace, record.spec)
    except FleetProblem as problem:
        state.set_token(record, None, problem.why)
    else:
        state.set_token(record, digest, None)
    record.token_read_at = time.monotonic()


def facts(record: FleetRecord, assignment: FleetAssignment, generation: int) -> FleetFacts:
    key = record.key
    return FleetFacts(
        observed_generation=record.generation,
        generation=generation,
        revision=record.revision,
        desired_hash=record.revision_hash,
        stable_revision=record.stable[0],
        stable_hash=record.stable[1],
        blocker=record.blocker,
        unauthenticated=len(assignment.unauthenticated.get(key, ())),
        unverified=len(assignment.unverified.get(key, ())),
        overlapping=tuple(
            {f for o in assignment.overlaps.get(key, ()) for f in o.fleets if f != key}
        ),
    )


class FleetStatus:
    """Runs a fleet's status tick against the operator's state."""

    def __init__(self, state: OperatorState, settings: HandlerSettings) -> None:
        self.state = state
        self.settings = settings
        # Since when this process has been ticking (any fleet): the gates' startup grace.
        self.spell: Spell | None = None

    def holding_since(self) -> float | None:
        """Counts this tick into the spell; while its grace lasts, when it began."""
        grace, now = self.settings.gate_startup_grace, time.time()
        self.spell = next_spell(self.spell, now, grace, self.settings.status_interval)
        return held_since(self.spell, now, grace)

    async def tick(self, body: kopf.Body, patch: kopf.Patch) -> None:
        record = self.state.fleets.get(f"{body.metadata.namespace}/{body.metadata.name}")
        if record is None:
            return
        due = time.monotonic() - record.token_read_at > self.settings.token_refresh_seconds
        if record.spec.auth_secret_ref is not None and due:
            await read_token(self.state, record)
        assignment = self.state.refresh()
        mapping = assignment.mapping_for(record.key)
        held = self.holding_since()
        await write_gates(self.state.pods, gate_updates(self.state, record, mapping, held))
        drift = await self.state.drift_of(record, mapping.agents)
        if record.spec.drift_policy == DriftPolicy.REMEDIATE:
            await self.remediate(body, record, mapping, drift)
        health = record.health(mapping, drift)
        old = dict(body.get("status", {}))
        generation = int(body.metadata.get("generation", 0))
        status = fleet_status(health, facts(record, assignment, generation), old, now_iso())
        update = status_update(old, status)
        if update is not None:
            patch.status.update(update[0])
            emit(body, update[1])

    async def remediate(
        self,
        body: kopf.Body,
        record: FleetRecord,
        mapping: MappingResult,
        drift: dict[str, bool | None],
    ) -> None:
        """Policy Remediate: re-offer the desired config to drifted agents, then restart
        those that accept it, then give up and say so (see fleet/remediation.py). What was
        tried is read from and written to the agents' pods before anything is sent: a crash
        in between skips a step, never repeats one. Agents without a pod: memory only."""
        core = self.state.core
        if core is None:
            return
        raw = {uid_str(uid): agent for uid, agent in core.agents.items()}
        live = {uid: drift.get(uid) for uid in mapping.agents if uid in raw and raw[uid].live}
        pods = {
            uid: pod
            for uid in live
            if (pod := self.state.pods.get(mapping.pod_of.get(uid, ""))) is not None
        }
        persisted = {uid: pod.remediation for uid, pod in pods.items()}
        memory = self.state.remediation.get(record.key, {})
        plan = plan_remediation(
            live,
            known_attempts(memory, persisted, record.desired_hash),
            record.desired_hash,
            {uid: raw[uid].can(pb.AgentCapabilities_AcceptsRestartCommand) for uid in live},
            now=time.time(),
            settings=self.settings.remediation,
        )
        for uid, value in persisted_changes(plan, live, persisted).items():
            await write_remediation(pods[uid], value)
        self.state.remediation[record.key] = dict(plan.attempts)
        for uid, action in plan.actions.items():
            if action is Action.REOFFER:
                core.reoffer_config(raw[uid].instance_uid)
            else:
                core.request_restart(raw[uid].instance_uid)
        emit(body, remediation_events(plan, mapping.pod_of))
