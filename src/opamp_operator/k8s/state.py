"""What the operator knows between handler calls: fleets, pods, and which agent belongs to
which fleet. It is the OpAMP core's source of desired configs.

Only live connections are in-memory truth; everything here is rebuilt from the cluster
(kopf resumes fleets and re-lists pods on start), so a restarted operator converges to the
same assignment.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from opamp_operator.api.models import CollectorFleetSpec
from opamp_operator.fleet.drift import DriftState, agent_drift
from opamp_operator.fleet.mapping import FleetAssignment, FleetSelector, assign_fleets
from opamp_operator.fleet.remediation import Attempt
from opamp_operator.fleet.views import AgentView, PodView, agent_view
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.ids import uid_str
from opamp_operator.opamp.session import AgentRecord, ServerCore
from opamp_operator.server.app import UnauthorizedError


@dataclass
class FleetRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    selector: FleetSelector
    spec: CollectorFleetSpec
    config_text: str | None = None
    config: RemoteConfig | None = None
    config_error: str | None = None
    revision: str | None = None
    # sha256 of the bearer token agents must present (spec.authSecretRef), when set.
    token_digest: bytes | None = None
    auth_error: str | None = None
    workload_error: str | None = None
    token_read_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def problem(self) -> str | None:
        """What keeps the fleet from being Ready whatever its agents do."""
        return self.config_error or self.auth_error or self.workload_error

    @property
    def desired_hash(self) -> str:
        return self.config.hash.hex() if self.config is not None else ""


@dataclass
class OperatorState:
    core: ServerCore | None = None
    fleets: dict[str, FleetRecord] = field(default_factory=dict)
    pods: dict[str, PodView] = field(default_factory=dict)
    assignment: FleetAssignment | None = None
    views: dict[str, AgentView] = field(default_factory=dict)
    # Drift needs YAML parsing; verdicts are cached per fleet by what they depend on, and
    # only the current agents' entries are kept.
    # Drift remediation attempts per fleet, per agent (policy Remediate).
    remediation: dict[str, dict[str, Attempt]] = field(default_factory=dict)
    _drift_cache: dict[str, dict[tuple[str, str, str, str], bool | None]] = field(
        default_factory=dict
    )

    def refresh(self) -> FleetAssignment:
        """Re-map every agent to pods and fleets; cheap enough to run every few seconds."""
        agents = self.core.agents.values() if self.core is not None else []
        self.views = {v.instance_uid: v for v in map(agent_view, agents)}
        self.assignment = assign_fleets(
            [f.selector for f in self.fleets.values()],
            list(self.pods.values()),
            list(self.views.values()),
        )
        return self.assignment

    def authenticate(self, authorization: str | None) -> str | None:
        """The OpAMP server's Authenticator: a fleet's bearer token identifies that fleet;
        no header is an anonymous agent (welcome in fleets without a token); any other
        credential is refused."""
        if authorization is None:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <fleet token>'")
        digest = hashlib.sha256(token.strip().encode()).digest()
        matches = [
            record
            for record in self.fleets.values()
            if record.token_digest is not None and hmac.compare_digest(record.token_digest, digest)
        ]
        if not matches:
            raise UnauthorizedError("the bearer token is not the token of any CollectorFleet")
        # Two fleets sharing a token: the oldest, as with overlapping selectors.
        return min(matches, key=lambda r: r.selector.priority).key

    def fleet_of(self, agent: AgentRecord) -> FleetRecord | None:
        if self.assignment is None:
            return None
        key = self.assignment.fleet_of_agent.get(uid_str(agent.instance_uid))
        return self.fleets.get(key) if key is not None else None

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        """DesiredConfigSource: the config of the fleet the agent's pod belongs to."""
        fleet = self.fleet_of(agent)
        return fleet.config if fleet is not None else None

    def fleets_using_config_map(self, namespace: str, name: str) -> list[FleetRecord]:
        return [
            f
            for f in self.fleets.values()
            if f.namespace == namespace
            and f.spec.config.config_map_ref is not None
            and f.spec.config.config_map_ref.name == name
        ]

    def drift_of(self, record: FleetRecord, uids: Iterable[str]) -> dict[str, bool | None]:
        """Per agent: does what it runs differ from the fleet's config? Only agents that say
        they applied it (or report no status, or UNSET with an effective config) are
        judged; a failed apply is counted as failed, not as drift."""
        if record.config_text is None:
            return {}
        verdicts: dict[str, bool | None] = {}
        cache = self._drift_cache.get(record.key, {})
        fresh: dict[tuple[str, str, str, str], bool | None] = {}
        for uid in uids:
            view = self.views.get(uid)
            if view is None or view.remote_config_status not in (None, "UNSET", "APPLIED"):
                continue
            if view.remote_config_status == "UNSET" and not view.effective_config.strip():
                continue  # has not applied anything yet: pending, not drifted
            key = (
                record.desired_hash,
                view.remote_config_status or "",
                view.remote_config_hash,
                view.effective_config_hash,
            )
            if key not in cache:
                verdict = agent_drift(view, record.config_text, record.desired_hash)
                cache[key] = verdict.drifted if verdict.state != DriftState.UNKNOWN else None
            fresh[key] = verdicts[uid] = cache[key]
        self._drift_cache[record.key] = fresh
        return verdicts
