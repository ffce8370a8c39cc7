"""Launch real OpAMP agents: the Collector with its OpAMP extension, the same Collector under
opampsupervisor, and the opamp-go harness agent; and the download server for the packages
opamp-go's reference server offers."""

from __future__ import annotations

import hashlib
import json
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from world import binaries
from world.processes import (
    ProcessRecord,
    StartupError,
    free_port,
    spawn,
    terminate,
    wait_until,
)

CollectorConfig = dict[str, Any]


def base_collector_config(health_port: int) -> CollectorConfig:
    """A small working pipeline (otlp → memory_limiter, batch → debug) plus health_check.

    Every listener is on a fresh loopback port and the Collector's own metrics are off, so
    many Collectors can run side by side.
    """
    return {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                    "http": {"endpoint": f"127.0.0.1:{free_port()}"},
                }
            }
        },
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_mib": 256},
            "batch": {},
        },
        "exporters": {"debug": {"verbosity": "basic"}},
        "extensions": {"health_check": {"endpoint": f"127.0.0.1:{health_port}"}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": ["debug"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}},
        },
    }


@dataclass
class Agent:
    """A running agent process; `health_url` is set when it serves a health check."""

    record: ProcessRecord
    proc: subprocess.Popen[bytes]
    workdir: Path
    health_url: str | None = None

    def healthy(self) -> bool:
        if self.health_url is None:
            return False
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        wait_until(
            f"{self.record.name} health check at {self.health_url}",
            self.healthy,
            timeout=timeout,
            watch=[self.record],
        )

    def stop(self) -> None:
        terminate(self.record)
        self.proc.wait(timeout=5)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_collector(
    opamp_endpoint: str,
    workdir: Path,
    *,
    name: str = "otelcol",
    extra: Callable[[CollectorConfig], None] | None = None,
) -> Agent:
    """A Collector whose opamp extension connects to `opamp_endpoint` (ws:// or http://)."""
    workdir.mkdir(parents=True, exist_ok=True)
    health_port = free_port()
    config = base_collector_config(health_port)
    config["extensions"]["opamp"] = {
        "server": {
            "ws" if opamp_endpoint.startswith("ws") else "http": {
                "endpoint": opamp_endpoint,
                "tls": {"insecure": True},
            }
        },
        "capabilities": {
            "reports_effective_config": True,
            "reports_health": True,
            "reports_available_components": True,
        },
    }
    config["service"]["extensions"].append("opamp")
    if extra is not None:
        extra(config)
    config_path = workdir / "collector.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    record, proc = spawn(name, [binaries.find("otelcol-opamp"), f"--config={config_path}"], workdir)
    return Agent(record, proc, workdir, f"http://127.0.0.1:{health_port}/")


# The supervisor's placeholders for its own parts of the Collector's config, usable in
# `config_files`. When some are left out it adds them: OWN_TELEMETRY_CONFIG first, the user's
# files, then OPAMP_EXTENSION_CONFIG and REMOTE_CONFIG; later files win where they overlap.
OWN_TELEMETRY_CONFIG = "$OWN_TELEMETRY_CONFIG"
OPAMP_EXTENSION_CONFIG = "$OPAMP_EXTENSION_CONFIG"
REMOTE_CONFIG = "$REMOTE_CONFIG"


