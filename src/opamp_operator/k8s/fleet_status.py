"""The fleet status tick: refresh the mapping, set readiness gates, remediate drift,
write the aggregated status — never per heartbeat, only when something changed."""

from __future__ import annotations

import asyncio
import time

import kopf

from opamp_operator.api.models import DriftPolicy
from opamp_operator.fleet.conditions import FleetProblem
from opamp_operator.fleet.health import summarize
from opamp_operator.fleet.mapping import FleetAssignment, MappingResult
from opamp_operator.fleet.remediation import Action, plan_remediation, remediation_events
from opamp_operator.fleet.status import FleetFacts, fleet_status, status_update
from opamp_operator.k8s import reads
from opamp_operator.k8s.events import emit
from opamp_operator.k8s.gates import gate_updates, write_gates
from opamp_operator.k8s.reads import now_iso
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
        desired_hash=record.desired_hash,
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

    async def tick(self, body: kopf.Body, patch: kopf.Patch) -> None:
        record = self.state.fleets.get(f"{body.metadata.namespace}/{body.metadata.name}")
        if record is None:
            return
        due = time.monotonic() - record.token_read_at > self.settings.token_refresh_seconds
        if record.spec.auth_secret_ref is not None and due:
            await read_token(self.state, record)
        assignment = self.state.refresh()
        mapping = assignment.mapping_for(record.key)
        await write_gates(self.state.pods, gate_updates(self.state, record, mapping))
        drift = self.state.drift_of(record, mapping.agents)
        if record.spec.drift_policy == DriftPolicy.REMEDIATE:
            self.remediate(body, record, mapping, drift)
        health = summarize(record.selector, mapping, record.desired_hash, drift)
        old = dict(body.get("status", {}))
        generation = int(body.metadata.get("generation", 0))
        status = fleet_status(health, facts(record, assignment, generation), old, now_iso())
        update = status_update(old, status)
        if update is not None:
            patch.status.update(update[0])
            emit(body, update[1])

    def remediate(
        self,
        body: kopf.Body,
        record: FleetRecord,
        mapping: MappingResult,
        drift: dict[str, bool | None],
    ) -> None:
        """Policy Remediate: re-offer the desired config to drifted agents, then restart
        those that accept it, then give up and say so (see fleet/remediation.py)."""
        core = self.state.core
        if core is None:
            return
        raw = {uid_str(uid): agent for uid, agent in core.agents.items()}
        live = {uid: v for uid, v in drift.items() if uid in raw and raw[uid].live}
        can_restart = {
            uid: raw[uid].can(pb.AgentCapabilities_AcceptsRestartCommand) for uid in live
        }
        plan = plan_remediation(
            live,
            self.state.remediation.get(record.key, {}),
            record.desired_hash,
            can_restart,
            now=time.monotonic(),
            settings=self.settings.remediation,
        )
        self.state.remediation[record.key] = dict(plan.attempts)
        for uid, action in plan.actions.items():
            if action is Action.REOFFER:
                core.reoffer_config(raw[uid].instance_uid)
            else:
                core.request_restart(raw[uid].instance_uid)
        emit(body, remediation_events(plan, mapping.pod_of))
