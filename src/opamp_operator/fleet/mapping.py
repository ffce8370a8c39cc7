"""Which pod each agent is, and which fleet each pod and agent belongs to.

An agent says who it is through its attributes; the rules below turn that into one pod,
strongest evidence first, and record which rule decided so a user can see why an agent
landed where it did. Everything is a pure function of its inputs, independent of their
order: the Kubernetes shell passes the pods it knows and the agents the registry holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any, TypeVar

from opamp_operator.fleet.views import AgentView, PodView
from opamp_operator.opamp.identity import AgentIdentity

ATTR_POD_UID = "k8s.pod.uid"
ATTR_NAMESPACE = "k8s.namespace.name"
ATTR_POD_NAME = "k8s.pod.name"
ATTR_HOST_NAME = "host.name"

_T = TypeVar("_T")


class Rule(StrEnum):
    """How an agent was tied to a pod; members are in the order the rules are tried."""

    CREDENTIAL = "credential"
    """A ServiceAccount token bound to the pod (AgentIdentity.pod_uid)."""
    POD_UID = "k8s.pod.uid"
    NAMESPACE_NAME = "namespace+name"
    HOST_NAME = "host.name"
    SOURCE_IP = "source-ip"


class Trust(IntEnum):
    """How well a claim on a pod is backed; the best-backed claim gets the pod."""

    CLAIMED = 1
    """Only the agent's word: its attributes or its address."""
    FLEET = 2
    """A credential admitting it to the pod's fleet (its token, a certificate it names)."""
    POD = 3
    """A credential naming this very pod (a ServiceAccount token bound to it)."""


@dataclass(frozen=True)
class Claim:
    """An agent's claim on a pod and the rule that made it (the pod may go to another)."""

    instance_uid: str
    pod: str  # PodView.key
    rule: Rule
    trust: Trust = Trust.CLAIMED


# Whether an agent may hold a pod, and on what trust; None refuses the claim.
Admission = Callable[[AgentView, PodView], Trust | None]


def admit_by_identity(agent: AgentView, pod: PodView) -> Trust | None:
    """With no fleet to ask: a credential bound to a pod holds only that pod."""
    bound = agent.identity.pod_uid
    if bound:
        return Trust.POD if bound == pod.uid else None
    return Trust.CLAIMED


@dataclass(frozen=True)
class Ambiguity:
    """A rule matched several pods, so it decided nothing; kept so users can see why."""

    instance_uid: str
    rule: Rule
    value: str  # the attribute value or source IP that matched
    pods: tuple[str, ...]  # the candidate pods, sorted


@dataclass(frozen=True)
class Duplicate:
    """Several agents claimed one pod: `winner` has it, `losers` are reported as conflicts."""

    pod: str
    winner: str
    losers: tuple[str, ...]


@dataclass(frozen=True)
class MappingResult:
    """Agents ↔ pods. Every agent is in exactly one of: `pod_of` (it has a pod), a
    duplicate's `losers` (its pod went to another agent), `agents_without_pod` (it
    claimed no pod). Sequences are sorted, so equal inputs give equal results."""

    pods: Mapping[str, PodView]  # by key
    agents: Mapping[str, AgentView]  # by instance_uid
    claims: Mapping[str, Claim]  # by instance_uid; winners and losers
    pod_of: Mapping[str, str]  # instance_uid -> pod key, winners only
    agent_of: Mapping[str, str]  # pod key -> instance_uid
    pods_without_agent: tuple[str, ...]
    agents_without_pod: tuple[str, ...]
    duplicates: tuple[Duplicate, ...]
    ambiguities: tuple[Ambiguity, ...]
    # Claims the admission refused (the agent lacks the credential the pod's fleet
    # requires); those agents are in agents_without_pod.
    refused: Mapping[str, Claim] = field(default_factory=dict)

    def rule_of(self, instance_uid: str) -> Rule | None:
        """The rule that gave this agent its pod; None when it has none."""
        if instance_uid not in self.pod_of:
            return None
        return self.claims[instance_uid].rule

    @property
    def conflicting_agents(self) -> tuple[str, ...]:
        """Agents that claimed a pod another agent won."""
        return tuple(sorted(uid for d in self.duplicates for uid in d.losers))

    def restrict(self, pods: Collection[str], agents: Collection[str]) -> MappingResult:
        """The part of this mapping about some pods and agents (one fleet's share).

        An agent kept here keeps its claim even if its pod is not kept, so a fleet still
        shows where its agent went; ambiguities are kept for kept agents and for unmapped
        agents that were ambiguous about a kept pod.
        """
        pod_keys = {k for k in pods if k in self.pods}
        uids = {u for u in agents if u in self.agents}
        agent_of = {p: u for p, u in self.agent_of.items() if p in pod_keys and u in uids}
        return MappingResult(
            pods={k: self.pods[k] for k in sorted(pod_keys)},
            agents={u: self.agents[u] for u in sorted(uids)},
            claims={u: c for u, c in self.claims.items() if u in uids},
            pod_of={u: p for u, p in self.pod_of.items() if u in uids and p in pod_keys},
            agent_of=agent_of,
            pods_without_agent=tuple(sorted(pod_keys - set(agent_of))),
            agents_without_pod=tuple(u for u in self.agents_without_pod if u in uids),
            duplicates=tuple(
                d
                for d in self.duplicates
                if d.pod in pod_keys and (d.winner in uids or set(d.losers) & uids)
            ),
            ambiguities=tuple(
                a
                for a in self.ambiguities
                if a.instance_uid in uids
                or (a.instance_uid not in self.claims and set(a.pods) & pod_keys)
            ),
            refused={u: c for u, c in self.refused.items() if u in uids},
        )


