"""The server side of OpAMP as a state machine over plain data (sans-I/O).

Transports tell the core what happened — a WebSocket opened or closed, an AgentToServer
arrived (over WebSocket or plain HTTP), time passed, the desired configs changed — and
the core answers with the ServerToAgent messages to send and the events that changed an
agent's state. No sockets, no asyncio, no clock of its own: `now` is always passed in,
so every rule of the spec here is tested without I/O.

Rules implemented (spec sections in parentheses):
- every reply carries the server capabilities (ServerToAgent.capabilities);
- partial status reports are merged into the agent's full state; a sequence_num that is
  not exactly one more than the last, or a first message from an unknown agent without
  its description, is answered with ReportFullState (Agent Status Compression);
- instance_uid must be 16 bytes; when it is not, when the agent sets RequestInstanceUid,
  or when another live WebSocket connection holds it, the agent gets a new UUIDv7 through
  agent_identification (AgentToServer.instance_uid, ServerToAgent.agent_identification);
- AgentDisconnect ends the agent's session; a WebSocket close does too;
- an agent that reports heartbeats and is silent for `stale_after_heartbeats` intervals
  is marked stale (AgentState: CONNECTED, STALE, DISCONNECTED, set by the core alone);
- remote config is offered to agents that accept it until they report its hash;
- a heartbeat interval is offered, once per interval, to agents that accept OpAMP
  connection settings and heartbeat, with the URL they connected to as
  destination_endpoint (MUST be non-empty), only where that offer repeats their whole
  connection (opamp/endpoint.py); silence is judged by it once they report it APPLIED
  (OpAMPConnectionSettings.heartbeat_interval_seconds, ConnectionSettingsStatus);
- a hash-only AvailableComponents is answered with ReportAvailableComponents.

What one agent may make the server keep is bounded (AgentLimits): a description over its
caps refuses the message as too large; an effective config or component list over its
cap is kept as its hash only; an agent that never described itself is forgotten within
seconds; past `max_agents` records a new uid is told to come back later (UNAVAILABLE).
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from google.protobuf.message import Message

from opamp_operator.opamp import ids
from opamp_operator.opamp.configs import RemoteConfig, files_hash, files_of
from opamp_operator.opamp.endpoint import AgentEndpoint
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.proto import opamp_pb2 as pb

SERVER_CAPABILITIES = (
    pb.ServerCapabilities_AcceptsStatus
    | pb.ServerCapabilities_OffersRemoteConfig
    | pb.ServerCapabilities_AcceptsEffectiveConfig
    | pb.ServerCapabilities_OffersConnectionSettings
    | pb.ServerCapabilities_OffersPackages
    | pb.ServerCapabilities_AcceptsPackagesStatus
)
# An agent is offered a heartbeat interval only if it takes OpAMP connection settings and
# heartbeats: an offer is a reconnect for opampsupervisor, and worth one only then.
HEARTBEAT_OFFER_CAPABILITIES = (
    pb.AgentCapabilities_AcceptsOpAMPConnectionSettings | pb.AgentCapabilities_ReportsHeartbeat
)
# Sub-messages an agent may omit when unchanged (Agent Status Compression).
STATUS_FIELDS = (
    "agent_description",
    "health",
    "effective_config",
    "remote_config_status",
    "package_statuses",
    "custom_capabilities",
    "available_components",
    "connection_settings_status",
)


STATUS_BYTES = 64 * 1024
"""Health, package statuses, custom capabilities and connection settings status are
kept whole up to this each (serialized); past it only their top-level fields are: they
feed status, gates and the read API, and are never worth more (a component health map
or package list of megabytes is an agent's mistake or an attack)."""
_TEXT_CHARS = 1024


def _health_summary(new: Message) -> Message:
    assert isinstance(new, pb.ComponentHealth)
    return pb.ComponentHealth(
        healthy=new.healthy,
        start_time_unix_nano=new.start_time_unix_nano,
        last_error=new.last_error[:_TEXT_CHARS],
        status=new.status[:_TEXT_CHARS],
        status_time_unix_nano=new.status_time_unix_nano,
    )


def _packages_summary(new: Message) -> Message:
    assert isinstance(new, pb.PackageStatuses)
    return pb.PackageStatuses(
        server_provided_all_packages_hash=new.server_provided_all_packages_hash[:64],
        error_message=new.error_message[:_TEXT_CHARS],
    )


def _settings_summary(new: Message) -> Message:
    assert isinstance(new, pb.ConnectionSettingsStatus)
    return pb.ConnectionSettingsStatus(
        last_connection_settings_hash=new.last_connection_settings_hash[:64],
        status=new.status,
        error_message=new.error_message[:_TEXT_CHARS],
    )


_SMALL_STATUSES: dict[str, Callable[[Message], Message]] = {
    "health": _health_summary,
    "package_statuses": _packages_summary,
    "custom_capabilities": lambda new: pb.CustomCapabilities(),
    "connection_settings_status": _settings_summary,
}


class Transport(StrEnum):
    WEBSOCKET = "websocket"
    HTTP = "http"


ConnId = int


class AgentState(StrEnum):
    """Where an agent's session is; the core sets it at each transition and nothing else
    derives it."""

    CONNECTED = "connected"
    """Its session is open and it speaks within its heartbeat."""
    STALE = "stale"
    """Its session is open but it has been silent for `stale_after_heartbeats` intervals."""
    DISCONNECTED = "disconnected"
    """It said goodbye, or its WebSocket closed; the record is kept for a while."""


KiB = 1024
MiB = 1024 * KiB


def at_least_one(settings: object, *names: str) -> None:
    """Refuse a settings object whose named counts are below 1 (a limit of 0 would refuse
    everything, and read as "no limit" to whoever set it)."""
    for name in names:
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True)
class AgentLimits:
    """What one agent may make the server keep, and how many agents it keeps; each
    default is owned here. Sized for the chart's 2048 Mi: a Collector in Kubernetes
    describes itself in 20-40 attributes and a few KiB, reports a config of tens of KiB
    and a few hundred components."""

    max_agents: int = 20_000
    """Agent records kept. At the cap the oldest record no open WebSocket holds is
    forgotten first (never-described ones before the others); with none to forget, a
    new uid is answered UNAVAILABLE with retry_info. Twice the WebSocket limit, so a
    fleet that restarts (new uids while the old records wait to be forgotten) fits."""
    forget_undescribed_after_seconds: float = 15.0
    """An agent that has not sent its AgentDescription (a bare poll with a fresh uid) is
    forgotten this long after it was last seen, unless an open WebSocket holds it: such
    a record is asked for its full state on every message anyway."""
    max_attributes: int = 128
    """Identifying plus non-identifying attributes; more refuses the message (413, 1009)."""
    max_description_bytes: int = 64 * KiB
    """Serialized AgentDescription; larger refuses the message (413, 1009)."""
    max_effective_config_bytes: int = 1 * MiB
    """Serialized EffectiveConfig; a larger one is kept as its hash only (drift is still
    judged by hash; the read API shows no body), so the agent stays managed."""
    max_components: int = 1_000
    """AvailableComponents entries, sub-components included; more are kept as the hash."""
    max_kept_bytes: int = 128 * MiB
    """Effective configs and component lists kept, all agents together (serialized
    bytes): one that would take the total past it is kept as its hash only, as one over
    its own cap is. Without it, 10,000 agents at the 1 MiB cap are 10 GiB."""

    def __post_init__(self) -> None:
        at_least_one(
            self,
            "max_agents",
            "max_attributes",
            "max_description_bytes",
            "max_effective_config_bytes",
            "max_components",
        )
        if self.forget_undescribed_after_seconds <= 0:
            raise ValueError("forget_undescribed_after_seconds must be positive")