def start_supervised_collector(
    opamp_endpoint: str,
    workdir: Path,
    *,
    name: str = "opampsupervisor",
    attributes: dict[str, str] | None = None,
    identifying_attributes: dict[str, str] | None = None,
    config_files: Sequence[str | Path] | None = None,
) -> Agent:
    """opampsupervisor running otelcol-opamp, reporting to `opamp_endpoint`.

    By default a local config file gives the Collector a pipeline and a health check
    before any remote config arrives, so a test can see that the supervisor really started
    it. `config_files` replaces that: the supervisor's `agent.config_files` as given, paths
    and the placeholders above in merge order; the Agent then has no `health_url`.

    `identifying_attributes` and `attributes` (non-identifying) are added to, or override,
    the description the Collector reports. The supervisor keeps its instance uid, the last
    remote config and its status in `workdir/storage`: starting it again on the same
    `workdir` brings back the same agent.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    health_url: str | None = None
    if config_files is None:
        health_port = free_port()
        local = base_collector_config(health_port)
        local_path = workdir / "local.yaml"
        local_path.write_text(yaml.safe_dump(local, sort_keys=False))
        config_files = [local_path]
        health_url = f"http://127.0.0.1:{health_port}/"
    description: dict[str, dict[str, str]] = {"non_identifying_attributes": attributes or {}}
    if identifying_attributes:
        description["identifying_attributes"] = identifying_attributes
    supervisor = {
        "server": {"endpoint": opamp_endpoint, "tls": {"insecure": True}},
        "capabilities": {
            "accepts_remote_config": True,
            "reports_effective_config": True,
            "reports_health": True,
            "reports_remote_config": True,
            "reports_available_components": True,
            "reports_own_metrics": False,
        },
        "agent": {
            "executable": str(binaries.find("otelcol-opamp")),
            "config_files": [str(f) for f in config_files],
            "description": description,
            # The defaults (3 s to start the Collector and hear from it, 5 s for it to turn
            # healthy on a new config) fail on a loaded 2-core machine. v0.149.0 reports a
            # config APPLIED only when config_apply_timeout is over (and the Collector is
            # healthy by then), so every apply takes that long: not more than needed.
            "bootstrap_timeout": "20s",
            "config_apply_timeout": "10s",
            # The Collector's own metrics default to a listener on localhost:8888, which
            # every Collector on this machine would want, the supervisor's bootstrap run
            # (whose config it writes itself) included. Flags follow the config files.
            "args": ["--set=service::telemetry::metrics::level=none"],
        },
        "storage": {"directory": str(workdir / "storage")},
        "telemetry": {"logs": {"level": "info", "output_paths": [str(workdir / "supervisor.log")]}},
    }
    config_path = workdir / "supervisor.yaml"
    config_path.write_text(yaml.safe_dump(supervisor, sort_keys=False))
    argv = [str(binaries.find("opampsupervisor")), f"--config={config_path}"]
    agent_log = workdir / "storage" / "agent.log"  # the Collector's output
    for _ in range(SUPERVISOR_START_ATTEMPTS):
        if agent_log.exists():
            agent_log.replace(agent_log.with_name("agent.previous.log"))
        record, proc = spawn(name, argv, workdir)
        if _bootstrapped(record, proc, workdir / "supervisor.log", agent_log):
            break
    else:
        raise StartupError(
            f"{name} lost its feature gates {SUPERVISOR_START_ATTEMPTS} times in a row; "
            f"log {record.log}:\n{record.log_tail()}"
        )
    return Agent(record, proc, workdir, health_url)


# opampsupervisor v0.149.0 asks the Collector for its feature gates with a one-shot run
# whose stdout it can lose (commander.StartOneShot calls cmd.Wait, which closes the pipe,
# while its reader may not have read yet: "Error reading agent stdout ... file already
# closed"). Without `service.AllowNoPipelines` in that output it bootstraps the Collector
# with `nop` receivers and exporters. otelcol-opamp includes them now (test-deps/
# otelcol-builder.yaml), so that bootstrap works; a Collector built without them says
# `unknown type: "nop"` in storage/agent.log and exits, and the supervisor gives up once
# bootstrap_timeout is over. Such a start is stopped at once and retried; any other
# failure is left to the caller, who sees the process gone.
SUPERVISOR_START_ATTEMPTS = 8
_NO_NOP = 'unknown type: "nop"'
_STARTED = '"msg":"Supervisor starting"'


def _bootstrapped(
    record: ProcessRecord,
    proc: subprocess.Popen[bytes],
    log: Path,
    agent_log: Path,
    timeout: float = 90.0,
) -> bool:
    """Wait for the supervisor just spawned to finish its bootstrap. False when it hit
    the lost-feature-gates race (it is stopped then); True when it started, or died of
    something else. `agent_log` must not hold an earlier Collector's output."""
    starts_before = log.read_text().count(_STARTED) if log.exists() else 0

    def started() -> bool:
        return log.exists() and log.read_text().count(_STARTED) > starts_before

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not started():
        if agent_log.exists() and _NO_NOP in agent_log.read_text(errors="replace"):
            terminate(record)
            proc.wait(timeout=5)
            return False
        time.sleep(0.1)
    return True


def supervisor_instance_uid(workdir: Path) -> str:
    """The instance uid the supervisor started on `workdir` keeps in its storage ("" until
    it has written one)."""
    state = workdir / "storage" / "persistent_state.yaml"
    if not state.exists():
        return ""
    return str((yaml.safe_load(state.read_text()) or {}).get("instance_id", ""))


