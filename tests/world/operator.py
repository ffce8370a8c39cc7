"""Run our own OpAMP server the way users do — `opamp-operator serve` as a process — and
read its API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from world.processes import ProcessRecord, free_port, spawn, terminate, wait_until


@dataclass
class OpAMPEndpoint:
    """Where agents reach one of our server processes on loopback."""

    record: ProcessRecord
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/opamp"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/opamp"

    def stop(self) -> None:
        terminate(self.record)
        self.proc.wait(timeout=5)

    def get(self, path: str) -> Any:
        """GET one of the read endpoints: JSON decoded, anything else as text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            body = r.read()
        return (
            json.loads(body)
            if r.headers.get_content_type() == "application/json"
            else body.decode()
        )


@dataclass
class ServeProcess(OpAMPEndpoint):
    fleets: Path

    def agents(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/agents")["agents"]
        return result

    def wait_agent(
        self, where: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0
    ) -> dict[str, Any]:
        """The first agent in the read API that satisfies `where`, polling until one does."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [a for a in self.agents() if where(a)]
            return bool(found)

        wait_until(what, check, timeout=timeout, watch=[self.record])
        return found[0]

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_serve(fleets: Path, workdir: Path, *args: str, port: int | None = None) -> ServeProcess:
    port = port or free_port()
    record, proc = spawn(
        f"serve-{port}",
        [
            sys.executable,
            "-m",
            "opamp_operator.cli",
            "serve",
            f"--config={fleets}",
            "--host=127.0.0.1",
            f"--port={port}",
            *args,
        ],
        workdir,
    )
    server = ServeProcess(record, proc, port, fleets)

    def ready() -> bool:
        try:
            return bool(server.get("/readyz") == "ok")
        except (urllib.error.URLError, OSError):
            return False

    wait_until("opamp-operator serve /readyz", ready, timeout=30, watch=[record])
    return server


def write_fleets(path: Path, fleets: list[dict[str, Any]]) -> Path:
    """Write a fleets file; the mtime is nudged so a reload within one second sees it."""
    before = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(yaml.safe_dump({"fleets": fleets}, sort_keys=False))
    if path.stat().st_mtime <= before:
        now = max(time.time(), before + 1)
        os.utime(path, (now, now))
    return path


# Operators told to stop at the end of a `with` block, still shutting down.
_STOPPING: list[threading.Thread] = []


@dataclass
class OperatorProcess(OpAMPEndpoint):
    """`opamp-operator run` against a cluster, as users run it."""

    def __enter__(self) -> OperatorProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_in_background()

    def stop_in_background(self) -> None:
        """SIGTERM now; a thread waits for the exit. kopf gives the tasks it did not start
        5 s to end before it returns, so each operator takes 5 s to stop: the test that used
        it need not wait for that (its handlers are cancelled at once; it listens on its own
        port). `stop()` still waits, for a test that stops and restarts on one port.
        `wait_stopped()` joins them all before the cluster goes."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.record.pid, signal.SIGTERM)
        thread = threading.Thread(target=self.stop, name=self.record.name, daemon=True)
        thread.start()
        _STOPPING.append(thread)


def wait_stopped() -> None:
    """Wait for every operator stopping in the background (at most ~15 s each)."""
    while _STOPPING:
        _STOPPING.pop().join()


def start_operator(
    kubeconfig: Path, workdir: Path, *args: str, port: int | None = None
) -> OperatorProcess:
    """`port` given: the same address as an operator before it (a restart)."""
    port = port or free_port()
    argv = ["run", "--host=127.0.0.1", f"--port={port}", "--status-interval=1", *args]
    return spawn_operator(kubeconfig, workdir, argv, port)


def spawn_operator(kubeconfig: Path, workdir: Path, argv: list[str], port: int) -> OperatorProcess:
    """`opamp-operator *argv` (which must make it listen on 127.0.0.1:`port`), once it
    listens."""
    record, proc = spawn(
        f"operator-{port}",
        [sys.executable, "-m", "opamp_operator.cli", *argv],
        workdir,
        env={"KUBECONFIG": str(kubeconfig)},
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until("opamp-operator run to listen", listening, timeout=60, watch=[record])
    # kopf lists and watches right after the port opens. That it watches is not visible
    # from outside (the listening port and /readyz are the OpAMP server's), so this one
    # stays a fixed wait: 1 s for kopf to start its watch streams.
    time.sleep(1.0)
    return OperatorProcess(record, proc, port)