def _by_unique_key(items: Sequence[_T], key_of: Callable[[_T], str], what: str) -> dict[str, _T]:
    out: dict[str, _T] = {}
    for item in items:
        key = key_of(item)
        if key in out:
            raise ValueError(f"two {what}s share the key {key!r}")
        out[key] = item
    return out


class _PodIndex:
    """Pods by each value a rule looks up; candidate lists sorted for determinism."""

    def __init__(self, pods: Collection[PodView]) -> None:
        self.uid: dict[str, list[str]] = defaultdict(list)
        self.ns_name: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.name: dict[str, list[str]] = defaultdict(list)
        self.ip: dict[str, list[str]] = defaultdict(list)
        for pod in sorted(pods, key=lambda p: p.key):
            if pod.uid:
                self.uid[pod.uid].append(pod.key)
            self.ns_name[(pod.namespace, pod.name)].append(pod.key)
            self.name[pod.name].append(pod.key)
            if pod.ip:
                self.ip[pod.ip].append(pod.key)

    def lookup(self, rule: Rule, agent: AgentView) -> tuple[str, list[str]] | None:
        """(the value looked up, matching pods), or None when the agent gives no value."""
        attrs = agent.attributes
        if rule is Rule.CREDENTIAL:
            bound = agent.identity.pod_uid
            return (bound, self.uid.get(bound, [])) if bound else None
        if rule is Rule.POD_UID:
            uid = attrs.get(ATTR_POD_UID, "")
            return (uid, self.uid.get(uid, [])) if uid else None
        if rule is Rule.NAMESPACE_NAME:
            ns, name = attrs.get(ATTR_NAMESPACE, ""), attrs.get(ATTR_POD_NAME, "")
            if not (ns and name):
                return None
            return (f"{ns}/{name}", self.ns_name.get((ns, name), []))
        if rule is Rule.HOST_NAME:
            host = attrs.get(ATTR_HOST_NAME, "")
            return (host, self.name.get(host, [])) if host else None
        ip = agent.peer_ip
        return (ip, self.ip.get(ip, [])) if ip else None


