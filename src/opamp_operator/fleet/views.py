"""The plain data the fleet logic works on: what we know of a pod and of an agent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from opamp_operator.opamp.attributes import to_dict, to_text
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.ids import uid_str
from opamp_operator.opamp.packages import PackageReport, package_report
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import AgentRecord, AgentState, HasAgentState


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    uid: str
    ip: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    node: str = ""
    phase: str = ""
    # Readiness gates the pod declares (condition types), e.g. "<group>/agent-ready".
    readiness_gates: tuple[str, ...] = ()
    # The gates' conditions as the pod has them now: type -> (status, reason).
    gate_conditions: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # The drift-remediation attempt the operator persisted on the pod (encoded; "" none).
    remediation: str = ""
    created: float = 0.0  # creationTimestamp, epoch seconds
    terminating: bool = False  # its deletionTimestamp is set

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class AgentView(HasAgentState):
    """An agent as the fleet layer sees it; attributes are text, identifying ones win."""

    instance_uid: str
    attributes: Mapping[str, str]
    peer_ip: str = ""
    # As the session core set it (AgentRecord.state); the properties below read it.
    state: AgentState = AgentState.CONNECTED
    healthy: bool | None = None
    health_error: str = ""
    remote_config_status: str | None = None  # APPLIED, APPLYING, FAILED, UNSET
    remote_config_hash: str = ""
    remote_config_error: str = ""
    effective_config_hash: str = ""
    effective_config: str = ""
    # What its credentials proved (empty: anonymous); never what it reported.
    identity: AgentIdentity = field(default_factory=AgentIdentity)
    accepts_remote_config: bool = True
    connected_at: float = 0.0
    # AvailableComponents: component types per plural kind ("receivers": {"otlp"});
    # None when the agent reports none.
    components: Mapping[str, frozenset[str]] | None = None
    accepts_packages: bool = False
    # PackageStatuses: the aggregate hash of the packages it was last offered (hex), and
    # its report on each package by name (at most PACKAGES_SHOWN).
    packages_hash: str = ""
    packages: Mapping[str, PackageReport] = field(default_factory=dict)

    @property
    def service_version(self) -> str:
        return self.attributes.get("service.version", "")


def _peer_ip(peer: str) -> str:
    """aiohttp gives the bare address; tolerate host:port and [v6]:port too."""
    if peer.startswith("["):
        return peer[1:].split("]", 1)[0]
    if peer.count(":") == 1:
        return peer.split(":", 1)[0]
    return peer


_COMPONENTS_CACHE: dict[bytes, Mapping[str, frozenset[str]]] = {}
_COMPONENTS_CACHE_LIMIT = 256


def components_of(
    available: pb.AvailableComponents | None, digest: bytes = b""
) -> Mapping[str, frozenset[str]] | None:
    """AvailableComponents as the Collector reports them (kind → types in
    sub_component_map). Many agents share one build, so results are kept by `digest`, the
    server's hash of what was listed (AgentRecord.components_digest): never by the hash
    the agent sends, which one agent could point at another build's list."""
    if available is None or not available.components:
        return None
    if digest and digest in _COMPONENTS_CACHE:
        return _COMPONENTS_CACHE[digest]
    parsed = {
        kind: frozenset(details.sub_component_map) for kind, details in available.components.items()
    }
    if digest:
        if len(_COMPONENTS_CACHE) >= _COMPONENTS_CACHE_LIMIT:
            _COMPONENTS_CACHE.clear()
        _COMPONENTS_CACHE[digest] = parsed
    return parsed


def agent_attributes(agent: AgentRecord) -> dict[str, str]:
    """Its identifying and non-identifying attributes as text, identifying ones winning."""
    if agent.description is None:
        return {}
    merged = to_dict(agent.description.non_identifying_attributes)
    merged.update(to_dict(agent.description.identifying_attributes))
    return {k: to_text(v) for k, v in merged.items()}


def agent_view(agent: AgentRecord) -> AgentView:
    """The record as the fleet layer sees it. Kept on the record until something it is
    built from changes (the core replaces a reported sub-message with a new object on
    every change): the status tick and every read-API request view every agent, and
    building 1,000 views (an effective config's text joined for each) was most of a
    1,000-agent operator's loop time (benchmarks/loop_lag.py)."""
    reported = (
        agent.description,
        agent.health,
        agent.remote_config_status,
        agent.effective_config,
        agent.available_components,
        agent.identity,
        agent.package_statuses,
    )
    plain = (
        agent.state,
        agent.peer,
        agent.effective_config_hash,
        agent.components_digest,
        agent.capabilities,
        agent.connected_at,
    )
    memo = agent.view_memo
    if (
        isinstance(memo, _ViewMemo)
        and all(a is b for a, b in zip(memo.reported, reported, strict=True))
        and memo.plain == plain
    ):
        return memo.view
    view = _build_view(agent)
    agent.view_memo = _ViewMemo(reported, plain, view)
    return view


@dataclass(frozen=True, slots=True)
class _ViewMemo:
    reported: tuple[object, ...]
    plain: tuple[object, ...]
    view: AgentView


def _build_view(agent: AgentRecord) -> AgentView:
    attrs = agent_attributes(agent)
    status = agent.remote_config_status
    effective = ""
    if agent.effective_config is not None:
        files = agent.effective_config.config_map.config_map
        effective = "".join(files[name].body.decode(errors="replace") for name in sorted(files))
    return AgentView(
        instance_uid=uid_str(agent.instance_uid),
        attributes=attrs,
        peer_ip=_peer_ip(agent.peer),
        state=agent.state,
        healthy=agent.health.healthy if agent.health is not None else None,
        health_error=agent.health.last_error if agent.health is not None else "",
        remote_config_status=(
            pb.RemoteConfigStatuses.Name(status.status).removeprefix("RemoteConfigStatuses_")
            if status is not None
            else None
        ),
        remote_config_hash=status.last_remote_config_hash.hex() if status is not None else "",
        remote_config_error=status.error_message if status is not None else "",
        effective_config_hash=(
            agent.effective_config_hash.hex() if agent.effective_config_hash is not None else ""
        ),
        effective_config=effective,
        identity=agent.identity or AgentIdentity(),
        accepts_remote_config=agent.can(pb.AgentCapabilities_AcceptsRemoteConfig),
        connected_at=agent.connected_at,
        components=components_of(agent.available_components, agent.components_digest),
        accepts_packages=agent.can(pb.AgentCapabilities_AcceptsPackages),
        packages_hash=(
            agent.package_statuses.server_provided_all_packages_hash.hex()
            if agent.package_statuses is not None
            else ""
        ),
        packages=_packages(agent.package_statuses),
    )


PACKAGES_SHOWN = 16
"""Packages of one agent the fleet layer looks at (by name): an agent has one top-level
package and a few addons; a report of more is not worth keeping in every view."""


def _packages(statuses: pb.PackageStatuses | None) -> Mapping[str, PackageReport]:
    if statuses is None:
        return {}
    names = sorted(statuses.packages)[:PACKAGES_SHOWN]
    return {n: r for n in names if (r := package_report(statuses, n)) is not None}
