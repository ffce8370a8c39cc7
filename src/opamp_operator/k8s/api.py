"""The fleets part of the read API (on the API listener, server/api.py):

    GET /api/v1/fleets
    GET /api/v1/fleets/{namespace}/{name}
    GET /api/v1/fleets/{namespace}/{name}/agents[?state=healthy|unhealthy|failed|applying|
                                                    pending|drifted|disconnected|unmapped]
    GET /api/v1/fleets/{namespace}/{name}/agents/{instance_uid}   (with a drift diff)

Per-agent detail lives here, not in the CR status, which stays aggregated. A user reads
a fleet here only if Kubernetes lets them `get` that CollectorFleet (k8s/access.py);
the listing shows the fleets of the namespaces they may `list` fleets in. Configs are
shown with their secrets masked, on both sides of a diff (fleet.drift).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from opamp_operator.api.models import FLEETS_PLURAL, GROUP
from opamp_operator.api.read import AGENT_STATES
from opamp_operator.fleet.drift import DriftVerdict, masked_config_text, unified_diff
from opamp_operator.fleet.health import ConfigState, config_state
from opamp_operator.fleet.versions import package_of
from opamp_operator.fleet.views import AgentView
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.server.api import ApiContext, ResourceAccess, rendered


def fleet_access(verb: str, namespace: str = "", name: str = "") -> ResourceAccess:
    return ResourceAccess(verb, GROUP, FLEETS_PLURAL, namespace, name)


JSON_BATCH = 200
"""Agents turned into JSON between two turns of the event loop: a fleet of 1,000 agents
took ~130 ms of loop time per listing, in one piece (benchmarks/loop_lag.py)."""


class FleetAPI:
    def __init__(self, state: OperatorState, context: ApiContext) -> None:
        self.state = state
        self.context = context

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/fleets", self.list_fleets)
        app.router.add_get("/api/v1/fleets/{namespace}/{name}", self.get_fleet)
        app.router.add_get("/api/v1/fleets/{namespace}/{name}/agents", self.list_agents)
        app.router.add_get("/api/v1/fleets/{namespace}/{name}/agents/{uid}", self.get_agent)

    async def _fleet(self, request: web.Request) -> FleetRecord:
        """The fleet a request names, once the user may `get` it (403 before 404: a
        refused user learns nothing about which fleets exist)."""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        await self.context.require(request, fleet_access("get", namespace, name))
        key = f"{namespace}/{name}"
        record = self.state.fleets.get(key)
        if record is None:
            raise web.HTTPNotFound(text=f"no CollectorFleet {key} is known to this operator")
        return record

    async def _summary(self, record: FleetRecord) -> dict[str, Any]:
        assignment = self.state.recent()
        mapping = assignment.mapping_for(record.key)
        drift = await self.state.drift_of(record, mapping.agents)
        health = record.health(mapping, drift)
        return {
            "namespace": record.namespace,
            "name": record.name,
            "desiredRevision": record.revision,
            "desiredHash": record.revision_hash or None,
            "stableRevision": record.stable[0] or None,
            "stableHash": record.stable[1] or None,
            "rollout": record.governance.rollout if record.governance is not None else None,
            "configError": record.config_problem.message if record.config_problem else None,
            "driftPolicy": record.spec.drift_policy,
            **health.to_status(),
        }

    async def _readable(
        self, request: web.Request, records: list[FleetRecord]
    ) -> list[FleetRecord]:
        if await self.context.may(request, fleet_access("list")):
            return records
        namespaces = {r.namespace for r in records}
        shown = {
            ns for ns in namespaces if await self.context.may(request, fleet_access("list", ns))
        }
        return [r for r in records if r.namespace in shown]

    async def list_fleets(self, request: web.Request) -> web.Response:
        records = await self._readable(
            request, sorted(self.state.fleets.values(), key=lambda f: f.key)
        )
        fleets = [await self._summary(f) for f in records]
        return web.json_response({"fleets": fleets, "count": len(fleets)})

    async def get_fleet(self, request: web.Request) -> web.Response:
        record = await self._fleet(request)
        return web.json_response(await self._summary(record))

    def _agent_json(
        self, record: FleetRecord, agent: AgentView, pod: str | None, drift: DriftVerdict
    ) -> dict[str, Any]:
        assignment = self.state.assignment
        rule = assignment.mapping.rule_of(agent.instance_uid) if assignment else None
        expected_hash = self.state.expected(record, agent.instance_uid)[1]
        return {
            "instanceUid": agent.instance_uid,
            "pod": pod,
            "rule": rule.value if rule is not None else None,
            "connected": agent.connected,
            "stale": agent.stale,
            "healthy": agent.healthy,
            "healthError": agent.health_error,
            "config": config_state(agent, expected_hash).value,
            # Which revision this agent is to run: the desired one, or (a rollout not
            # having reached it) the stable one.
            "revision": "desired" if self.state.is_member(record, agent.instance_uid) else "stable",
            "expectedHash": expected_hash or None,
            "remoteConfigStatus": agent.remote_config_status,
            "remoteConfigHash": agent.remote_config_hash,
            "remoteConfigError": agent.remote_config_error,
            "effectiveConfigHash": agent.effective_config_hash,
            "drift": {
                "state": drift.state.value,
                "reason": drift.reason,
                "paths": list(drift.paths),
            },
            "version": agent.service_version,
            "outdated": bool(record.target_version)
            and agent.service_version != record.target_version,
            "package": _package(agent, self.state.expected_package(record, agent.instance_uid)),
            "attributes": dict(agent.attributes),
        }

    async def _agents(self, record: FleetRecord, uid: str | None = None) -> list[dict[str, Any]]:
        """The fleet's agents as JSON, or only the one whose uid (any case, dashes or
        not) is `uid`: one agent's answer judges no other's drift."""
        mapping = self.state.recent().mapping_for(record.key)
        pod_of = mapping.pod_of
        agents = mapping.agents
        if uid is not None:
            agents = {k: a for k, a in agents.items() if k.replace("-", "").lower() == uid}
        jobs = {}
        for key, agent in agents.items():
            text, expected_hash, _ = self.state.expected(record, key)
            jobs[key] = (agent, text or "", expected_hash)
        verdicts = await self.state.judge(jobs)
        out = []
        for n, (key, a) in enumerate(sorted(agents.items()), 1):
            out.append(self._agent_json(record, a, pod_of.get(key), verdicts[key]))
            if n % JSON_BATCH == 0:
                await asyncio.sleep(0)  # agents' messages go first
        return out

    async def list_agents(self, request: web.Request) -> web.Response:
        record = await self._fleet(request)
        wanted = request.query.get("state")
        if wanted is not None and wanted not in AGENT_STATES:
            raise web.HTTPBadRequest(text=f"state must be one of {', '.join(AGENT_STATES)}")
        agents = [a for a in await self._agents(record) if wanted is None or _in_state(a, wanted)]
        return web.json_response({"agents": agents, "count": len(agents)})

    async def get_agent(self, request: web.Request) -> web.Response:
        record = await self._fleet(request)
        wanted = request.match_info["uid"].replace("-", "").lower()
        for agent in await self._agents(record, wanted):
            if agent["instanceUid"].replace("-", "").lower() == wanted:
                effective = self.state.views[agent["instanceUid"]].effective_config
                desired = record.config_text or ""
                if effective:
                    renders = self.state.renders
                    async with self.context.rendering(request):
                        agent["effectiveConfig"] = await rendered(
                            renders, masked_config_text, effective
                        )
                        agent["diff"] = await rendered(
                            renders, unified_diff, desired, effective, "config.yaml"
                        )
                else:
                    agent["effectiveConfig"] = agent["diff"] = ""
                return web.json_response(agent)
        raise web.HTTPNotFound(text=f"no agent {request.match_info['uid']} in fleet {record.key}")


def _package(agent: AgentView, offer: PackageOffer | None) -> dict[str, Any] | None:
    """The agent's report on its fleet's package: where the install of this very offer
    is (None: not offered, or no report on it yet)."""
    if offer is None:
        return None
    report = package_of(agent, offer)
    return {
        "offeredVersion": offer.version,
        "accepted": agent.accepts_packages,
        "status": report.state.value if report is not None and report.state else None,
        "error": report.error if report is not None else "",
    }


def _in_state(agent: dict[str, Any], state: str) -> bool:
    live = agent["connected"] and not agent["stale"]
    checks = {
        "healthy": live and agent["healthy"] is not False,
        "unhealthy": agent["healthy"] is False or (agent["pod"] is not None and not live),
        "failed": agent["config"] == ConfigState.FAILED.value,
        "applying": agent["config"] == ConfigState.APPLYING.value,
        "pending": agent["config"] == ConfigState.PENDING.value,
        "drifted": agent["drift"]["state"] == "Drifted",
        "outdated": live and agent["outdated"],
        "disconnected": not live,
        "unmapped": agent["pod"] is None,
    }
    return bool(checks[state])
