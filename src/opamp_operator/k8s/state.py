"""What the operator knows between handler calls: fleets, pods, and which agent belongs to
which fleet. It is the OpAMP core's source of desired configs.

Only live connections are in-memory truth; everything here is rebuilt from the cluster
(kopf resumes fleets and re-lists pods on start), so a restarted operator converges to the
same assignment.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from cachetools import TTLCache

from opamp_operator.api.models import CollectorFleetSpec, FleetTemplate
from opamp_operator.fleet.conditions import Why
from opamp_operator.fleet.drift import (
    CacheKey,
    Comparison,
    DriftCache,
    DriftState,
    DriftVerdict,
    compare,
    needs_comparison,
    verdict_of,
)
from opamp_operator.fleet.health import FleetHealth, summarize
from opamp_operator.fleet.mapping import (
    FleetAssignment,
    FleetSelector,
    MappingResult,
    assign_fleets,
)
from opamp_operator.fleet.pod_rollout import PodStaging
from opamp_operator.fleet.remediation import Attempt
from opamp_operator.fleet.rollout import Membership
from opamp_operator.fleet.rollout_agents import DesiredRevision
from opamp_operator.fleet.versions import revision_hash
from opamp_operator.fleet.views import AgentView, PodView, agent_view
from opamp_operator.k8s.access import AgentTokenReviewer, ReviewedAccount, looks_like_jwt
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.ids import uid_str
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.session import AgentRecord, ServerCore
from opamp_operator.server.api import Unauthenticated, bearer_of
from opamp_operator.server.app import Credentials, Limits, config_workers
from opamp_operator.server.workers import ConfigWorkers, WorkerError


@dataclass(frozen=True)
class Governance:
    """A ConfigRollout's hold on its fleet: which agents get the desired revision (the
    membership); every other agent gets the stable revision's exact bytes."""

    rollout: str  # namespace/name
    membership: Membership
    stable_revision: str
    stable_hash: str
    stable_text: str | None = None
    stable_config: RemoteConfig | None = None
    stable_package: PackageOffer | None = None
    """The stable revision's package: offered to non-members that accept packages; None
    offers them nothing (they keep what they run)."""
    stable_template: FleetTemplate | None = None
    """The stable revision's spec.template (template mode)."""
    pods: PodStaging | None = None
    """While the rollout stages a template change: what the workloads look like
    (fleet.pod_rollout); `membership` then selects the pods of the desired template."""
    # Why the fleet cannot become Ready while the rollout is where it is, e.g. after a
    # rollback.
    problem: Why | None = None


