"""A CollectorFleet's spec, read into the operator's state: its selector, config,
token, revision and workload; agents are offered what changed at once."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast

import kopf
from pydantic import ValidationError

from opamp_operator.api.models import FLEETS_PLURAL, CollectorFleetSpec
from opamp_operator.fleet.conditions import FleetProblem, KState, Why, kstatus, merge, now_iso
from opamp_operator.fleet.mapping import FleetSelector, SelectorError
from opamp_operator.fleet.validation import format_problems, validate_config
from opamp_operator.k8s import reads, revision_store, workload
from opamp_operator.k8s.fleet_status import read_token
from opamp_operator.k8s.rollouts import RolloutHandlers
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp.configs import RemoteConfig


def parse_fleet(body: kopf.Body) -> FleetRecord:
    """The fleet's spec as a record with no config read yet; raises FleetProblem."""
    meta = body.metadata
    namespace, name = meta.namespace or "", meta.name or ""
    try:
        spec = CollectorFleetSpec.model_validate(dict(body.spec))
        selector = FleetSelector.from_label_selector(
            namespace,
            name,
            meta.creation_timestamp or 0.0,
            spec.selector.model_dump(by_alias=True),
        )
    except (ValidationError, SelectorError) as exc:
        raise FleetProblem("InvalidSpec", f"invalid spec: {exc}") from None
    selector = dataclasses.replace(selector, auth=spec.agent_auth_rule())
    generation = int(meta.get("generation", 0))
    return FleetRecord(namespace, name, meta.uid or "", generation, selector, spec)


def config_problem(text: str) -> Why | None:
    """What the Collector would refuse, as one message for the Stalled condition."""
    problems = validate_config(text)
    return Why("InvalidConfig", format_problems(problems)) if problems else None


def revision_news(record: FleetRecord, previous: FleetRecord | None, created: bool) -> bool:
    """Whether a reconcile gave agents a new revision worth an Event: not on a restart's
    resume, where the revision is old news."""
    changed = previous is None or previous.revision_hash != record.revision_hash
    return changed and record.config is not None and (created or previous is not None)


class FleetReconciler:
    def __init__(
        self,
        state: OperatorState,
        rollouts: RolloutHandlers,
        agent_endpoint: str | None,
        token_audience: str,
        agent_ca: str | None = None,
    ) -> None:
        """`token_audience`: what template-mode pods' ServiceAccount tokens are issued
        for, the audience the operator's TokenReviews require; `agent_ca`: the CA (PEM)
        they verify a wss:// endpoint with."""
        self.state = state
        self.rollouts = rollouts
        self.agent_endpoint = agent_endpoint
        self.token_audience = token_audience
        self.agent_ca = agent_ca

    async def reconcile(self, body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
        """Read the fleet's spec and config, keep its revision, offer changes at once."""
        try:
            record = parse_fleet(body)
        except FleetProblem as problem:
            self.refuse_spec(body, patch, problem.why)
            return
        await read_token(self.state, record)
        created = await self.read_config(body, record)
        previous = self.state.fleets.get(record.key)
        # Before anything is offered or rendered: which agents (and, for a staged
        # template change, which pods) a governing rollout keeps on the stable revision
        # (after a restart, only the rollout's status knows).
        await self.rollouts.load_for_fleet(record, previous, dict(body.get("status", {})))
        if not await self.reconcile_workload(body, record):
            self.rollouts.follow(record.key)
        self.state.put_fleet(record)
        if revision_news(record, previous, created):
            kopf.info(body, reason="ConfigRevision", message=self.revision_message(record))
        logger.info("fleet %s reconciled: revision %s", record.key, record.revision)

    def refuse_spec(self, body: kopf.Body, patch: kopf.Patch, why: Why) -> None:
        """An invalid spec changes nothing agents get: the last valid record stays, marked
        with the problem, and the status says Stalled for this generation."""
        key = f"{body.metadata.namespace}/{body.metadata.name}"
        generation = int(body.metadata.get("generation", 0))
        previous = self.state.fleets.get(key)
        if previous is not None:
            self.state.fleets[key] = dataclasses.replace(
                previous, generation=generation, spec_problem=why
            )
        old = dict(body.get("status", {})).get("conditions", [])
        new = kstatus(KState.STALLED, why, generation)
        patch.status["observedGeneration"] = generation
        patch.status["conditions"] = merge(old, new, now_iso())

    async def read_config(self, body: kopf.Body, record: FleetRecord) -> bool:
        """The config, its problem or its revision; True when the revision is new."""
        try:
            record.config_text = await asyncio.to_thread(
                reads.fleet_config_text, record.namespace, record.spec
            )
        except FleetProblem as problem:
            record.config_problem = problem.why
            return False
        record.config_problem = config_problem(record.config_text)
        if record.config_problem is not None:
            return False
        record.config = RemoteConfig.single(record.config_text.encode())
        record.revision, created = await asyncio.to_thread(revision_store.ensure, body, record)
        return created

    async def reconcile_workload(self, body: kopf.Body, record: FleetRecord) -> bool:
        """Template mode: the fleet's workloads, as its governing rollout stages them;
        Events go to `body` (the fleet's, or the rollout's whose step it is). True when
        they are settled (workload.reconcile_workload)."""
        try:
            return await workload.reconcile_workload(
                body,
                record,
                self.agent_endpoint,
                self.token_audience,
                self.agent_ca,
                pods=list(self.state.pods.values()),
            )
        except workload.TemplateError as exc:
            record.workload_problem = Why("TemplateInvalid", f"spec.template: {exc}")
            kopf.warn(
                body, reason="TemplateInvalid", message=record.workload_problem.message[:1024]
            )
            return True

    def revision_message(self, record: FleetRecord) -> str:
        mapping = (self.state.assignment or self.state.refresh()).mapping_for(record.key)
        live = sum(1 for view in mapping.agents.values() if view.live)
        return (
            f"config revision {record.revision} ({record.revision_hash[:12]}); "
            f"offered to {live} connected agents"
        )

    async def config_map_changed(self, body: kopf.Body, logger: kopf.Logger) -> None:
        namespace, name = body.metadata.namespace or "", body.metadata.name or ""
        for record in self.state.fleets_using_config_map(namespace, name):
            fleet = await asyncio.to_thread(
                reads.custom_object, record.namespace, FLEETS_PLURAL, record.name
            )
            if fleet is not None:
                raw = cast(kopf.RawBody, cast(Any, fleet))
                await self.reconcile(kopf.Body(raw), kopf.Patch(), logger)
