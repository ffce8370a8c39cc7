"""Prometheus metrics of the OpAMP server, in a registry of their own so several servers
(tests, benchmarks) can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from opamp_operator.opamp.session import MESSAGE_KINDS, AgentState
from opamp_operator.server.looplag import LAG_BUCKETS


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.agents = Gauge(
            "opamp_agents",
            f"Known agents by state: {', '.join(AgentState)}.",
            ["state"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "opamp_websocket_connections", "Open WebSocket connections.", registry=self.registry
        )
        self.messages = Counter(
            "opamp_messages_total",
            "OpAMP messages by direction and transport.",
            ["direction", "transport"],
            registry=self.registry,
        )
        self.agent_messages = Counter(
            "opamp_agent_messages_total",
            "AgentToServer messages by kind: full_state, status, heartbeat, disconnect.",
            ["kind"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "opamp_message_bytes_total",
            "Protobuf bytes by direction and transport (before compression).",
            ["direction", "transport"],
            registry=self.registry,
        )
        self.errors = Counter(
            "opamp_errors_total",
            "Rejected input, shed load and timeouts, by reason (docs/opamp-server.md).",
            ["reason"],
            registry=self.registry,
        )
        self.in_flight_bytes = Gauge(
            "opamp_in_flight_bytes",
            "Bytes of messages being received or handled, charged to --max-in-flight-bytes.",
            registry=self.registry,
        )
        self.http_in_flight = Gauge(
            "opamp_http_in_flight",
            "HTTP requests being handled, counted against --max-http-in-flight.",
            registry=self.registry,
        )
        self.kept_bytes = Gauge(
            "opamp_kept_bytes",
            "Effective configs and component lists kept, all agents, against "
            "--max-kept-bytes (serialized bytes).",
            registry=self.registry,
        )
        self.token_reviews = Counter(
            "opamp_agent_token_reviews_total",
            "TokenReviews of agents' ServiceAccount tokens, by result (answers are kept "
            "per token: one per connection or rotation, never one per message).",
            ["result"],
            registry=self.registry,
        )
        self.config_offers = Counter(
            "opamp_remote_config_offers_total", "Remote configs offered.", registry=self.registry
        )
        self.config_worker_failures = Counter(
            "opamp_config_worker_failures_total",
            "Parses, comparisons and renders of agents' configs that did not finish in a "
            "config worker (server/workers.py), by pool and reason: timeout, memory, died.",
            ["pool", "reason"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "opamp_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 100 ms (server/looplag.py): what "
            "holds the loop delays every agent's answer.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        # The per-message series' children, looked up once: labels() on every message
        # was ~5 % of a 10,000-agent server's CPU.
        self._traffic = {
            (direction, transport): (
                self.messages.labels(direction, transport),
                self.bytes.labels(direction, transport),
            )
            for direction in ("in", "out")
            for transport in ("websocket", "http")
        }
        self._kinds = {kind: self.agent_messages.labels(kind) for kind in MESSAGE_KINDS}

    def message(self, direction: str, transport: str, size: int) -> None:
        """One OpAMP message of `size` protobuf bytes."""
        count, total = self._traffic[direction, transport]
        count.inc()
        total.inc(size)

    def agent_message(self, kind: str) -> None:
        """One decoded AgentToServer of this kind (session.message_kind)."""
        self._kinds[kind].inc()