@dataclass(frozen=True)
class RolloutRef:
    namespace: str
    name: str
    fleet: str  # namespace/name of the CollectorFleet it governs
    created: str  # creationTimestamp: the oldest rollout of a fleet governs it

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


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
    revision: str | None = None
    # sha256 of the bearer token agents must present (spec.authSecretRef), when set.
    token_digest: bytes | None = None
    token_read_at: float = 0.0
    # What keeps the fleet from being Ready whatever its agents do, by what it concerns.
    # spec_problem: the newest spec is invalid; the record is the last valid one's.
    spec_problem: Why | None = None
    config_problem: Why | None = None
    auth_problem: Why | None = None
    workload_problem: Why | None = None
    governance: Governance | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def target_version(self) -> str:
        """spec.version.expected; "" when the fleet names no version."""
        return self.spec.version.expected if self.spec.version is not None else ""

    @cached_property
    def package(self) -> PackageOffer | None:
        """The package offered to the fleet's agents that accept packages (its hashes
        computed once per reconciled spec)."""
        return self.spec.version.offer() if self.spec.version is not None else None

    def health(self, mapping: MappingResult, drift: Mapping[str, bool | None]) -> FleetHealth:
        """The fleet's aggregated state (fleet.health.summarize) against its desired config
        and version: one call for the status tick and the read API."""
        return summarize(
            self.selector,
            mapping,
            self.desired_hash,
            drift,
            target_version=self.target_version,
            package=self.package,
        )

    @property
    def blocker(self) -> Why | None:
        """The first problem that keeps the fleet from being Ready: its spec, its config,
        its token Secret, its template, then what its governing rollout says."""
        problems = (
            self.spec_problem,
            self.config_problem,
            self.auth_problem,
            self.workload_problem,
        )
        for found in problems:
            if found is not None:
                return found
        return self.governance.problem if self.governance is not None else None

    @property
    def problem(self) -> str | None:
        found = self.blocker
        return found.message if found is not None else None

    @property
    def stable(self) -> tuple[str, str]:
        """(revision, hash) every agent outside a rollout's membership runs: the governing
        rollout's stable revision, or the desired one when no rollout governs."""
        g = self.governance
        if g is not None and g.stable_config is not None:
            return g.stable_revision, g.stable_hash
        return self.revision or "", self.revision_hash

    @property
    def desired_hash(self) -> str:
        """The desired config's hash: what agents echo when they apply it."""
        return self.config.hash.hex() if self.config is not None else ""

    @cached_property
    def template_hash(self) -> str:
        """The pod template's part of the revision (fleet.pod_rollout.template_hash);
        "" outside template mode."""
        return self.spec.template.digest() if self.spec.template is not None else ""

    @property
    def desired(self) -> DesiredRevision:
        """What the desired revision asks of the fleet's agents, as a rollout's gates
        read it (fleet.rollout_agents)."""
        return DesiredRevision(self.desired_hash, self.revision_hash, self.package)

    @property
    def revision_hash(self) -> str:
        """What identifies the desired revision (config, package, pod template), for
        revisions and rollouts; the config's hash when the fleet names no package and
        renders no pods."""
        if self.config is None:
            return ""
        return revision_hash(self.desired_hash, self.package, self.template_hash)


GONE_POD_SECONDS = 60.0
"""How long a deleted pod's node keeps its slot in a staged DaemonSet rollout without a
successor: a DaemonSet's next pod comes within seconds; a node that left the cluster
leaves the rollout after this."""
READ_MAPPING_SECONDS = 1.0
"""How old a mapping the read API answers from may be (OperatorState.recent)."""