def map_agents(
    pods: Sequence[PodView], agents: Sequence[AgentView], admit: Admission = admit_by_identity
) -> MappingResult:
    """Tie each agent to at most one pod and each pod to at most one agent.

    Rules are tried in `Rule` order; a rule that matches several pods is recorded as an
    ambiguity and the next rule is tried. The first rule that finds one pod decides: the
    claim is then admitted (with a Trust) or refused by `admit`, and a refused agent
    gets no pod. When several agents claim one pod, the best-backed claim wins, then a
    live agent over one that is not, then the earliest connection: nothing the agent
    chooses (its instance uid above all) decides, so a newcomer cannot displace the
    agent holding a pod by picking a large uid. Pod keys and instance uids must be
    unique (ValueError otherwise).
    """
    pod_by_key = _by_unique_key(pods, lambda p: p.key, "pod")
    agent_by_uid = _by_unique_key(agents, lambda a: a.instance_uid, "agent")
    index = _PodIndex(pod_by_key.values())

    claims: dict[str, Claim] = {}
    refused: dict[str, Claim] = {}
    ambiguities: list[Ambiguity] = []
    for uid in sorted(agent_by_uid):
        agent = agent_by_uid[uid]
        for rule in Rule:
            found = index.lookup(rule, agent)
            if found is None:
                continue
            value, candidates = found
            if len(candidates) == 1:
                trust = admit(agent, pod_by_key[candidates[0]])
                if trust is None:
                    refused[uid] = Claim(uid, candidates[0], rule)
                else:
                    claims[uid] = Claim(uid, candidates[0], rule, trust)
                break
            if candidates:
                ambiguities.append(Ambiguity(uid, rule, value, tuple(candidates)))

    claimants: dict[str, list[str]] = defaultdict(list)
    for claim in claims.values():
        claimants[claim.pod].append(claim.instance_uid)
    pod_of: dict[str, str] = {}
    agent_of: dict[str, str] = {}
    duplicates: list[Duplicate] = []
    for pod_key in sorted(claimants):
        uids = claimants[pod_key]
        winner = min(
            uids,
            key=lambda u: (
                -claims[u].trust,
                not agent_by_uid[u].live,
                agent_by_uid[u].connected_at,
                u,
            ),
        )
        pod_of[winner] = pod_key
        agent_of[pod_key] = winner
        if len(uids) > 1:
            duplicates.append(Duplicate(pod_key, winner, tuple(sorted(set(uids) - {winner}))))

    return MappingResult(
        pods={k: pod_by_key[k] for k in sorted(pod_by_key)},
        agents={u: agent_by_uid[u] for u in sorted(agent_by_uid)},
        claims={u: claims[u] for u in sorted(claims)},
        pod_of={u: pod_of[u] for u in sorted(pod_of)},
        agent_of={p: agent_of[p] for p in sorted(agent_of)},
        pods_without_agent=tuple(k for k in sorted(pod_by_key) if k not in agent_of),
        agents_without_pod=tuple(u for u in sorted(agent_by_uid) if u not in claims),
        duplicates=tuple(duplicates),
        ambiguities=tuple(ambiguities),
        refused={u: refused[u] for u in sorted(refused)},
    )


# ---------------------------------------------------------------------------------------
# Label selectors and fleets


class SelectorError(ValueError):
    """A label selector Kubernetes would reject; the message says which part."""


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class LabelRequirement:
    """One matchExpressions entry, checked as Kubernetes checks it when built."""

    key: str
    operator: Operator | str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key:
            raise SelectorError("a match expression needs a key")
        try:
            op = Operator(self.operator)
        except ValueError:
            raise SelectorError(
                f"{self.key}: operator {self.operator!r} is not one of "
                + ", ".join(o.value for o in Operator)
            ) from None
        values = tuple(self.values)
        if op in (Operator.IN, Operator.NOT_IN) and not values:
            raise SelectorError(f"{self.key}: operator {op.value} needs at least one value")
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            raise SelectorError(f"{self.key}: operator {op.value} takes no values")
        object.__setattr__(self, "operator", op)
        object.__setattr__(self, "values", values)

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator is Operator.IN:
            return present and labels[self.key] in self.values
        if self.operator is Operator.NOT_IN:
            return not present or labels[self.key] not in self.values
        if self.operator is Operator.EXISTS:
            return present
        return not present


def _epoch(created: str | float) -> float:
    if isinstance(created, str):
        try:
            when = datetime.fromisoformat(created)
        except ValueError:
            raise SelectorError(f"creation timestamp {created!r} is not RFC 3339") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    return float(created)


class AuthMode(StrEnum):
    """What a fleet requires of an agent before it may hold one of the fleet's pods."""

    NONE = "None"
    """Nothing: any agent claiming a pod by its attributes (reported as unverified)."""
    TOKEN = "Token"  # noqa: S105 - a mode's name, not a secret
    """The fleet's bearer token (spec.authSecretRef)."""
    CLIENT_CERTIFICATE = "ClientCertificate"
    """A verified client certificate carrying one of the fleet's names."""
    SERVICE_ACCOUNT_TOKEN = "ServiceAccountToken"  # noqa: S105 - a mode's name
    """A ServiceAccount token bound to the very pod (TokenReview), of an allowed account."""


