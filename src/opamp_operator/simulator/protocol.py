"""One simulated agent's side of OpAMP, without I/O.

`AgentCore` decides what the next AgentToServer carries and how a ServerToAgent changes
the agent; the transports in `agent.py` only move bytes and keep time. Time is passed in
(`now`, seconds on any monotonic clock) so every rule here is testable without a loop.
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from opamp_operator.opamp import wire
from opamp_operator.opamp.proto import anyvalue_pb2 as av
from opamp_operator.opamp.proto import opamp_pb2 as pb

CAPABILITIES = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_AcceptsRemoteConfig
    | pb.AgentCapabilities_ReportsEffectiveConfig
    | pb.AgentCapabilities_ReportsRemoteConfig
    | pb.AgentCapabilities_ReportsHealth
    | pb.AgentCapabilities_ReportsHeartbeat
    | pb.AgentCapabilities_AcceptsOpAMPConnectionSettings
    | pb.AgentCapabilities_ReportsAvailableComponents
)

# what an agent that accepts packages (AgentOptions.accept_packages) declares on top
PACKAGE_CAPABILITIES = (
    pb.AgentCapabilities_AcceptsPackages | pb.AgentCapabilities_ReportsPackageStatuses
)

INSTALLED = pb.PackageStatusEnum_Installed
INSTALL_FAILED = pb.PackageStatusEnum_InstallFailed
DOWNLOADING = pb.PackageStatusEnum_Downloading
TOP_LEVEL = pb.PackageType_TopLevel

UNSET = pb.RemoteConfigStatuses_UNSET
APPLIED = pb.RemoteConfigStatuses_APPLIED
APPLYING = pb.RemoteConfigStatuses_APPLYING
FAILED = pb.RemoteConfigStatuses_FAILED

# (file name, body, content type), sorted by name: immutable, hashable, shareable by agents.
ConfigFiles = tuple[tuple[str, bytes, str], ...]

DEFAULT_LOCAL_CONFIG: ConfigFiles = (
    (
        "",
        b"receivers:\n  otlp:\n    protocols:\n      grpc: {}\n"
        b"exporters:\n  debug: {}\n"
        b"service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n"
        b"      exporters: [debug]\n",
        "text/yaml",
    ),
)


class Part(enum.IntFlag):
    """The parts of status an AgentToServer can carry; unchanged parts are left out."""

    DESCRIPTION = enum.auto()
    HEALTH = enum.auto()
    EFFECTIVE_CONFIG = enum.auto()
    REMOTE_CONFIG_STATUS = enum.auto()
    COMPONENTS_HASH = enum.auto()
    COMPONENTS_FULL = enum.auto()
    HEARTBEAT = enum.auto()
    PACKAGE_STATUSES = enum.auto()


FULL_STATE = (
    Part.DESCRIPTION
    | Part.HEALTH
    | Part.EFFECTIVE_CONFIG
    | Part.REMOTE_CONFIG_STATUS
    | Part.COMPONENTS_HASH
    | Part.PACKAGE_STATUSES
)


def uuid7(unix_ms: int | None = None, random_bytes: bytes | None = None) -> bytes:
    """A 16-byte UUIDv7 (48-bit millisecond timestamp, version 7, RFC 4122 variant)."""
    ms = int(time.time() * 1000) if unix_ms is None else unix_ms
    rand = os.urandom(10) if random_bytes is None else random_bytes
    if len(rand) != 10:
        raise ValueError("uuid7 needs 10 random bytes")
    raw = bytearray((ms & ((1 << 48) - 1)).to_bytes(6, "big") + rand)
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return bytes(raw)


def uid_text(uid: bytes) -> str:
    """The canonical string form, as in the OpAMP-Instance-UID header."""
    return str(uuid.UUID(bytes=uid)) if len(uid) == 16 else uid.hex()


def backoff_delay(failures: int, initial: float, maximum: float, jitter: float) -> float:
    """Full-jitter exponential backoff: `jitter` (0..1) of min(maximum, initial * 2**failures).

    The first retry after a dropped connection may come at once, as the spec asks, while
    thousands of agents that lost the same server spread out instead of arriving together.
    """
    cap = min(maximum, initial * (1 << min(max(failures, 0), 62)))
    return max(0.0, min(1.0, jitter)) * cap


def freeze_config(config: pb.AgentConfigMap) -> ConfigFiles:
    return tuple(
        sorted((name, bytes(f.body), f.content_type) for name, f in config.config_map.items())
    )


def decide_remote_config(files: ConfigFiles, fail_text: bytes | None) -> str | None:
    """None when the config applies, else the error the agent reports with FAILED."""
    if not fail_text:
        return None
    for name, body, _ in files:
        if fail_text in body:
            shown = name or "(unnamed)"
            text = fail_text.decode(errors="replace")
            return f"simulated failure: config file {shown} contains {text!r}"
    return None


def _kv(key: str, value: str) -> av.KeyValue:
    return av.KeyValue(key=key, value=av.AnyValue(string_value=value))


def _build_components() -> pb.AvailableComponents:
    kinds = {
        "receivers": ["otlp", "hostmetrics"],
        "processors": ["batch", "memory_limiter"],
        "exporters": ["debug", "otlp", "otlphttp"],
        "extensions": ["health_check", "opamp"],
    }
    components = pb.AvailableComponents()
    for kind, types in kinds.items():
        details = components.components[kind]
        for name in types:
            details.sub_component_map[name].metadata.append(
                _kv("code.namespace", f"go.opentelemetry.io/collector/{kind}/{name}")
            )
    components.hash = hashlib.sha256(components.SerializeToString(deterministic=True)).digest()
    return components


COMPONENTS = _build_components()


@dataclass(frozen=True)
class AgentOptions:
    """What every agent of one simulation shares; per-agent values derive from the index."""

    pod_prefix: str = "sim-agent"
    namespace: str = "default"
    service_name: str = "otelcol-sim"
    heartbeat: float | None = 30.0
    fail_text: bytes | None = None
    report_applying: bool = False
    apply_delay: float = 0.0
    accept_packages: bool = False
    service_version: str | None = None
    """The identifying service.version reported until a top-level package replaces it
    (None: not reported)."""
    local_config: ConfigFiles = DEFAULT_LOCAL_CONFIG
    # received configs, interned so 10,000 agents that apply one config hold one copy
    config_store: dict[ConfigFiles, ConfigFiles] = field(default_factory=dict, compare=False)

    def intern(self, files: ConfigFiles) -> ConfigFiles:
        return self.config_store.setdefault(files, files)

    @property
    def capabilities(self) -> int:
        return CAPABILITIES | (PACKAGE_CAPABILITIES if self.accept_packages else 0)


@dataclass(frozen=True, slots=True)
class PackageOffer:
    """One offered package the agent is to fetch: what the download and the install need."""

    name: str
    type: int
    version: str
    hash: bytes
    url: str
    content_hash: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class PackageRecord:
    """One package as the agent reports it in PackageStatuses: what it has, what it was
    last offered and how installing that went."""

    has_version: str = ""
    has_hash: bytes = b""
    offered: PackageOffer | None = None
    status: int = INSTALLED
    error: str = ""


def package_offers(available: pb.PackagesAvailable) -> dict[str, PackageOffer]:
    return {
        name: PackageOffer(
            name=name,
            type=pkg.type,
            version=pkg.version,
            hash=pkg.hash,
            url=pkg.file.download_url,
            content_hash=pkg.file.content_hash,
            headers=tuple((h.key, h.value) for h in pkg.file.headers.headers),
        )
        for name, pkg in available.packages.items()
    }


def content_hash_error(offer: PackageOffer, digest: bytes) -> str | None:
    """None when the downloaded file's SHA-256 is the offer's content_hash."""
    if digest == offer.content_hash:
        return None
    return (
        f"content hash mismatch: the file from {offer.url} has sha256 {digest.hex()}, "
        f"the offer's content_hash is {offer.content_hash.hex()}"
    )


@dataclass(frozen=True, slots=True)
class FullStateAcked:
    """The server answered the first full status report of this connection."""


@dataclass(frozen=True, slots=True)
class ConfigOffered:
    config_hash: bytes


@dataclass(frozen=True, slots=True)
class ConfigReported:
    """A final remote config status (APPLIED or FAILED) reached the server."""

    config_hash: bytes
    status: int
    error_message: str


@dataclass(frozen=True, slots=True)
class InstanceUidChanged:
    old: bytes
    new: bytes


@dataclass(frozen=True, slots=True)
class HeartbeatChanged:
    seconds: float | None


@dataclass(frozen=True, slots=True)
class ServerError:
    type: int
    message: str


@dataclass(frozen=True, slots=True)
class PackagesOffered:
    """A PackagesAvailable named packages to fetch; the transport downloads each."""

    downloads: tuple[PackageOffer, ...]


@dataclass(frozen=True, slots=True)
class PackageInstalled:
    offer: PackageOffer


@dataclass(frozen=True, slots=True)
class PackageInstallFailed:
    offer: PackageOffer
    error: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The server sent something this agent cannot use; the message says what."""

    message: str