MAX_HEARTBEAT_SECONDS = 3600
"""The longest heartbeat interval offered (the CRD's and the fleets file's bound too)."""


@dataclass(frozen=True)
class CoreSettings:
    """The session core's tunables; each default is owned here."""

    default_heartbeat_seconds: float = 30.0
    """The heartbeat interval an agent is assumed to keep until it confirms an offer of
    another (opampsupervisor's and opamp-go's default is 30 s, the spec's advice)."""
    offer_heartbeat_seconds: int | None = None
    """The heartbeat interval offered to agents their desired source names none for
    (`DesiredConfigSource.heartbeat_for`); None or 0 offers nothing. Offered only where
    the offer is safe (`AgentEndpoint.repeatable`; docs/opamp-server.md)."""
    forget_after_seconds: float = 600.0
    """A disconnected or stale agent's record is dropped after this long."""
    stale_after_heartbeats: int = 3
    """Silent for this many heartbeat intervals: the agent is stale."""
    limits: AgentLimits = field(default_factory=AgentLimits)

    def __post_init__(self) -> None:
        seconds = self.offer_heartbeat_seconds
        if seconds is not None and not 0 <= seconds <= MAX_HEARTBEAT_SECONDS:
            raise ValueError(
                f"offer_heartbeat_seconds must be between 0 and {MAX_HEARTBEAT_SECONDS}"
            )


class HasAgentState:
    """connected / stale / live, read from `state`: the record and every view of it
    answer these the same way."""

    state: AgentState

    @property
    def connected(self) -> bool:
        """Its session is open (it may be stale)."""
        return self.state is not AgentState.DISCONNECTED

    @property
    def stale(self) -> bool:
        return self.state is AgentState.STALE

    @property
    def live(self) -> bool:
        """Connected and not stale."""
        return self.state is AgentState.CONNECTED