@dataclass(frozen=True)
class AgentAuth:
    mode: AuthMode = AuthMode.NONE
    names: frozenset[str] = frozenset()
    """ClientCertificate: the certificate names admitted. ServiceAccountToken: the
    ServiceAccount names (in the fleet's namespace) admitted; empty admits any."""


@dataclass(frozen=True)
class FleetSelector:
    """Which pods a fleet selects: a label selector within its namespace. An empty selector
    selects every pod of the namespace, as an empty LabelSelector does in Kubernetes."""

    namespace: str
    name: str
    created: str | float  # metadata.creationTimestamp (RFC 3339) or Unix seconds
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[LabelRequirement, ...] = ()
    auth: AgentAuth = field(default_factory=AgentAuth)
    """What an agent must prove to hold one of this fleet's pods."""

    def __post_init__(self) -> None:
        _epoch(self.created)  # reject a bad timestamp now, not while sorting
        object.__setattr__(self, "match_expressions", tuple(self.match_expressions))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def priority(self) -> tuple[float, str, str]:
        """Sort key: the oldest fleet wins a contested pod, then namespace, then name."""
        return (_epoch(self.created), self.namespace, self.name)

    def admits(self, agent: AgentView, pod: PodView) -> Trust | None:
        """How well `agent`'s credentials back its claim on `pod`, one of this fleet's
        pods; None refuses it. A credential for something else refuses the claim
        whatever the mode: another pod's token, another fleet's token."""
        identity = agent.identity
        if (identity.pod_uid and identity.pod_uid != pod.uid) or (
            identity.fleet and identity.fleet != self.key
        ):
            return None
        mode = self.auth.mode
        if mode is AuthMode.SERVICE_ACCOUNT_TOKEN:
            return Trust.POD if identity.pod_uid and self._account_admitted(identity) else None
        proved = {
            AuthMode.NONE: bool(identity),
            AuthMode.TOKEN: bool(identity.fleet),
            AuthMode.CLIENT_CERTIFICATE: bool(self.auth.names & set(identity.certificate)),
        }[mode]
        if not proved:
            return Trust.CLAIMED if mode is AuthMode.NONE else None
        return Trust.POD if identity.pod_uid else Trust.FLEET

    def _account_admitted(self, identity: AgentIdentity) -> bool:
        namespace, _, name = identity.service_account.partition("/")
        return namespace == self.namespace and (not self.auth.names or name in self.auth.names)

    def selects(self, pod: PodView) -> bool:
        if pod.namespace != self.namespace:
            return False
        labels = pod.labels
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        return all(r.matches(labels) for r in self.match_expressions)

    @classmethod
    def from_label_selector(
        cls, namespace: str, name: str, created: str | float, selector: Mapping[str, Any]
    ) -> FleetSelector:
        """Build from a LabelSelector as the API returns it (matchLabels, matchExpressions)."""
        labels = selector.get("matchLabels") or {}
        exprs = selector.get("matchExpressions") or []
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise SelectorError("matchLabels must map label keys to string values")
        if not isinstance(exprs, list) or not all(isinstance(e, Mapping) for e in exprs):
            raise SelectorError("matchExpressions must be a list of {key, operator, values}")
        requirements: list[LabelRequirement] = []
        for expr in exprs:
            values = expr.get("values") or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise SelectorError(f"{expr.get('key')}: values must be a list of strings")
            requirements.append(
                LabelRequirement(
                    str(expr.get("key") or ""), str(expr.get("operator")), tuple(values)
                )
            )
        return cls(namespace, name, created, dict(labels), tuple(requirements))


@dataclass(frozen=True)
class Overlap:
    """A pod selected by several fleets; reported on each of them."""

    pod: str
    owner: str  # the fleet that got it
    fleets: tuple[str, ...]  # every fleet selecting it, in priority order (owner first)
    agent: str | None  # the agent on the pod, which follows the pod to the owner