Event = (
    FullStateAcked
    | ConfigOffered
    | ConfigReported
    | InstanceUidChanged
    | HeartbeatChanged
    | ServerError
    | ProtocolError
    | PackagesOffered
    | PackageInstalled
    | PackageInstallFailed
)


@dataclass(slots=True)
class Reaction:
    """What one ServerToAgent did. `throttled`: disconnect and wait `retry_after` seconds
    (None: use backoff) before the next attempt, as the server is Unavailable."""

    events: list[Event] = field(default_factory=list)
    throttled: bool = False
    retry_after: float | None = None


class AgentCore:
    """The state of one agent and the OpAMP rules it follows, over plain data."""

    __slots__ = (
        "_apply_due",
        "_apply_error",
        "_apply_files",
        "_awaiting_full_ack",
        "_full_state_seq",
        "_last_sent",
        "_pending",
        "_status_reported",
        "_status_seq",
        "capabilities",
        "effective",
        "heartbeat",
        "index",
        "instance_uid",
        "options",
        "original_uid",
        "packages",
        "packages_hash",
        "poll_fallback",
        "remote_error",
        "remote_hash",
        "remote_status",
        "sequence_num",
        "server_packages_hash",
        "started_unix_nano",
        "version",
    )

    def __init__(
        self,
        index: int,
        options: AgentOptions,
        instance_uid: bytes | None = None,
        started_unix_nano: int | None = None,
    ) -> None:
        self.index = index
        self.options = options
        self.instance_uid = uuid7() if instance_uid is None else instance_uid
        self.original_uid = self.instance_uid
        self.started_unix_nano = time.time_ns() if started_unix_nano is None else started_unix_nano
        self.sequence_num = 0
        self.heartbeat: float | None = options.heartbeat or None
        # HTTP agents must poll even when the server turns heartbeats off
        self.poll_fallback: float | None = None
        self.effective: ConfigFiles = options.local_config
        self.remote_hash = b""
        self.remote_status: int = UNSET
        self.remote_error = ""
        self._pending = Part(0)
        self._last_sent: float | None = None
        self._apply_due: float | None = None
        self._apply_files: ConfigFiles | None = None
        self._apply_error: str | None = None
        self._awaiting_full_ack = False
        self._full_state_seq: int | None = None
        self._status_seq: int | None = None
        self._status_reported = True
        self.capabilities = options.capabilities
        self.version = options.service_version
        # Packages (accept_packages only): by name; the all-packages hash the server
        # last offered; the one the agent has every package of (spec step 1).
        self.packages: dict[str, PackageRecord] | None = {} if options.accept_packages else None
        self.server_packages_hash = b""
        self.packages_hash = b""

    @property
    def pod_name(self) -> str:
        return f"{self.options.pod_prefix}-{self.index}"

    @property
    def pending(self) -> Part:
        return self._pending

    @property
    def wants_to_send(self) -> bool:
        return bool(self._pending)

    def connected(self) -> None:
        """A new connection (or the first HTTP request): the first message is full state."""
        self._pending |= FULL_STATE
        self._awaiting_full_ack = True
        self._full_state_seq = None

    def disconnected(self) -> None:
        """What was sent may be lost; the server gets the full state again next time."""
        self._pending |= FULL_STATE
        self._awaiting_full_ack = True
        self._full_state_seq = None
        self._status_seq = None

    def tick(self, now: float) -> None:
        """Finish a config apply that is due and mark a heartbeat when one is due."""
        if self._apply_due is not None and now >= self._apply_due:
            files, error = self._apply_files, self._apply_error
            self._apply_due = self._apply_files = self._apply_error = None
            if files is not None:
                self._finish_apply(files, error)
        heartbeat_due = self._heartbeat_due()
        if heartbeat_due is not None and now >= heartbeat_due:
            self._pending |= Part.HEARTBEAT

    def _heartbeat_due(self) -> float | None:
        """Counted from the last message sent, as any message is a heartbeat."""
        interval = self.heartbeat if self.heartbeat is not None else self.poll_fallback
        if interval is None or self._last_sent is None:
            return None
        return self._last_sent + interval

    def seconds_until_wakeup(self, now: float) -> float | None:
        """How long the transport may wait for the server before calling tick() again."""
        due = [t for t in (self._apply_due, self._heartbeat_due()) if t is not None]
        return max(0.0, min(due) - now) if due else None

    def next_message(self, now: float) -> pb.AgentToServer:
        """The next AgentToServer: what is pending, numbered, and the pending set cleared."""
        parts = self._pending
        msg = pb.AgentToServer(
            instance_uid=self.instance_uid,
            sequence_num=self.sequence_num,
            capabilities=self.capabilities,
        )
        if parts & Part.DESCRIPTION:
            self._describe(msg.agent_description)
        if parts & Part.HEALTH:
            msg.health.healthy = True
            msg.health.start_time_unix_nano = self.started_unix_nano
            msg.health.status = "StatusOK"
            msg.health.status_time_unix_nano = self.started_unix_nano
        if parts & Part.EFFECTIVE_CONFIG:
            config_map = msg.effective_config.config_map.config_map
            for name, body, content_type in self.effective:
                config_map[name].body = body
                config_map[name].content_type = content_type
        if parts & Part.REMOTE_CONFIG_STATUS and (self.remote_status != UNSET or self.remote_hash):
            msg.remote_config_status.last_remote_config_hash = self.remote_hash
            msg.remote_config_status.status = self.remote_status  # type: ignore[assignment]
            msg.remote_config_status.error_message = self.remote_error
            if self.remote_status in (APPLIED, FAILED) and not self._status_reported:
                self._status_seq = self.sequence_num
        if parts & Part.COMPONENTS_FULL:
            msg.available_components.CopyFrom(COMPONENTS)
        elif parts & Part.COMPONENTS_HASH:
            msg.available_components.hash = COMPONENTS.hash
        if parts & Part.PACKAGE_STATUSES and self.packages is not None:
            self._package_statuses(msg.package_statuses)
        if parts & Part.DESCRIPTION and self._awaiting_full_ack:
            self._full_state_seq = self.sequence_num
        self._pending = Part(0)
        self._last_sent = now
        self.sequence_num += 1
        return msg

    def disconnect_message(self, now: float) -> pb.AgentToServer:
        """The last message of a clean shutdown."""
        msg = pb.AgentToServer(
            instance_uid=self.instance_uid,
            sequence_num=self.sequence_num,
            capabilities=self.capabilities,
            agent_disconnect=pb.AgentDisconnect(),
        )
        self._last_sent = now
        self.sequence_num += 1
        return msg

    def receive(self, data: bytes, *, websocket: bool, now: float) -> Reaction:
        """React to one WebSocket frame or HTTP body; bad bytes become a ProtocolError."""
        try:
            msg = (
                wire.decode_server_ws_frame(data) if websocket else wire.decode_server_message(data)
            )
        except wire.WireError as exc:
            return Reaction([ProtocolError(str(exc))])
        return self.handle(msg, now)

    def handle(self, msg: pb.ServerToAgent, now: float) -> Reaction:
        reaction = Reaction()
        events = reaction.events
        if msg.HasField("error_response"):
            err = msg.error_response
            events.append(ServerError(err.type, err.error_message))
            if err.type == pb.ServerErrorResponseType_Unavailable:
                reaction.throttled = True
                if err.HasField("retry_info"):
                    reaction.retry_after = err.retry_info.retry_after_nanoseconds / 1e9
                self.disconnected()
            return reaction
        self._acknowledge(events)
        if msg.HasField("agent_identification"):
            new = msg.agent_identification.new_instance_uid
            if len(new) == 16:
                if new != self.instance_uid:
                    events.append(InstanceUidChanged(self.instance_uid, new))
                    self.instance_uid = new
            else:
                events.append(
                    ProtocolError(f"new_instance_uid is {len(new)} bytes, not 16; ignored")
                )
        if msg.HasField("connection_settings") and msg.connection_settings.HasField("opamp"):
            seconds = msg.connection_settings.opamp.heartbeat_interval_seconds
            interval = float(seconds) if seconds else None
            if interval != self.heartbeat:
                self.heartbeat = interval
                events.append(HeartbeatChanged(interval))
        self._flags(msg.flags)
        if msg.HasField("remote_config"):
            self._offer(msg.remote_config, now, events)
        if msg.HasField("packages_available") and self.packages is not None:
            self._packages_offered(msg.packages_available, events)
        return reaction

    def _flags(self, flags: int) -> None:
        if flags & pb.ServerToAgentFlags_ReportFullState:
            self._pending |= FULL_STATE
        if flags & pb.ServerToAgentFlags_ReportAvailableComponents:
            self._pending |= Part.COMPONENTS_FULL

    def _acknowledge(self, events: list[Event]) -> None:
        last_sent = self.sequence_num - 1
        if self._full_state_seq is not None and last_sent >= self._full_state_seq:
            self._full_state_seq = None
            self._awaiting_full_ack = False
            events.append(FullStateAcked())
        if self._status_seq is not None and last_sent >= self._status_seq:
            self._status_seq = None
            self._status_reported = True
            events.append(ConfigReported(self.remote_hash, self.remote_status, self.remote_error))

    def _offer(self, config: pb.AgentRemoteConfig, now: float, events: list[Event]) -> None:
        if config.config_hash == self.remote_hash and self.remote_status != UNSET:
            return
        files = self.options.intern(freeze_config(config.config))
        error = decide_remote_config(files, self.options.fail_text)
        events.append(ConfigOffered(config.config_hash))
        self.remote_hash = config.config_hash
        self._status_seq = None
        if self.options.report_applying or self.options.apply_delay > 0:
            self.remote_status = APPLYING
            self.remote_error = ""
            self._status_reported = True
            self._pending |= Part.REMOTE_CONFIG_STATUS
            self._apply_due = now + self.options.apply_delay
            self._apply_files, self._apply_error = files, error
        else:
            self._apply_due = self._apply_files = self._apply_error = None
            self._finish_apply(files, error)

    def _finish_apply(self, files: ConfigFiles, error: str | None) -> None:
        if error is None:
            self.remote_status, self.remote_error = APPLIED, ""
            if files != self.effective:
                self.effective = files
                self._pending |= Part.EFFECTIVE_CONFIG
        else:
            self.remote_status, self.remote_error = FAILED, error
        self._status_reported = False
        self._pending |= Part.REMOTE_CONFIG_STATUS

    def _packages_offered(self, available: pb.PackagesAvailable, events: list[Event]) -> None:
        """The spec's download procedure: nothing to do when the agent has every package of
        this all-packages hash; else fetch each package whose hash it does not have (and is
        not fetching already), and forget the packages no longer offered."""
        records = self.packages
        assert records is not None
        all_hash = available.all_packages_hash
        if all_hash and all_hash == self.packages_hash:
            return
        changed = all_hash != self.server_packages_hash
        self.server_packages_hash = all_hash
        offers = package_offers(available)
        for name in [n for n in records if n not in offers]:
            del records[name]
            changed = True
        downloads: list[PackageOffer] = []
        for name, offer in offers.items():
            record = records.setdefault(name, PackageRecord())
            if record.has_hash and record.has_hash == offer.hash:
                if record.offered != offer or record.status != INSTALLED:
                    record.offered, record.status, record.error = offer, INSTALLED, ""
                    changed = True
                continue
            if record.status == DOWNLOADING and record.offered == offer:
                continue  # already being fetched
            record.offered, record.status, record.error = offer, DOWNLOADING, ""
            downloads.append(offer)
            changed = True
        if changed:
            self._pending |= Part.PACKAGE_STATUSES
        if downloads:
            events.append(PackagesOffered(tuple(downloads)))
        self._note_all_installed()

    def package_fetched(
        self, offer: PackageOffer, digest: bytes | None, error: str | None = None
    ) -> list[Event]:
        """A download of `offer` ended: the file's SHA-256 (`digest`) or why it failed.

        Installing is checking the hash; a top-level package then becomes what the agent
        runs: its service.version is the package version, and it says so in a new
        description. A download the server has offered something else for since is
        dropped.
        """
        record = None if self.packages is None else self.packages.get(offer.name)
        if record is None or record.offered != offer or record.status != DOWNLOADING:
            return []
        if error is None:
            error = (
                "the download ended without a file"
                if digest is None
                else content_hash_error(offer, digest)
            )
        self._pending |= Part.PACKAGE_STATUSES
        if error is not None:
            record.status, record.error = INSTALL_FAILED, error
            return [PackageInstallFailed(offer, error)]
        record.status, record.error = INSTALLED, ""
        record.has_version, record.has_hash = offer.version, offer.hash
        if offer.type == TOP_LEVEL and offer.version != self.version:
            self.version = offer.version
            self._pending |= Part.DESCRIPTION
        self._note_all_installed()
        return [PackageInstalled(offer)]

    def _note_all_installed(self) -> None:
        if self.packages is not None and all(r.status == INSTALLED for r in self.packages.values()):
            self.packages_hash = self.server_packages_hash

    def _package_statuses(self, statuses: pb.PackageStatuses) -> None:
        """Every package the agent has or is processing, as the spec requires, and the
        all-packages hash the server last offered (empty statuses before any offer)."""
        assert self.packages is not None
        statuses.SetInParent()
        statuses.server_provided_all_packages_hash = self.server_packages_hash
        for name, record in self.packages.items():
            status = statuses.packages[name]
            status.name = name
            status.agent_has_version = record.has_version
            status.agent_has_hash = record.has_hash
            if record.offered is not None:
                status.server_offered_version = record.offered.version
                status.server_offered_hash = record.offered.hash
            status.status = record.status  # type: ignore[assignment]
            status.error_message = record.error

    def _describe(self, description: pb.AgentDescription) -> None:
        pod = self.pod_name
        description.identifying_attributes.extend(
            [
                _kv("service.name", self.options.service_name),
                _kv("service.instance.id", uid_text(self.original_uid)),
                _kv("k8s.pod.name", pod),
                _kv("k8s.namespace.name", self.options.namespace),
            ]
        )
        if self.version is not None:
            description.identifying_attributes.append(_kv("service.version", self.version))
        description.non_identifying_attributes.extend(
            [_kv("host.name", pod), _kv("os.type", "linux")]
        )


def parse_retry_after(value: str | None, now_unix: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from an HTTP Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_unix())
