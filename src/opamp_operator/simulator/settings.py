"""What a simulation is asked to do, checked once so the transports can trust it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from opamp_operator.server.app import Limits
from opamp_operator.simulator.protocol import AgentOptions
from opamp_operator.simulator.stats import STOP_CONDITIONS, StopCondition

Transport = Literal["ws", "http"]
TRANSPORTS: tuple[Transport, ...] = ("ws", "http")

_SCHEMES: dict[Transport, dict[str, str]] = {
    "ws": {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"},
    "http": {"ws": "http", "wss": "https", "http": "http", "https": "https"},
}


def transport_of(url: str) -> Transport:
    """The transport a URL's scheme implies: ws:// and wss:// are WebSocket."""
    return "ws" if urlsplit(url).scheme in ("ws", "wss") else "http"


def endpoint_for(url: str, transport: Transport) -> str:
    """`url` with the scheme of `transport`, so one OpAMP endpoint serves both."""
    parts = urlsplit(url)
    scheme = _SCHEMES[transport].get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"endpoint {url!r} is not an http(s):// or ws(s):// URL")
    return urlunsplit(parts._replace(scheme=scheme))


@dataclass(frozen=True)
class SimulationSettings:
    """One simulation: `agents` agents at `endpoint` over `transport`.

    `heartbeat` is the interval agents use until a server offers another (0 disables
    WebSocket heartbeats); HTTP agents poll at it. `duration` None runs until stopped or
    until `stop_when` holds. `connect_rate` agents start per second (0: all at once).
    `ca_file` (PEM) verifies a wss:// or https:// server instead of the system's CAs
    (package downloads over https:// too).

    `accept_packages`: agents take offered packages (PackagesAvailable), fetching at most
    `package_downloads` files at once per process, each within `package_download_timeout`
    seconds and `max_package_bytes`; `service_version` is the version they report until
    a top-level package replaces it (None: none reported).
    """

    endpoint: str
    agents: int
    transport: Transport = "ws"
    fail_configs_matching: str | None = None
    pod_prefix: str = "sim-agent"
    namespace: str = "default"
    service_name: str = "otelcol-sim"
    heartbeat: float = 30.0
    duration: float | None = None
    connect_rate: float = 500.0
    stop_when: StopCondition | None = None
    progress_interval: float = 5.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    open_timeout: float = 10.0
    request_timeout: float = 30.0
    goodbye_timeout: float = 5.0
    shutdown_timeout: float = 30.0
    apply_delay: float = 0.0
    report_applying: bool = False
    max_message_bytes: int = Limits.max_message_bytes
    seed: int | None = None
    ca_file: str | None = None
    accept_packages: bool = False
    service_version: str | None = None
    package_downloads: int = 16
    package_download_timeout: float = 60.0
    max_package_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.agents < 1:
            raise ValueError("agents must be at least 1")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {self.transport!r}")
        if self.stop_when is not None and self.stop_when not in STOP_CONDITIONS:
            raise ValueError(f"stop_when must be one of {STOP_CONDITIONS}")
        if self.heartbeat < 0 or (self.transport == "http" and self.heartbeat == 0):
            raise ValueError("heartbeat must be positive (0 only disables WebSocket heartbeats)")
        positive = {
            "backoff_initial": self.backoff_initial,
            "backoff_max": self.backoff_max,
            "open_timeout": self.open_timeout,
            "request_timeout": self.request_timeout,
            "goodbye_timeout": self.goodbye_timeout,
            "shutdown_timeout": self.shutdown_timeout,
            "progress_interval": self.progress_interval,
            "package_download_timeout": self.package_download_timeout,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.connect_rate < 0 or self.apply_delay < 0:
            raise ValueError("connect_rate and apply_delay may not be negative")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        if self.package_downloads < 1 or self.max_package_bytes < 1:
            raise ValueError("package_downloads and max_package_bytes must be positive")
        endpoint_for(self.endpoint, self.transport)

    @property
    def url(self) -> str:
        return endpoint_for(self.endpoint, self.transport)

    def ssl_context(self) -> ssl.SSLContext | None:
        """One context for every agent of a wss:// or https:// simulation (a context per
        connection would load the CAs again each time); None over plaintext."""
        if urlsplit(self.url).scheme not in ("wss", "https"):
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    def agent_options(self) -> AgentOptions:
        return AgentOptions(
            pod_prefix=self.pod_prefix,
            namespace=self.namespace,
            service_name=self.service_name,
            heartbeat=self.heartbeat or None,
            fail_text=self.fail_configs_matching.encode() if self.fail_configs_matching else None,
            report_applying=self.report_applying,
            apply_delay=self.apply_delay,
            accept_packages=self.accept_packages,
            service_version=self.service_version,
        )