@dataclass(frozen=True)
class FleetAssignment:
    """Pods and agents given to fleets, each to at most one. An agent goes with the pod it
    claimed, so a duplicate agent is still its pod's fleet's to configure and report."""

    mapping: MappingResult  # over all the pods and agents given
    fleets: tuple[str, ...]  # fleet keys in priority order
    fleet_of_pod: Mapping[str, str]
    fleet_of_agent: Mapping[str, str]
    overlaps: Mapping[str, tuple[Overlap, ...]]  # fleet key -> overlaps involving it
    unassigned_agents: tuple[str, ...]  # no pod, or a pod no fleet selects
    # Fleet key -> agents whose pod it selects but that lack the credential it requires
    # (not given to it).
    unauthenticated: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Fleet key -> its agents that hold their pod on their own word (AuthMode None).
    unverified: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def pods_of(self, fleet: str) -> tuple[str, ...]:
        return tuple(p for p, f in self.fleet_of_pod.items() if f == fleet)

    def agents_of(self, fleet: str) -> tuple[str, ...]:
        return tuple(u for u, f in self.fleet_of_agent.items() if f == fleet)

    def mapping_for(self, fleet: str) -> MappingResult:
        """One fleet's pods and agents, as `summarize` takes them."""
        return self.mapping.restrict(self.pods_of(fleet), self.agents_of(fleet))


def assign_fleets(
    fleets: Sequence[FleetSelector], pods: Sequence[PodView], agents: Sequence[AgentView]
) -> FleetAssignment:
    """Give each pod to the oldest fleet selecting it and each agent to its pod's fleet.

    An agent holds a pod of a fleet only as far as that fleet admits it
    (FleetSelector.admits); a refused agent belongs to no fleet and is listed in
    `unauthenticated` of the fleet whose pod it claimed. A fleet's token identifies the
    fleet: an agent that presented one belongs to that fleet whatever pod it claims (and
    holds none of another fleet's). Agents holding their pod on their own word are listed
    in `unverified`.

    Agents are mapped against all the pods given, not only selected ones, so an agent of a
    pod outside every fleet is recognised as such rather than matched by a weaker rule to a
    selected pod. Fleet keys must be unique (ValueError otherwise).
    """
    by_key = _by_unique_key(fleets, lambda f: f.key, "fleet")
    ordered = sorted(by_key.values(), key=lambda f: f.priority)
    by_namespace: dict[str, list[FleetSelector]] = defaultdict(list)
    for fleet in ordered:
        by_namespace[fleet.namespace].append(fleet)

    selecting_of: dict[str, list[str]] = {}
    for pod in pods:
        selecting = [f.key for f in by_namespace.get(pod.namespace, []) if f.selects(pod)]
        if selecting:
            selecting_of[pod.key] = selecting
    fleet_of_pod = {p: keys[0] for p, keys in selecting_of.items()}

    def admit(agent: AgentView, pod: PodView) -> Trust | None:
        owner = fleet_of_pod.get(pod.key)
        return admit_by_identity(agent, pod) if owner is None else by_key[owner].admits(agent, pod)

    mapping = map_agents(pods, agents, admit)
    overlaps: dict[str, list[Overlap]] = {f.key: [] for f in ordered}
    for pod_key, selecting in sorted(selecting_of.items()):
        if len(selecting) > 1:
            overlap = Overlap(
                pod_key, selecting[0], tuple(selecting), mapping.agent_of.get(pod_key)
            )
            for key in selecting:
                overlaps[key].append(overlap)

    fleet_of_agent: dict[str, str] = {}
    unauthenticated: dict[str, list[str]] = defaultdict(list)
    unverified: dict[str, list[str]] = defaultdict(list)
    for uid, agent in mapping.agents.items():
        if agent.identity.fleet in by_key:
            fleet_of_agent[uid] = agent.identity.fleet
            continue
        refused = mapping.refused.get(uid)
        if refused is not None:
            if (owner := fleet_of_pod.get(refused.pod)) is not None:
                unauthenticated[owner].append(uid)
            continue
        claim = mapping.claims.get(uid)
        owner = fleet_of_pod.get(claim.pod) if claim is not None else None
        if claim is None or owner is None:
            continue
        fleet_of_agent[uid] = owner
        if claim.trust is Trust.CLAIMED:
            unverified[owner].append(uid)
    return FleetAssignment(
        mapping=mapping,
        fleets=tuple(f.key for f in ordered),
        fleet_of_pod=fleet_of_pod,
        fleet_of_agent=fleet_of_agent,
        overlaps={k: tuple(v) for k, v in overlaps.items()},
        unassigned_agents=tuple(u for u in mapping.agents if u not in fleet_of_agent),
        unauthenticated={k: tuple(v) for k, v in unauthenticated.items()},
        unverified={k: tuple(v) for k, v in unverified.items()},
    )
