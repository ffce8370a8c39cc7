"""Launch real OpAMP agents: the Collector with its OpAMP extension, the same Collector under
opampsupervisor, and the opamp-go harness agent."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from world import binaries
from world.processes import ProcessRecord, free_port, spawn, terminate, wait_until

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


def start_supervised_collector(
    opamp_endpoint: str,
    workdir: Path,
    *,
    name: str = "opampsupervisor",
    attributes: dict[str, str] | None = None,
) -> Agent:
    """opampsupervisor running otelcol-opamp, reporting to `opamp_endpoint`.

    A local config file gives the Collector a pipeline and a health check before any
    remote config arrives, so a test can see that the supervisor really started it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    health_port = free_port()
    local = base_collector_config(health_port)
    local_path = workdir / "local.yaml"
    local_path.write_text(yaml.safe_dump(local, sort_keys=False))
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
            "config_files": [str(local_path)],
            "description": {"non_identifying_attributes": attributes or {}},
        },
        "storage": {"directory": str(workdir / "storage")},
        "telemetry": {"logs": {"level": "info", "output_paths": [str(workdir / "supervisor.log")]}},
    }
    config_path = workdir / "supervisor.yaml"
    config_path.write_text(yaml.safe_dump(supervisor, sort_keys=False))
    record, proc = spawn(
        name, [binaries.find("opampsupervisor"), f"--config={config_path}"], workdir
    )
    return Agent(record, proc, workdir, f"http://127.0.0.1:{health_port}/")


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


def start_reference_server(config_file: Path | None = None) -> ReferenceServer:
    argv = [str(binaries.find("opamp-go-server"))]
    if config_file is not None:
        argv.append(f"--config-file={config_file}")
    harness = start_jsonl(argv)
    ready = harness.wait_for("listening", timeout=15)
    return ReferenceServer(harness, ready["ws_url"], ready["http_url"])


def collector_config_with_health() -> tuple[str, int]:
    """A complete Collector config (as YAML) whose health check is on a fresh port."""
    port = free_port()
    return yaml.safe_dump(base_collector_config(port), sort_keys=False), port


def broken_collector_config() -> str:
    """Valid YAML the Collector refuses: a pipeline names an exporter that is not defined."""
    config = base_collector_config(free_port())
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlp/nowhere"]
    return yaml.safe_dump(config, sort_keys=False)