@dataclass
class JsonlProcess:
    """A harness (opamp-go, Python or Node agent; the reference server): JSON commands in on
    stdin, JSON events out on stdout."""

    proc: subprocess.Popen[str]
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def wait_for(
        self,
        event: str,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        """The first event, already seen or still to come, named `event` that satisfies `where`.

        Looking back as well as forward lets one message answer several questions: one
        OpAMP status report often carries health, components and config status at once.
        """

        def matches(ev: dict[str, Any]) -> bool:
            return bool(ev["event"] == event and where(ev))

        for ev in self.seen:
            if matches(ev):
                return ev
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(ev)
            if matches(ev):
                return ev
            if ev["event"] == "fatal":
                raise RuntimeError(f"{self.proc.args!r} failed: {ev['error']}")
        raise TimeoutError(f"no {event!r} event within {timeout}s; last events: {self.seen[-10:]}")

    def stop(self) -> int:
        """Closing stdin stops the agent; the server stops on SIGTERM."""
        if self.proc.poll() is None:
            self.proc.terminate()
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=5)

    def __enter__(self) -> JsonlProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_jsonl(argv: list[str]) -> JsonlProcess:
    """Start a JSON-lines harness; its stderr is dropped, its events are read by a thread."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    harness = JsonlProcess(proc)
    threading.Thread(target=harness._pump, daemon=True).start()
    return harness


def start_go_agent(url: str, *args: str) -> JsonlProcess:
    """opamp-go's client as an agent at `url` (ws:// or http://); see test-deps/opamp-go."""
    return start_jsonl([str(binaries.find("opamp-go-agent")), f"--url={url}", *args])


@dataclass
class ReferenceServer:
    """opamp-go's server: the independent OpAMP peer for agents in proof and interop tests."""

    harness: JsonlProcess
    ws_url: str
    http_url: str

    def __enter__(self) -> ReferenceServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.harness.stop()


def start_reference_server(config_file: Path | None = None, *args: str) -> ReferenceServer:
    """opamp-go's server offering `config_file` (if any); `args` are more of its flags, such
    as `package_offer_flags(...)`."""
    argv = [str(binaries.find("opamp-go-server"))]
    if config_file is not None:
        argv.append(f"--config-file={config_file}")
    harness = start_jsonl([*argv, *args])
    ready = harness.wait_for("listening", timeout=15)
    return ReferenceServer(harness, ready["ws_url"], ready["http_url"])


def package_offer_flags(
    url: str,
    sha256: str,
    version: str,
    *,
    name: str = "",
    headers: Mapping[str, str] | None = None,
) -> list[str]:
    """The reference server's flags to offer one top-level package (the server computes the
    package and all-packages hashes; `sha256` is the file's content_hash, right or not)."""
    flags = [
        f"--package-url={url}",
        f"--package-sha256={sha256}",
        f"--package-version={version}",
        f"--package-name={name}",
    ]
    return flags + [f"--package-header={k}={v}" for k, v in (headers or {}).items()]


@dataclass(frozen=True)
class Download:
    """One GET the package file server answered."""

    path: str
    headers: dict[str, str]
    status: int


class PackageFiles:
    """A real HTTP server for package files on loopback (the spec's Download Server).

    `files` maps a path ("/pkg.bin") to its bytes. A request without every header of
    `required_headers` gets 401, a path not in `files` 404, and a path in `delays` is
    answered that many seconds late (to make a download time out). Every request is
    recorded in `downloads`. Use it as a context manager.
    """

    def __init__(
        self,
        files: Mapping[str, bytes],
        *,
        required_headers: Mapping[str, str] | None = None,
        delays: Mapping[str, float] | None = None,
    ) -> None:
        self.files = dict(files)
        self.required_headers = dict(required_headers or {})
        self.delays = dict(delays or {})
        self.downloads: list[Download] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # a short poll interval: stop() waits for the next poll
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    @staticmethod
    def sha256(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        files = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                body = files.files.get(self.path)
                missing = any(
                    headers.get(k.lower()) != v for k, v in files.required_headers.items()
                )
                status = 401 if missing else 404 if body is None else 200
                with files._lock:
                    files.downloads.append(Download(self.path, headers, status))
                if files._stopping.wait(files.delays.get(self.path, 0.0)):
                    return
                if status != 200 or body is None:
                    self.send_error(status)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet: the test reads `downloads`."""

        return Handler

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PackageFiles:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def collector_config_with_health() -> tuple[str, int]:
    """A complete Collector config (as YAML) whose health check is on a fresh port."""
    port = free_port()
    return yaml.safe_dump(base_collector_config(port), sort_keys=False), port


def broken_collector_config() -> str:
    """Valid YAML the Collector refuses: a pipeline names an exporter that is not defined."""
    config = base_collector_config(free_port())
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlp/nowhere"]
    return yaml.safe_dump(config, sort_keys=False)