@dataclass
class AgentRecord(HasAgentState):
    """Everything the server knows about one agent: its merged full state and ours."""

    instance_uid: bytes
    transport: Transport
    connected_at: float
    last_seen: float
    peer: str = ""
    conn: ConnId | None = None
    sequence_num: int | None = None
    capabilities: int = 0
    flags: int = 0
    description: pb.AgentDescription | None = None
    health: pb.ComponentHealth | None = None
    effective_config: pb.EffectiveConfig | None = None
    effective_config_hash: bytes | None = None
    remote_config_status: pb.RemoteConfigStatus | None = None
    package_statuses: pb.PackageStatuses | None = None
    custom_capabilities: pb.CustomCapabilities | None = None
    available_components: pb.AvailableComponents | None = None
    # The server's digest of the components listed (never the agent's own hash, which
    # it may set to anything); b"" when it listed none.
    components_digest: bytes = b""
    connection_settings_status: pb.ConnectionSettingsStatus | None = None
    # The interval its silence is judged by (stale after `stale_after_heartbeats` of
    # them): the default until it confirms an offer (see ServerCore._offer_heartbeat).
    heartbeat_seconds: float = CoreSettings.default_heartbeat_seconds
    state: AgentState = AgentState.CONNECTED
    # When the core set `state` (None: not since the record was made). For DISCONNECTED,
    # when the agent left.
    state_since: float | None = None
    offered_config_hash: bytes | None = None
    # The aggregate hash of the packages last offered on this connection.
    offered_packages_hash: bytes | None = None
    # The heartbeat interval last offered (None: none yet) and the offer's hash; the
    # longest interval it may keep without having confirmed it (None: the default).
    offered_heartbeat_seconds: int | None = None
    offered_settings_hash: bytes | None = None
    heartbeat_bound: float | None = None
    # Whether it reported its connection settings status since the last offer that
    # replaced another: a status from before an offer of the same interval again (the
    # same hash) does not confirm it, and would drop longer intervals offered in between.
    settings_reported: bool = True
    # How its current connection (or HTTP request) reached the server, as the
    # transport saw it; None: not told.
    endpoint: AgentEndpoint | None = None
    # Who the transport authenticated the agent as; None: anonymous.
    identity: AgentIdentity | None = None
    # Drift remediation: offer the config again although the agent reports its hash,
    # and/or send a Restart command, at the next chance.
    reoffer_config: bool = False
    restart_requested: bool = False
    messages: int = 0
    # When tick() looks at this agent next (ServerCore._check_by); None: no check due.
    check_at: float | None = None
    # Sub-messages kept as their hash only: they were over AgentLimits.
    trimmed: frozenset[str] = frozenset()
    # Serialized bytes of the effective_config and available_components kept, counted
    # against AgentLimits.max_kept_bytes.
    config_bytes: int = 0
    components_bytes: int = 0
    # The fleet layer's view of this record and what it was built from (fleet/views.py
    # agent_view), so ticks and API reads rebuild only what changed (opaque to the core).
    view_memo: object = field(default=None, compare=False, repr=False)

    def can(self, capability: int) -> bool:
        return bool(self.capabilities & capability)

    @property
    def reported_config_hash(self) -> bytes:
        status = self.remote_config_status
        return status.last_remote_config_hash if status is not None else b""


class DesiredConfigSource(Protocol):
    """Where an agent's desired config comes from: the fleets file (`serve`) or the
    operator's state (`run`). After changing what it answers, call `desired_changed`."""

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None: ...

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        """The heartbeat interval to offer this agent: its fleet's; 0 offers nothing;
        None leaves it to `CoreSettings.offer_heartbeat_seconds`."""
        ...

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        """The top-level package to offer this agent (when it accepts packages); None
        offers nothing, and never takes a package away."""
        ...


class NoConfig:
    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        return None

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        return None

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        return None


class EventKind(StrEnum):
    CONNECTED = "connected"
    UPDATED = "updated"
    DISCONNECTED = "disconnected"
    STALE = "stale"
    FORGOTTEN = "forgotten"
    UID_ASSIGNED = "uid_assigned"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    instance_uid: bytes
    changed: frozenset[str] = frozenset()
    previous_uid: bytes | None = None


class Refusal(StrEnum):
    """Why the core did not take a message; the transport answers as the spec says."""

    TOO_LARGE = "agent_too_large"
    """Over a per-agent cap: HTTP 413, WebSocket close 1009."""
    FULL = "agents_full"
    """No room for another agent record: UNAVAILABLE with retry_info (HTTP 503 +
    Retry-After, WebSocket close 1013)."""


@dataclass
class Reply:
    """What the transport must do after a message: send `message`, maybe close. With a
    `refusal`, nothing of the message was kept and `message` says why."""

    message: pb.ServerToAgent
    events: list[Event] = field(default_factory=list)
    close: bool = False
    refusal: Refusal | None = None
    trimmed: list[str] = field(default_factory=list)
    """Sub-messages of this message kept as their hash only (over AgentLimits)."""


class _FullError(Exception):
    """No room for a new agent record."""


@dataclass
class _Conn:
    transport: Transport
    peer: str
    opened_at: float
    uid: bytes | None = None
    identity: AgentIdentity | None = None
    endpoint: AgentEndpoint | None = None


MESSAGE_KINDS = ("disconnect", "full_state", "status", "heartbeat")


def message_kind(msg: pb.AgentToServer) -> str:
    """What an AgentToServer is, for metrics: disconnect, full_state (it describes the
    agent), status (some status sub-message), or heartbeat (nothing but its identity)."""
    if msg.HasField("agent_disconnect"):
        return "disconnect"
    if msg.HasField("agent_description"):
        return "full_state"
    if any(msg.HasField(name) for name in STATUS_FIELDS):
        return "status"
    return "heartbeat"


def component_count(components: pb.AvailableComponents) -> int:
    """Every component and sub-component an AvailableComponents lists."""
    count = 0
    stack = list(components.components.values())
    while stack:
        details = stack.pop()
        count += 1
        stack.extend(details.sub_component_map.values())
    return count