@dataclass
class OperatorState:
    core: ServerCore | None = None
    fleets: dict[str, FleetRecord] = field(default_factory=dict)
    pods: dict[str, PodView] = field(default_factory=dict)
    assignment: FleetAssignment | None = None
    views: dict[str, AgentView] = field(default_factory=dict)
    # Drift remediation attempts per fleet, per agent (policy Remediate).
    remediation: dict[str, dict[str, Attempt]] = field(default_factory=dict)
    rollouts: dict[str, RolloutRef] = field(default_factory=dict)
    credentials_changed: Callable[[], object] = field(default=lambda: None)
    reviewer: AgentTokenReviewer | None = None
    """Checks agents' ServiceAccount tokens; None: only fleet tokens are accepted."""
    deleted_pods: TTLCache[str, bool] = field(
        default_factory=lambda: TTLCache(100_000, 24 * 3600.0)
    )
    """Uids of pods deleted lately: their bound tokens no longer authenticate."""
    gone: TTLCache[str, PodView] = field(
        default_factory=lambda: TTLCache(100_000, GONE_POD_SECONDS)
    )
    """Pods deleted in the last GONE_POD_SECONDS, by key: a staged DaemonSet rollout
    keeps their nodes' slots while their successors come (fleet.pod_rollout)."""
    """Called when a credential stops or starts identifying a fleet (a token rotated,
    revoked, a fleet deleted): the server re-checks the sessions it authenticated
    earlier (OpAMPServer.revalidate)."""
    drift: DriftCache = field(default_factory=DriftCache)
    """Comparisons of agents' effective configs with what they should run, shared by the
    status tick, the rollout tick and the read API (one parse per pair of configs)."""
    judges: ConfigWorkers = field(default_factory=lambda: config_workers(Limits(), "judges"))
    """Where agents' configs are parsed and compared: worker processes, never the event
    loop's (a config at the parser's caps takes seconds; server/workers.py)."""
    renders: ConfigWorkers = field(default_factory=lambda: config_workers(Limits(), "renders"))
    """Where the read API renders configs and diffs for readers: a pool of its own, so
    readers wait for each other and never hold up the status and rollout ticks' drift
    judging (benchmarks/loop_lag.py saw ticks of 7 s queued behind renders)."""
    refreshed_at: float = 0.0
    """When `assignment` was made (time.monotonic)."""

    def recent(self) -> FleetAssignment:
        """The mapping for a reader of the API: the last one while it is under
        READ_MAPPING_SECONDS old, else a new one. Re-mapping on every request cost every
        agent's offers a look (refresh) per request."""
        if self.assignment is None or time.monotonic() - self.refreshed_at >= READ_MAPPING_SECONDS:
            return self.refresh()
        return self.assignment

    def refresh(self) -> FleetAssignment:
        """Re-map every agent to pods and fleets; cheap enough to run every few seconds.
        A new mapping can change what agents should run, so their offers are queued."""
        self.refreshed_at = time.monotonic()
        agents = self.core.agents.values() if self.core is not None else []
        self.views = {v.instance_uid: v for v in map(agent_view, agents)}
        self.assignment = assign_fleets(
            [f.selector for f in self.fleets.values()],
            list(self.pods.values()),
            list(self.views.values()),
        )
        if self.core is not None:
            self.core.desired_changed()
        return self.assignment

    def put_fleet(self, record: FleetRecord) -> FleetRecord | None:
        """Install a (re)reconciled fleet; returns the record it replaces. Agents whose
        config or heartbeat interval it changes get their offers."""
        previous = self.fleets.get(record.key)
        self.fleets[record.key] = record
        if previous is not None and previous.token_digest != record.token_digest:
            self.credentials_changed()
        if previous is None or previous.revision_hash != record.revision_hash:
            self.refresh()
        elif self.core is not None:
            self.core.desired_changed()
        return previous

    def drop_fleet(self, key: str) -> None:
        dropped = self.fleets.pop(key, None)
        if dropped is not None:
            self.refresh()
            if dropped.token_digest is not None:
                self.credentials_changed()

    def set_token(self, record: FleetRecord, digest: bytes | None, problem: Why | None) -> None:
        """A fleet's token as just read: None with a problem when its Secret is gone,
        emptied or unreadable, which revokes it: no agent authenticates with the old one
        any more, and sessions that did are closed."""
        changed = record.token_digest != digest
        record.token_digest = digest
        record.auth_problem = problem
        if changed and self.fleets.get(record.key) is record:
            self.credentials_changed()

    def set_governance(self, record: FleetRecord, governance: Governance | None) -> bool:
        """A rollout's new hold on its fleet; True (and offers queued) when it changed."""
        if record.governance == governance:
            return False
        record.governance = governance
        if self.core is not None:
            self.core.desired_changed()
        return True

    def refresh_views(self, uids: Iterable[str]) -> dict[str, AgentView]:
        """Fresh views of some agents (what they report now), without re-mapping
        everything: a rollout's gates need the last few seconds' reports, and the
        agent ↔ pod mapping rarely changes between status ticks."""
        if self.core is None:
            return {}
        records = {uid_str(k): r for k, r in self.core.agents.items()}
        fresh = {uid: agent_view(records[uid]) for uid in uids if uid in records}
        self.views.update(fresh)
        return fresh

    async def authenticate(
        self, credentials: Credentials, session: AgentIdentity | None = None
    ) -> AgentIdentity | None:
        """The OpAMP server's Authenticator: what the connection's credentials prove.

        A bearer token is a fleet's token (identifies the fleet) or, given a reviewer, a
        ServiceAccount token (TokenReview: the account and the pod it is bound to); a
        verified client certificate adds its names. No credential: anonymous. Any other
        credential is refused. `session` is what an open WebSocket was authenticated
        as: a ServiceAccount identity stays valid (its token may have expired and been
        rotated on disk since) until its pod is deleted."""
        fleet, account = "", None
        token = bearer_of(credentials.authorization)
        if token is not None:
            fleet = self._fleet_of_token(token)
            if not fleet:
                account = await self._account(token, session)
        certificate = credentials.certificate.names if credentials.certificate else ()
        identity = AgentIdentity(
            fleet=fleet,
            service_account=account.service_account if account else "",
            pod=account.pod if account else "",
            pod_uid=account.pod_uid if account else "",
            certificate=certificate,
        )
        return identity or None

    async def _account(self, token: str, session: AgentIdentity | None) -> ReviewedAccount:
        if session is not None and session.service_account:
            if session.pod_uid in self.deleted_pods:
                raise Unauthenticated(f"pod {session.pod} was deleted")
            return ReviewedAccount(session.service_account, session.pod, session.pod_uid)
        if self.reviewer is None or not looks_like_jwt(token):
            raise Unauthenticated("the bearer token is not the token of any CollectorFleet")
        account = await self.reviewer.review(token)
        if account.pod_uid in self.deleted_pods:
            raise Unauthenticated(f"pod {account.pod} was deleted")
        return account

    def _fleet_of_token(self, token: str) -> str:
        digest = hashlib.sha256(token.encode()).digest()
        matches = [
            record
            for record in self.fleets.values()
            if record.token_digest is not None and hmac.compare_digest(record.token_digest, digest)
        ]
        # Two fleets sharing a token: the oldest, as with overlapping selectors.
        return min(matches, key=lambda r: r.selector.priority).key if matches else ""

    def pod_deleted(self, uid: str) -> None:
        """A pod is gone: ServiceAccount tokens bound to it authenticate nobody now (the
        apiserver refuses them too), and sessions opened with them are closed."""
        if uid:
            self.deleted_pods[uid] = True
            self.credentials_changed()

    def fleet_of(self, agent: AgentRecord) -> FleetRecord | None:
        if self.assignment is None:
            return None
        key = self.assignment.fleet_of_agent.get(uid_str(agent.instance_uid))
        return self.fleets.get(key) if key is not None else None

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        """DesiredConfigSource: the config of the fleet the agent's pod belongs to, or,
        while a rollout governs the fleet, the revision the rollout gives this agent."""
        fleet = self.fleet_of(agent)
        if fleet is None:
            return None
        return self.expected(fleet, uid_str(agent.instance_uid))[2]

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        """DesiredConfigSource: the heartbeat interval of the fleet the agent's pod belongs
        to (0: none offered); None, for an agent in no fleet or a fleet that names none,
        leaves it to the operator's --heartbeat-seconds."""
        fleet = self.fleet_of(agent)
        return fleet.spec.heartbeat_interval_seconds if fleet is not None else None

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        """DesiredConfigSource: the package of the fleet the agent's pod belongs to, or,
        while a rollout governs the fleet, that of the revision the rollout gives it."""
        fleet = self.fleet_of(agent)
        return self.expected_package(fleet, uid_str(agent.instance_uid)) if fleet else None

    def expected_package(self, record: FleetRecord, uid: str) -> PackageOffer | None:
        """The package of the revision this agent should run (see `expected`)."""
        g = record.governance
        if g is not None and g.stable_config is not None and not self.is_member(record, uid):
            return g.stable_package
        return record.package

    def is_member(self, record: FleetRecord, uid: str) -> bool:
        """Whether the agent is to run the fleet's desired revision."""
        g = record.governance
        if g is None or g.stable_config is None:
            return True
        view = self.views.get(uid)
        attributes = view.attributes if view is not None else {}
        pod = self.pod_of_agent(uid)
        labels = pod.labels if pod is not None else {}
        return g.membership.runs(record.revision_hash, uid, attributes, labels)

    def expected(
        self, record: FleetRecord, uid: str
    ) -> tuple[str | None, str, RemoteConfig | None]:
        """(text, hash, config) of the revision this agent should run."""
        g = record.governance
        if g is not None and g.stable_config is not None and not self.is_member(record, uid):
            return g.stable_text, g.stable_config.hash.hex(), g.stable_config
        return record.config_text, record.desired_hash, record.config

    def pod_of_agent(self, uid: str) -> PodView | None:
        if self.assignment is None:
            return None
        key = self.assignment.mapping.pod_of.get(uid)
        return self.pods.get(key) if key is not None else None

    def governing_rollout(self, fleet: str) -> RolloutRef | None:
        """The oldest ConfigRollout naming the fleet; any other is told it conflicts."""
        refs = [r for r in self.rollouts.values() if r.fleet == fleet]
        return min(refs, key=lambda r: (r.created, r.name)) if refs else None

    def fleets_using_config_map(self, namespace: str, name: str) -> list[FleetRecord]:
        return [
            f
            for f in self.fleets.values()
            if f.namespace == namespace
            and f.spec.config.config_map_ref is not None
            and f.spec.config.config_map_ref.name == name
        ]

    async def drift_of(self, record: FleetRecord, uids: Iterable[str]) -> dict[str, bool | None]:
        """Per agent: does what it runs differ from the config it should run (the fleet's,
        or the stable one for an agent a rollout has not reached)? Only agents that say
        they applied it (or report no status, or UNSET with an effective config) are
        judged; a failed apply is counted as failed, not as drift."""
        if record.config_text is None:
            return {}
        jobs: dict[str, tuple[AgentView, str, str]] = {}
        for uid in uids:
            view = self.views.get(uid)
            if view is None or view.remote_config_status not in (None, "UNSET", "APPLIED"):
                continue
            if view.remote_config_status == "UNSET" and not view.effective_config.strip():
                continue  # has not applied anything yet: pending, not drifted
            text, expected_hash, _ = self.expected(record, uid)
            if text is None:
                continue
            if (
                view.remote_config_status == "APPLIED"
                and view.remote_config_hash.lower() != expected_hash
            ):
                continue  # still on an older config it was given: pending, not drifted
            jobs[uid] = (view, text, expected_hash)
        verdicts = await self.judge(jobs)
        return {
            uid: v.drifted if v.state != DriftState.UNKNOWN else None for uid, v in verdicts.items()
        }

    async def judge(self, jobs: dict[str, tuple[AgentView, str, str]]) -> dict[str, DriftVerdict]:
        """Per agent uid, its drift verdict against (view, expected text, expected hash).
        Comparisons the cache lacks are made on the judges' worker processes, each
        distinct pair of configs once; one that cannot finish there is a verdict
        (drifted: not comparable) and kept like any other, so a hostile config costs
        its budget once."""
        keys: dict[str, CacheKey | str] = {}
        found: dict[CacheKey | str, Comparison] = {}
        todo: dict[CacheKey | str, tuple[str, str]] = {}
        for uid, (view, text, desired_hash) in jobs.items():
            if not needs_comparison(view, desired_hash):
                continue
            key = self.drift.key(desired_hash, view.effective_config, view.effective_config_hash)
            keys[uid] = key if key is not None else uid
            cached = self.drift.get(key)
            if cached is not None:
                found[keys[uid]] = cached
            else:
                todo.setdefault(keys[uid], (text, view.effective_config))
        made = await asyncio.gather(*(self._compare(*pair) for pair in todo.values()))
        for pair, comparison in zip(todo, made, strict=True):
            found[pair] = comparison
            if not isinstance(pair, str):
                self.drift.put(pair, comparison)
        return {
            uid: verdict_of(view, desired_hash, found.get(keys.get(uid, uid)))
            for uid, (view, _, desired_hash) in jobs.items()
        }

    async def _compare(self, desired_yaml: str, effective_yaml: str) -> Comparison:
        try:
            return await self.judges.run(compare, desired_yaml, effective_yaml)
        except WorkerError as exc:
            return Comparison(errors=(f"comparing its effective config {exc}",))

    def close(self) -> None:
        """Stop the config worker processes."""
        self.judges.close()
        self.renders.close()
