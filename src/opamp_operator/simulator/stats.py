"""Counts and timings of a simulation, the progress line and the JSON summary.

Times are seconds since the simulation started. Everything here is plain data, updated by
the agents' transport loops and read by the progress reporter and by tests.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from opamp_operator.simulator.protocol import APPLIED, FAILED, PackageOffer

log = logging.getLogger("opamp_operator.simulator")

StopCondition = Literal["connected", "acked", "applied", "settled", "installed"]
STOP_CONDITIONS: tuple[StopCondition, ...] = (
    "connected",
    "acked",
    "applied",
    "settled",
    "installed",
)

_LOGGED_PER_KIND = 5


@dataclass
class ConfigProgress:
    """One offered config (by hash) across the fleet."""

    config_hash: bytes
    first_offer: float
    offered: set[int] = field(default_factory=set)
    applied: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    all_applied: float | None = None
    all_reported: float | None = None
    error_example: str = ""


@dataclass
class PackageProgress:
    """One offered package (by package hash) across the fleet."""

    package_hash: bytes
    name: str
    version: str
    first_offer: float
    offered: set[int] = field(default_factory=set)
    installed: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    all_installed: float | None = None
    error_example: str = ""


@dataclass(frozen=True)
class PackageSummary:
    name: str
    version: str
    hash: str
    first_offer_s: float
    offered: int
    installed: int
    failed: int
    all_installed_s: float | None
    """From the first offer of this package until every agent had installed it."""
    error_example: str


@dataclass(frozen=True)
class ConfigSummary:
    hash: str
    first_offer_s: float
    offered: int
    applied: int
    failed: int
    all_applied_s: float | None
    """From the first offer of this config until every agent had reported APPLIED."""
    all_reported_s: float | None
    """From the first offer until every agent had reported APPLIED or FAILED."""
    error_example: str


@dataclass(frozen=True)
class Summary:
    """The simulation's result; `to_json()` is the line the CLI prints on stdout.

    Times ending in `_s` are seconds since the simulation started, except where a field
    says otherwise. Counts describe the run up to the stop; `goodbyes_sent`, `shutdown_s`
    and `peak_rss_mib` include the shutdown. `connected` is the count at the stop;
    `all_connected_s` / `all_acked_s` are when every agent had first connected / first
    had its full state answered; `ack_latency_s` is, per agent, from its launch to that
    answer; `reply_latency_s` is, per answer, from the oldest message the agent had not
    had answered to the ServerToAgent that answered it (SimulationStats.replied);
    `recoveries_s` lists each outage (all connected → fewer → all again);
    `messages_sent` excludes the AgentDisconnect goodbyes. `packages_installed` and
    `package_install_failures` count installs by agents (a retried package counts
    again), `package_downloads` the downloads started and `package_download_bytes` the
    bytes they received, failed ones included.
    """

    transport: str
    endpoint: str
    agents: int
    launched: int
    goodbyes_sent: int
    duration_s: float
    stopped_by: str
    connected: int
    ever_connected: int
    full_state_acked: int
    all_connected_s: float | None
    all_acked_s: float | None
    ack_latency_s: dict[str, float]
    reconnects: int
    connect_failures: int
    disconnects: int
    recoveries_s: list[float]
    messages_sent: int
    messages_received: int
    heartbeats_sent: int
    bytes_sent: int
    bytes_received: int
    gzip_responses: int
    throttled: int
    instance_uid_changes: int
    configs: list[ConfigSummary]
    server_errors: dict[str, int]
    errors: dict[str, int]
    error_examples: dict[str, str]
    peak_rss_mib: float | None = None
    shutdown_s: float | None = None
    """How long the clean shutdown (AgentDisconnect, close) of every agent took."""
    reply_latency_s: dict[str, float] = field(default_factory=dict)
    packages: list[PackageSummary] = field(default_factory=list)
    packages_installed: int = 0
    package_install_failures: int = 0
    package_downloads: int = 0
    package_download_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99/max, rounded to the millisecond; empty when no values."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1))
        return round(ordered[index], 3)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": round(ordered[-1], 3)}


def histogram_percentiles(counts_ms: Mapping[int, int]) -> dict[str, float]:
    """`percentiles` of values counted by whole milliseconds (SimulationStats.reply_ms, or
    a difference of two copies of it), in seconds; empty when nothing was counted."""
    ordered = sorted((ms, n) for ms, n in counts_ms.items() if n > 0)
    total = sum(n for _, n in ordered)
    if not total:
        return {}

    def rank(p: float) -> float:
        wanted, seen = max(1, math.ceil(p * total)), 0
        for ms, n in ordered:
            seen += n
            if seen >= wanted:
                return ms / 1000
        return ordered[-1][0] / 1000

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1][0] / 1000}


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class SimulationStats:
    """Fleet-wide counters; one instance is shared by every agent of a simulation."""

    def __init__(self, agents: int, *, transport: str = "", endpoint: str = "") -> None:
        self.agents = agents
        self.transport = transport
        self.endpoint = endpoint
        self.launched = 0
        self.goodbyes_sent = 0
        self._connected_now = bytearray(agents)
        self._acked_now = bytearray(agents)
        self._ever_connected = bytearray(agents)
        self._ever_acked = bytearray(agents)
        self.connected = 0
        self.acked = 0
        self.ever_connected = 0
        self.ever_acked = 0
        self.all_connected_at: float | None = None
        self.all_acked_at: float | None = None
        self.ack_latencies: list[float] = []
        self.acked_at: list[float | None] = [None] * agents
        """Per agent: when its full state was answered on its latest connection."""
        self.reply_ms: Counter[int] = Counter()
        """Answers by how long they took, in whole milliseconds rounded up (see `replied`):
        one entry per distinct millisecond, however long the run."""
        self._awaiting_since: list[float | None] = [None] * agents
        self.throttled_at: list[float | None] = [None] * agents
        """Per agent: when a server last told it to wait (429/503, or UNAVAILABLE)."""
        self.reconnects = 0
        self.connect_failures = 0
        self.disconnects = 0
        self._outage_since: float | None = None
        self.recoveries: list[float] = []
        self.messages_sent = 0
        self.messages_received = 0
        self.heartbeats_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.gzip_responses = 0
        self.throttled = 0
        self.instance_uid_changes = 0
        self.configs: dict[bytes, ConfigProgress] = {}
        self.latest_config: ConfigProgress | None = None
        self.packages: dict[bytes, PackageProgress] = {}
        self.latest_package: PackageProgress | None = None
        self.packages_installed = 0
        self.package_install_failures = 0
        self.package_downloads = 0
        self.package_download_bytes = 0
        self.server_errors: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_examples: dict[str, str] = {}

    def agent_connected(self, index: int, now: float) -> None:
        if self._connected_now[index]:
            return
        self._connected_now[index] = 1
        self.connected += 1
        if self._ever_connected[index]:
            self.reconnects += 1
        else:
            self._ever_connected[index] = 1
            self.ever_connected += 1
        if self.connected == self.agents:
            if self.all_connected_at is None:
                self.all_connected_at = now
            if self._outage_since is not None:
                self.recoveries.append(now - self._outage_since)
                self._outage_since = None

    def agent_disconnected(self, index: int, now: float) -> None:
        self._awaiting_since[index] = None  # what it sent is lost, not answered late
        if not self._connected_now[index]:
            return
        if self.connected == self.agents and self._outage_since is None:
            self._outage_since = now
        self._connected_now[index] = 0
        self.connected -= 1
        self.disconnects += 1
        if self._acked_now[index]:
            self._acked_now[index] = 0
            self.acked -= 1

    def connect_failed(self, kind: str, message: str) -> None:
        self.connect_failures += 1
        self.error(f"connect: {kind}", message)

    def full_state_acked(self, index: int, now: float, latency: float | None) -> None:
        if not self._acked_now[index]:
            self._acked_now[index] = 1
            self.acked += 1
            self.acked_at[index] = now
        if not self._ever_acked[index]:
            self._ever_acked[index] = 1
            self.ever_acked += 1
            if latency is not None:
                self.ack_latencies.append(latency)
            if self.ever_acked == self.agents and self.all_acked_at is None:
                self.all_acked_at = now

    def awaiting_reply(self, index: int, now: float) -> None:
        """Agent `index` sent a message; its wait for an answer runs from the oldest
        message not yet answered."""
        if self._awaiting_since[index] is None:
            self._awaiting_since[index] = now

    def replied(self, index: int, now: float) -> None:
        """A ServerToAgent reached agent `index` (a WebSocket frame, an HTTP response): the
        wait it ends is counted in `reply_ms`. A message the server pushes unasked ends a
        wait too, so an answer that follows a push is not counted."""
        since = self._awaiting_since[index]
        if since is not None:
            self._awaiting_since[index] = None
            self.reply_ms[math.ceil(max(0.0, now - since) * 1000)] += 1

    def oldest_unanswered(self, now: float) -> float | None:
        """How long the agent waiting longest for an answer has waited; None if none waits."""
        waiting = [since for since in self._awaiting_since if since is not None]
        return now - min(waiting) if waiting else None

    def agent_throttled(self, index: int, now: float) -> None:
        self.throttled += 1
        self.throttled_at[index] = now

    def config_offered(self, index: int, config_hash: bytes, now: float) -> None:
        progress = self.configs.get(config_hash)
        if progress is None:
            progress = self.configs[config_hash] = ConfigProgress(config_hash, now)
            self.latest_config = progress
        progress.offered.add(index)

    def config_reported(
        self, index: int, config_hash: bytes, status: int, error: str, now: float
    ) -> None:
        progress = self.configs.get(config_hash)
        if progress is None:
            progress = self.configs[config_hash] = ConfigProgress(config_hash, now)
        if status == APPLIED:
            progress.applied.add(index)
            progress.failed.discard(index)
        elif status == FAILED:
            progress.failed.add(index)
            progress.applied.discard(index)
            progress.error_example = progress.error_example or error
        if len(progress.applied) == self.agents and progress.all_applied is None:
            progress.all_applied = now
        reported = len(progress.applied) + len(progress.failed)
        if reported == self.agents and progress.all_reported is None:
            progress.all_reported = now

    def _package(self, offer: PackageOffer, now: float) -> PackageProgress:
        progress = self.packages.get(offer.hash)
        if progress is None:
            progress = PackageProgress(offer.hash, offer.name, offer.version, now)
            self.packages[offer.hash] = self.latest_package = progress
        return progress

    def package_offered(self, index: int, offer: PackageOffer, now: float) -> None:
        """Agent `index` is to fetch this package (one it does not have)."""
        self._package(offer, now).offered.add(index)

    def package_installed(self, index: int, offer: PackageOffer, now: float) -> None:
        self.packages_installed += 1
        progress = self._package(offer, now)
        progress.installed.add(index)
        progress.failed.discard(index)
        if len(progress.installed) == self.agents and progress.all_installed is None:
            progress.all_installed = now

    def package_failed(self, index: int, offer: PackageOffer, error: str, now: float) -> None:
        self.package_install_failures += 1
        progress = self._package(offer, now)
        progress.failed.add(index)
        progress.error_example = progress.error_example or error

    def sent(self, nbytes: int, *, heartbeat: bool = False) -> None:
        self.messages_sent += 1
        self.bytes_sent += nbytes
        if heartbeat:
            self.heartbeats_sent += 1

    def received(self, nbytes: int) -> None:
        self.messages_received += 1
        self.bytes_received += nbytes

    def server_error(self, type_name: str, message: str) -> None:
        self.server_errors[type_name] += 1
        self.error(f"server error {type_name}", message)

    def error(self, kind: str, message: str) -> None:
        """Count an error; the first few of each kind are logged, the rest only counted."""
        self.errors[kind] += 1
        self.error_examples.setdefault(kind, message)
        count = self.errors[kind]
        if count <= _LOGGED_PER_KIND:
            suffix = " (further errors of this kind are only counted)" if count == 5 else ""
            log.error("%s: %s%s", kind, message, suffix)

    def satisfied(self, condition: StopCondition) -> bool:
        """For "applied" and "settled", the config offered most recently is the one that counts."""
        if condition == "connected":
            return self.connected == self.agents
        if condition == "acked":
            return self.acked == self.agents
        if condition == "installed":
            package = self.latest_package
            return package is not None and len(package.installed) == self.agents
        config = self.latest_config
        if config is None:
            return False
        if condition == "applied":
            return len(config.applied) == self.agents
        return len(config.applied) + len(config.failed) == self.agents

    def progress_line(self, now: float) -> str:
        line = (
            f"t={now:.1f}s connected {self.connected}/{self.agents} "
            f"acked {self.acked} reconnects {self.reconnects} "
            f"connect-failures {self.connect_failures} errors {sum(self.errors.values())} "
            f"sent {self.messages_sent} received {self.messages_received}"
        )
        config = self.latest_config
        if config is not None:
            line += (
                f" | config {config.config_hash.hex()[:12]} offered {len(config.offered)} "
                f"applied {len(config.applied)} failed {len(config.failed)}"
            )
        package = self.latest_package
        if package is not None:
            line += (
                f" | package {package.name or '(unnamed)'} {package.version} offered "
                f"{len(package.offered)} installed {len(package.installed)} "
                f"failed {len(package.failed)} downloaded {self.package_download_bytes} B"
            )
        return line

    def summary(self, now: float, stopped_by: str, peak_rss_mib: float | None = None) -> Summary:
        configs = [
            ConfigSummary(
                hash=c.config_hash.hex(),
                first_offer_s=round(c.first_offer, 3),
                offered=len(c.offered),
                applied=len(c.applied),
                failed=len(c.failed),
                all_applied_s=_seconds(
                    None if c.all_applied is None else c.all_applied - c.first_offer
                ),
                all_reported_s=_seconds(
                    None if c.all_reported is None else c.all_reported - c.first_offer
                ),
                error_example=c.error_example,
            )
            for c in sorted(self.configs.values(), key=lambda c: c.first_offer)
        ]
        packages = [
            PackageSummary(
                name=p.name,
                version=p.version,
                hash=p.package_hash.hex(),
                first_offer_s=round(p.first_offer, 3),
                offered=len(p.offered),
                installed=len(p.installed),
                failed=len(p.failed),
                all_installed_s=_seconds(
                    None if p.all_installed is None else p.all_installed - p.first_offer
                ),
                error_example=p.error_example,
            )
            for p in sorted(self.packages.values(), key=lambda p: p.first_offer)
        ]
        return Summary(
            transport=self.transport,
            endpoint=self.endpoint,
            agents=self.agents,
            launched=self.launched,
            goodbyes_sent=self.goodbyes_sent,
            duration_s=round(now, 3),
            stopped_by=stopped_by,
            connected=self.connected,
            ever_connected=self.ever_connected,
            full_state_acked=self.ever_acked,
            all_connected_s=_seconds(self.all_connected_at),
            all_acked_s=_seconds(self.all_acked_at),
            ack_latency_s=percentiles(self.ack_latencies),
            reply_latency_s=histogram_percentiles(self.reply_ms),
            reconnects=self.reconnects,
            connect_failures=self.connect_failures,
            disconnects=self.disconnects,
            recoveries_s=[round(r, 3) for r in self.recoveries],
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            heartbeats_sent=self.heartbeats_sent,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            gzip_responses=self.gzip_responses,
            throttled=self.throttled,
            instance_uid_changes=self.instance_uid_changes,
            configs=configs,
            packages=packages,
            packages_installed=self.packages_installed,
            package_install_failures=self.package_install_failures,
            package_downloads=self.package_downloads,
            package_download_bytes=self.package_download_bytes,
            server_errors=dict(self.server_errors),
            errors=dict(self.errors),
            error_examples=dict(self.error_examples),
            peak_rss_mib=peak_rss_mib,
        )