def over_description_caps(msg: pb.AgentToServer, limits: AgentLimits) -> str | None:
    """Why the message's AgentDescription is too large to keep, or None."""
    if not msg.HasField("agent_description"):
        return None
    description = msg.agent_description
    count = len(description.identifying_attributes) + len(description.non_identifying_attributes)
    if count > limits.max_attributes:
        return (
            f"agent_description has {count} attributes, over the limit of {limits.max_attributes}"
        )
    size = description.ByteSize()
    if size > limits.max_description_bytes:
        return (
            f"agent_description is {size} bytes, over the limit of {limits.max_description_bytes}"
        )
    return None


def settings_hash(url: str, heartbeat_seconds: int) -> bytes:
    """ConnectionSettingsOffers.hash of an offer of `url` and an interval: the same in
    every server process, so an agent that reports it applied it is not offered it again
    after a restart."""
    return hashlib.sha256(b"opamp\0%s\0%d" % (url.encode(), heartbeat_seconds)).digest()


def _bare(msg: pb.ServerToAgent) -> bool:
    """Nothing but who we are: a command may ride on it."""
    return {f.name for f, _ in msg.ListFields()} <= {"capabilities", "instance_uid"}


def error_reply(
    kind: int, message: str, retry_after_seconds: float | None = None
) -> pb.ServerToAgent:
    """A ServerErrorResponse; with retry info when the server is shedding load."""
    msg = pb.ServerToAgent(capabilities=SERVER_CAPABILITIES)
    msg.error_response.type = kind  # type: ignore[assignment]
    msg.error_response.error_message = message
    if retry_after_seconds is not None:
        msg.error_response.retry_info.retry_after_nanoseconds = int(retry_after_seconds * 1e9)
    return msg


def components_digest(available: Message) -> bytes:
    """What the components an agent listed hash to, computed here: agents of one build
    share it (and so the parsed list, fleet/views.py); b"" for a list-less report."""
    if not isinstance(available, pb.AvailableComponents) or not available.components:
        return b""
    listed = pb.AvailableComponents()
    listed.components.MergeFrom(available.components)
    return hashlib.sha256(listed.SerializeToString(deterministic=True)).digest()


class ServerCore:
    """All agents' protocol state; one instance per server process."""

    def __init__(
        self,
        settings: CoreSettings | None = None,
        desired: DesiredConfigSource | None = None,
        new_uid: Callable[[], bytes] = ids.uuid7,
    ) -> None:
        self.settings = settings or CoreSettings()
        self.desired: DesiredConfigSource = desired or NoConfig()
        self._new_uid = new_uid
        # Set by the transport: called when `pending_offers` may have something to send.
        self.wake: Callable[[], None] = lambda: None
        self._agents: dict[bytes, AgentRecord] = {}
        self._conns: dict[ConnId, _Conn] = {}
        self._next_conn: ConnId = 1
        # Records to forget, best first, when a new agent arrives at max_agents; found by
        # one scan per tick at most, so a flood at the cap costs no scan per message.
        self._evictable: deque[bytes] = deque()
        self._evictable_fresh = False
        self._kept_bytes = 0
        # (when, tie-breaker, uid): each agent's next check by tick(); see _check_by.
        self._due: list[tuple[float, int, bytes]] = []
        self._due_seq = 0

    # ---- queries ---------------------------------------------------------------------

    @property
    def agents(self) -> Mapping[bytes, AgentRecord]:
        return self._agents

    def agent_on(self, conn: ConnId) -> AgentRecord | None:
        c = self._conns.get(conn)
        return self._agents.get(c.uid) if c is not None and c.uid is not None else None

    def websocket_agents(self) -> Iterator[tuple[ConnId, AgentRecord]]:
        """The agents of the connections open when it starts, each looked up as it is
        reached: a caller may yield to its loop between agents (offers_to_push), and a
        connection closed or an agent gone meanwhile is skipped."""
        for conn in list(self._conns):
            c = self._conns.get(conn)
            agent = self._agents.get(c.uid) if c is not None and c.uid is not None else None
            if agent is not None:
                yield conn, agent

    # ---- server-initiated ------------------------------------------------------------

    def reoffer_config(self, uid: bytes) -> bool:
        """Offer the desired config again even though the agent reports having applied it
        (drift remediation). False when the agent cannot take remote config."""
        return self._request(uid, pb.AgentCapabilities_AcceptsRemoteConfig, "reoffer_config")

    def request_restart(self, uid: bytes) -> bool:
        """Send the agent a Restart command. False when it does not accept one."""
        return self._request(uid, pb.AgentCapabilities_AcceptsRestartCommand, "restart_requested")

    def _request(self, uid: bytes, capability: int, flag: str) -> bool:
        """Raise one of the agent's request flags, if it has the capability to act on it,
        and wake the transport to send it."""
        agent = self._agents.get(uid)
        if agent is None or not agent.can(capability):
            return False
        setattr(agent, flag, True)
        self.wake()
        return True

    def desired_changed(self) -> None:
        """What some agents should run may have changed: the transport flushes
        `pending_offers` soon. Callers change the desired source, then say so here."""
        self.wake()

    # ---- transport events ------------------------------------------------------------

    def open(
        self,
        now: float,
        peer: str = "",
        identity: AgentIdentity | None = None,
        endpoint: AgentEndpoint | None = None,
    ) -> ConnId:
        """A WebSocket was accepted; messages on it are fed with `receive(..., conn=...)`.
        `identity` is who the transport authenticated the peer as, if anyone; `endpoint`
        how it reached the server."""
        conn = self._next_conn
        self._next_conn += 1
        self._conns[conn] = _Conn(
            Transport.WEBSOCKET, peer, now, identity=identity, endpoint=endpoint
        )
        return conn

    def close(self, conn: ConnId, now: float) -> list[Event]:
        c = self._conns.pop(conn, None)
        if c is None or c.uid is None:
            return []
        agent = self._agents.get(c.uid)
        if agent is None or agent.conn != conn:
            return []
        return [self._disconnect(agent, now)]

    def receive(
        self,
        msg: pb.AgentToServer,
        now: float,
        conn: ConnId | None = None,
        peer: str = "",
        identity: AgentIdentity | None = None,
        *,
        endpoint: AgentEndpoint | None = None,
    ) -> Reply:
        """An AgentToServer over WebSocket (`conn` given) or plain HTTP (`conn` None, and
        `identity` and `endpoint` the request's authenticated identity and endpoint)."""
        transport = Transport.WEBSOCKET if conn is not None else Transport.HTTP
        if conn is not None:
            identity = self._conns[conn].identity
            endpoint = self._conns[conn].endpoint
        too_large = over_description_caps(msg, self.settings.limits)
        if too_large is not None:
            return Reply(
                error_reply(pb.ServerErrorResponseType_BadRequest, too_large),
                refusal=Refusal.TOO_LARGE,
            )
        reply = pb.ServerToAgent(capabilities=SERVER_CAPABILITIES)
        try:
            agent, full_state_needed, events = self._identify(
                msg, now, conn, transport, reply, identity=identity
            )
        except _FullError:
            return Reply(
                error_reply(
                    pb.ServerErrorResponseType_Unavailable,
                    f"the server keeps {self.settings.limits.max_agents} agents and has no "
                    "room for another",
                ),
                refusal=Refusal.FULL,
            )
        agent.identity = identity
        agent.endpoint = endpoint
        if conn is not None:
            agent.peer = peer or self._conns[conn].peer
        elif peer:
            agent.peer = peer
        agent.last_seen = now
        agent.messages += 1
        agent.sequence_num = msg.sequence_num
        agent.flags = msg.flags

        changed, trimmed = self._merge(agent, msg)
        if changed:
            events.append(Event(EventKind.UPDATED, agent.instance_uid, frozenset(changed)))
        if full_state_needed:
            reply.flags |= pb.ServerToAgentFlags_ReportFullState
        # Asked of a hash-only list the agent sent, never of one kept as its hash here.
        if "available_components" in changed and not msg.available_components.components:
            reply.flags |= pb.ServerToAgentFlags_ReportAvailableComponents

        if msg.HasField("agent_disconnect"):
            events.append(self._disconnect(agent, now))
            return Reply(reply, events, close=transport is Transport.WEBSOCKET, trimmed=trimmed)
        if not self._add_offers(agent, reply) and _bare(reply):
            self._add_command(agent, reply)
        self._check_by(agent, self._next_check(agent))
        return Reply(reply, events, trimmed=trimmed)

    def _identify(
        self,
        msg: pb.AgentToServer,
        now: float,
        conn: ConnId | None,
        transport: Transport,
        reply: pb.ServerToAgent,
        *,
        identity: AgentIdentity | None,
    ) -> tuple[AgentRecord, bool, list[Event]]:
        """The agent's record (new, returning or current), whether its full state must be
        requested, and the identity events; a new uid goes into `reply` when needed.

        A uid already known under another authenticated identity is not taken over: the
        newcomer gets a uid of its own, so one fleet's token cannot speak for another's
        agent."""
        events: list[Event] = []
        uid = msg.instance_uid
        agent = self._agents.get(uid)
        if (
            not ids.valid_uid(uid)
            or msg.flags & pb.AgentToServerFlags_RequestInstanceUid
            or self._held_elsewhere(agent, conn)
            or (agent is not None and agent.identity != identity and agent.messages > 0)
        ):
            new = self._new_uid()
            reply.agent_identification.new_instance_uid = new
            events.append(Event(EventKind.UID_ASSIGNED, new, previous_uid=uid))
            uid, agent = new, None
        reply.instance_uid = uid

        if agent is None:
            self._make_room()
            agent = AgentRecord(
                uid, transport, now, now, heartbeat_seconds=self.settings.default_heartbeat_seconds
            )
            self._agents[uid] = agent
            # An agent we never saw must describe itself; a compressed first message means
            # we lost its state (e.g. we restarted).
            full_state_needed = not msg.HasField("agent_description")
        else:
            full_state_needed = not self._in_sequence(agent, msg)
        if agent.state is AgentState.DISCONNECTED or agent.messages == 0:
            agent.state, agent.state_since = AgentState.CONNECTED, now
            agent.connected_at, agent.transport = now, transport
            agent.offered_config_hash = agent.offered_packages_hash = None
            events.append(Event(EventKind.CONNECTED, uid))
        elif agent.state is AgentState.STALE:
            agent.state, agent.state_since = AgentState.CONNECTED, now
            events.append(Event(EventKind.CONNECTED, uid))
        agent.transport = transport
        if conn is not None:
            previous = self._conns[conn].uid
            gone = self._agents.get(previous) if previous not in (None, uid) else None
            if gone is not None and gone.conn == conn:
                # The connection now speaks for another uid: the old one has left it.
                events.append(self._disconnect(gone, now))
            self._conns[conn].uid = uid
            agent.conn = conn
        else:
            agent.conn = None
        return agent, full_state_needed, events

    def tick(self, now: float) -> list[Event]:
        """Mark silent agents stale and forget long-gone and never-described ones; call
        every few seconds. Only the agents whose check is due are looked at (a heap of
        deadlines): scanning every agent on every tick cost 16 % of a 16,000-agent
        server's CPU."""
        events: list[Event] = []
        checked: list[AgentRecord] = []
        due = self._due
        while due and due[0][0] <= now:
            when, _, uid = heapq.heappop(due)
            agent = self._agents.get(uid)
            if agent is None or agent.check_at != when:
                continue  # forgotten, or a newer check replaced this one
            agent.check_at = None
            event = self._check(agent, now)
            if event is not None:
                events.append(event)
            if event is None or event.kind is not EventKind.FORGOTTEN:
                checked.append(agent)
        # Rescheduled after the loop: a deadline equal to `now` waits for the next tick.
        for agent in checked:
            self._check_by(agent, self._next_check(agent))
        self._evictable_fresh = False
        return events

    def _check(self, agent: AgentRecord, now: float) -> Event | None:
        """What time alone does to one agent: forget it, mark it stale, or nothing."""
        if (
            not self._held(agent)
            and agent.description is None
            and now - agent.last_seen > self.settings.limits.forget_undescribed_after_seconds
        ):
            return self._forget(agent)
        if agent.state is not AgentState.CONNECTED:
            if now - self._gone_since(agent) > self.settings.forget_after_seconds:
                return self._forget(agent)
            return None
        stale_after = self._stale_after(agent)
        if stale_after is not None and now - agent.last_seen > stale_after:
            agent.state, agent.state_since = AgentState.STALE, now
            return Event(EventKind.STALE, agent.instance_uid)
        return None

    def _next_check(self, agent: AgentRecord) -> float | None:
        """When time alone could next change this agent, if no message comes; None when
        only a message or a close can (a WebSocket agent that reports no heartbeat)."""
        times: list[float] = []
        if not self._held(agent) and agent.description is None:
            times.append(agent.last_seen + self.settings.limits.forget_undescribed_after_seconds)
        if agent.state is not AgentState.CONNECTED:
            times.append(self._gone_since(agent) + self.settings.forget_after_seconds)
        else:
            stale_after = self._stale_after(agent)
            if stale_after is not None:
                times.append(agent.last_seen + stale_after)
        return min(times) if times else None

    def _check_by(self, agent: AgentRecord, when: float | None) -> None:
        """Make sure the agent is checked no later than `when`."""
        if when is None or (agent.check_at is not None and agent.check_at <= when):
            return
        agent.check_at = when
        self._due_seq += 1
        heapq.heappush(self._due, (when, self._due_seq, agent.instance_uid))

    def _stale_after(self, agent: AgentRecord) -> float | None:
        """Seconds of silence after which the agent is stale; None: never (it reports no
        heartbeat over a WebSocket, so silence says nothing)."""
        if agent.can(pb.AgentCapabilities_ReportsHeartbeat) or agent.transport is Transport.HTTP:
            return self.settings.stale_after_heartbeats * agent.heartbeat_seconds
        return None

    @staticmethod
    def _gone_since(agent: AgentRecord) -> float:
        """Disconnected: since it left; stale: since it was last seen."""
        if agent.state is AgentState.DISCONNECTED and agent.state_since is not None:
            return agent.state_since
        return agent.last_seen

    def _forget(self, agent: AgentRecord) -> Event:
        self._drop(agent)
        return Event(EventKind.FORGOTTEN, agent.instance_uid)

    def _drop(self, agent: AgentRecord) -> None:
        del self._agents[agent.instance_uid]
        self._kept_bytes -= agent.config_bytes + agent.components_bytes

    def _find_evictable(self) -> None:
        """The records to forget, best first, when a new agent arrives at max_agents:
        never-described ones by last message, then gone ones by when they left. One scan
        per tick at most, and only at the cap."""
        evictable: list[tuple[bool, float, bytes]] = []
        for uid, agent in self._agents.items():
            if self._held(agent):
                continue
            if agent.description is None:
                evictable.append((False, agent.last_seen, uid))
            elif agent.state is not AgentState.CONNECTED:
                evictable.append((True, self._gone_since(agent), uid))
        evictable.sort()
        self._evictable = deque(uid for _, _, uid in evictable)
        self._evictable_fresh = True

    def pending_offers(self) -> list[tuple[ConnId, pb.ServerToAgent]]:
        """Messages to push now to WebSocket agents whose desired config changed.

        HTTP agents get theirs in the reply to their next poll.
        """
        return list(self.offers_to_push())

    def offers_to_push(self) -> Iterator[tuple[ConnId, pb.ServerToAgent]]:
        """`pending_offers`, made one agent at a time: a transport may yield to its loop
        between agents (a change reaching 10,000 agents took 0.17 s to build, more to
        send). One whose desired config changes again meanwhile is woken for again."""
        for conn, agent in self.websocket_agents():
            if agent.state is AgentState.DISCONNECTED:
                continue
            msg = pb.ServerToAgent(instance_uid=agent.instance_uid)
            if self._add_offers(agent, msg):
                yield conn, msg
            command = pb.ServerToAgent(instance_uid=agent.instance_uid)
            if self._add_command(agent, command):
                yield conn, command

    # ---- internals -------------------------------------------------------------------

    def _held(self, agent: AgentRecord) -> bool:
        """An open WebSocket speaks for this agent."""
        return agent.conn is not None and agent.conn in self._conns

    def _make_room(self) -> None:
        """Before a new record: at max_agents, forget the best record to forget, or raise
        _FullError when there is none."""
        while len(self._agents) >= self.settings.limits.max_agents:
            if not self._evictable:
                if self._evictable_fresh:
                    raise _FullError
                self._find_evictable()
                continue
            uid = self._evictable.popleft()
            agent = self._agents.get(uid)
            if agent is None or self._held(agent):
                continue
            if agent.description is not None and agent.state is AgentState.CONNECTED:
                continue  # described and back since it was found
            self._drop(agent)

    def _held_elsewhere(self, agent: AgentRecord | None, conn: ConnId | None) -> bool:
        """Another live WebSocket connection already speaks for this uid."""
        if agent is None or agent.state is AgentState.DISCONNECTED or agent.conn is None:
            return False
        return agent.conn != conn and agent.conn in self._conns

    @staticmethod
    def _in_sequence(agent: AgentRecord, msg: pb.AgentToServer) -> bool:
        return agent.sequence_num is not None and msg.sequence_num == agent.sequence_num + 1

    def _merge(self, agent: AgentRecord, msg: pb.AgentToServer) -> tuple[list[str], list[str]]:
        """Replace each sub-message the agent sent; keep the rest (status compression).
        Returns what changed and what was kept as its hash only (over AgentLimits)."""
        changed: list[str] = []
        trimmed: list[str] = []
        if msg.capabilities and msg.capabilities != agent.capabilities:
            agent.capabilities = msg.capabilities
            changed.append("capabilities")
        # A status reported, even unchanged, is about the offers made so far.
        agent.settings_reported |= msg.HasField("connection_settings_status")
        for name in STATUS_FIELDS:
            if not msg.HasField(name):
                continue
            new = getattr(msg, name)
            attr = "description" if name == "agent_description" else name
            kept = self._bounded(name, new, agent)
            stand_in = kept is not new
            if stand_in:
                trimmed.append(name)
            old = getattr(agent, attr)
            config_hash = None
            if old is not None and old == kept:
                if not stand_in and name not in agent.trimmed:
                    continue  # the usual case: unchanged
                if name != "effective_config":
                    continue  # the same hash-only stand-in
                # Two stand-ins are equal: their configs may not be.
                config_hash = files_hash(files_of(new.config_map))
                if config_hash == agent.effective_config_hash:
                    continue
            elif name == "effective_config":
                config_hash = files_hash(files_of(new.config_map))
            copy = type(kept)()
            copy.CopyFrom(kept)
            setattr(agent, attr, copy)
            changed.append(attr)
            agent.trimmed = agent.trimmed | {name} if stand_in else agent.trimmed - {name}
            if config_hash is not None:
                agent.effective_config_hash = config_hash
            if name == "effective_config":
                self._keep(agent, "config_bytes", copy.ByteSize())
            if name == "available_components":
                agent.components_digest = components_digest(copy)
                self._keep(agent, "components_bytes", copy.ByteSize())
        return changed, trimmed

    def _bounded(self, name: str, new: Message, agent: AgentRecord) -> Message:
        """`new`, or the stand-in kept for it when it is over its cap or would take the
        total kept past max_kept_bytes: an empty EffectiveConfig (its hash is computed
        from the real one) or an AvailableComponents with its hash only."""
        limits = self.settings.limits
        if name == "effective_config":
            size = new.ByteSize()
            if size > limits.max_effective_config_bytes or not self._room_for(
                size - agent.config_bytes
            ):
                return pb.EffectiveConfig()
        if isinstance(new, pb.AvailableComponents) and (
            component_count(new) > limits.max_components
            or not self._room_for(new.ByteSize() - agent.components_bytes)
        ):
            return pb.AvailableComponents(hash=new.hash)
        if name in _SMALL_STATUSES and new.ByteSize() > STATUS_BYTES:
            return _SMALL_STATUSES[name](new)
        return new

    @property
    def kept_bytes(self) -> int:
        """Effective configs and component lists kept, all agents (max_kept_bytes)."""
        return self._kept_bytes

    def _room_for(self, more: int) -> bool:
        return self._kept_bytes + more <= self.settings.limits.max_kept_bytes

    def _keep(self, agent: AgentRecord, attr: str, size: int) -> None:
        self._kept_bytes += size - getattr(agent, attr)
        setattr(agent, attr, size)

    def _add_offers(self, agent: AgentRecord, msg: pb.ServerToAgent) -> bool:
        """Put the remote config and heartbeat offers this agent still needs into `msg`."""
        added = False
        desired = None
        if agent.can(pb.AgentCapabilities_AcceptsRemoteConfig):
            desired = self.desired.config_for(agent)
        # WebSocket delivery is reliable: offer once per connection. An HTTP reply may be
        # lost, so repeat until the agent reports the hash.
        if desired is not None and (
            agent.reoffer_config
            or (
                agent.reported_config_hash != desired.hash
                and (agent.transport is Transport.HTTP or agent.offered_config_hash != desired.hash)
            )
        ):
            msg.remote_config.CopyFrom(desired.to_proto())
            agent.offered_config_hash = desired.hash
            agent.reoffer_config = False
            added = True
        if agent.can(pb.AgentCapabilities_AcceptsPackages):
            added = self._offer_package(agent, msg) or added
        if agent.capabilities & HEARTBEAT_OFFER_CAPABILITIES == HEARTBEAT_OFFER_CAPABILITIES:
            added = self._offer_heartbeat(agent, msg) or added
        elif agent.offered_heartbeat_seconds is not None:
            self._judge_heartbeat(agent)
        return added

    def _offer_package(self, agent: AgentRecord, msg: pb.ServerToAgent) -> bool:
        """Offer the agent's package until it reports the offer's aggregate hash (then
        it has it, is installing it, or failed to: no offer loop), as the config is
        offered: once per WebSocket connection, in every HTTP reply until then."""
        offer = self.desired.package_for(agent)
        if offer is None:
            return False
        statuses = agent.package_statuses
        reported = statuses.server_provided_all_packages_hash if statuses is not None else b""
        if reported == offer.all_packages_hash or (
            agent.transport is Transport.WEBSOCKET
            and agent.offered_packages_hash == offer.all_packages_hash
        ):
            return False
        msg.packages_available.CopyFrom(offer.to_proto())
        agent.offered_packages_hash = offer.all_packages_hash
        return True

    def _offer_heartbeat(self, agent: AgentRecord, msg: pb.ServerToAgent) -> bool:
        """Offer the heartbeat interval the desired source (or the default) names for
        this agent, once per interval, if the offer can repeat its connection: the
        OpAMPConnectionSettings carry the URL it connected to and nothing else, and
        opampsupervisor reconnects with exactly what an offer carries (opamp/endpoint.py).
        Never offered again for the same interval: the supervisor reconnects on each
        offer, and would on each re-offer after it."""
        seconds = None
        endpoint = agent.endpoint
        if endpoint is not None and endpoint.repeatable:
            seconds = self.desired.heartbeat_for(agent)
            if seconds is None:
                seconds = self.settings.offer_heartbeat_seconds
        if not seconds or seconds == agent.offered_heartbeat_seconds:
            self._judge_heartbeat(agent)
            return False
        assert endpoint is not None
        first = agent.offered_heartbeat_seconds is None
        digest = settings_hash(endpoint.url, seconds)
        agent.offered_heartbeat_seconds, agent.offered_settings_hash = seconds, digest
        agent.settings_reported = first
        agent.heartbeat_bound = max(self._heartbeat_bound(agent), float(seconds))
        self._judge_heartbeat(agent)
        if first and self._confirmed(agent):
            return False  # it runs this very offer already (made before we restarted)
        offer = msg.connection_settings
        offer.hash = digest
        offer.opamp.destination_endpoint = endpoint.url
        offer.opamp.heartbeat_interval_seconds = seconds
        return True

    def _heartbeat_bound(self, agent: AgentRecord) -> float:
        """The longest interval the agent may keep: the default, or longer offers it has
        not confirmed (or lost since, by reconnecting)."""
        bound = agent.heartbeat_bound
        default = self.settings.default_heartbeat_seconds
        return default if bound is None else max(bound, default)

    @staticmethod
    def _confirmed(agent: AgentRecord) -> bool:
        """The agent reports, on its current connection, that it applied the last offer
        (ConnectionSettingsStatus APPLIED with its hash; ReportsConnectionSettingsStatus)."""
        status = agent.connection_settings_status
        return (
            agent.settings_reported
            and status is not None
            and status.status == pb.ConnectionSettingsStatuses_APPLIED
            and status.last_connection_settings_hash == agent.offered_settings_hash
        )

    def _judge_heartbeat(self, agent: AgentRecord) -> None:
        """Set the interval the agent's silence is judged by: the offered one once it
        confirms it, else the longest it may keep, so an agent that ignored, refused or
        lost an offer is never stale early (opamp-go applies an offered interval even
        when it reports the offer FAILED)."""
        offered = agent.offered_heartbeat_seconds
        if offered is None:
            return
        judged_by = agent.heartbeat_seconds
        if self._confirmed(agent):
            agent.heartbeat_seconds = float(offered)
            agent.heartbeat_bound = max(float(offered), self.settings.default_heartbeat_seconds)
        else:
            agent.heartbeat_seconds = self._heartbeat_bound(agent)
        if agent.heartbeat_seconds < judged_by:
            self._check_by(agent, self._next_check(agent))  # its silence counts sooner

    @staticmethod
    def _add_command(agent: AgentRecord, msg: pb.ServerToAgent) -> bool:
        """A requested command, in a message of its own: the spec says an agent ignores
        every other field of a ServerToAgent that carries a command."""
        if not agent.restart_requested:
            return False
        msg.command.type = pb.CommandType_Restart
        agent.restart_requested = False
        return True

    def _disconnect(self, agent: AgentRecord, now: float) -> Event:
        agent.state, agent.state_since = AgentState.DISCONNECTED, now
        agent.conn = None
        # What it confirmed held for that connection: a restarted agent may have lost
        # an offered interval. Clients that report it send it again when they return.
        agent.connection_settings_status = None
        self._check_by(agent, self._next_check(agent))
        return Event(EventKind.DISCONNECTED, agent.instance_uid)
