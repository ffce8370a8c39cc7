"""Run our own OpAMP server the way users do — `opamp-operator serve` or `run` as a
process — and read its API on the API listener, with a credential it accepts: none for
`serve` on loopback, the kubeconfig's client certificate for `run` (the cluster's admin,
authenticated against the cluster's client CA and authorized by SubjectAccessReview)."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
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


@dataclass(frozen=True)
class Reader:
    """Who reads a server's API: an https context (presenting the kubeconfig user's
    client certificate, if it has one) and its bearer token, if it has one. The API's
    certificate is self-signed and not verified here; the API's own tests check what
    matters: whom the server lets in."""

    context: ssl.SSLContext
    token: str | None = None

    @classmethod
    def of(cls, kubeconfig: Path, workdir: Path) -> Reader:
        user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if "client-certificate-data" in user:
            workdir.mkdir(parents=True, exist_ok=True)
            cert, key = workdir / "reader.crt", workdir / "reader.key"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            key.chmod(0o600)
            context.load_cert_chain(cert, key)
        return cls(context, user.get("token"))


@dataclass
class OpAMPEndpoint:
    """Where agents reach one of our server processes on loopback, and where its API is."""

    record: ProcessRecord
    proc: subprocess.Popen[bytes]
    port: int
    api_port: int
    reader: Reader | None
    """How the API is read: None for plain http without credentials."""

    @property
    def api_url(self) -> str:
        scheme = "http" if self.reader is None else "https"
        return f"{scheme}://127.0.0.1:{self.api_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/opamp"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/opamp"

    def stop(self) -> None:
        terminate(self.record)
        self.proc.wait(timeout=5)

    def metric(self, name: str, labels: str) -> float:
        """One series of /metrics, e.g. `metric("opamp_errors_total", 'reason="revoked"')`;
        0.0 while the series does not exist."""
        found = re.search(rf"^{name}\{{{labels}\}} (\S+)$", self.get("/metrics"), re.M)
        return float(found.group(1)) if found else 0.0

    def rss_mib(self) -> float:
        """The server process's resident memory now (VmRSS), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS in /proc/{self.proc.pid}/status")

    def agents(self) -> list[dict[str, Any]]:
        """Every agent the server knows (the raw agents route)."""
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

    def get(self, path: str, timeout: float = 5.0) -> Any:
        """GET one of the read endpoints: JSON decoded, anything else as text."""
        request = urllib.request.Request(f"{self.api_url}{path}")  # noqa: S310 - http(s) only
        context = None
        if self.reader is not None:
            context = self.reader.context
            if self.reader.token:
                request.add_header("Authorization", f"Bearer {self.reader.token}")
        with urllib.request.urlopen(request, timeout=timeout, context=context) as r:  # noqa: S310
            body = r.read()
        return (
            json.loads(body)
            if r.headers.get_content_type() == "application/json"
            else body.decode()
        )


@dataclass
class ServeProcess(OpAMPEndpoint):
    fleets: Path

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_serve(
    fleets: Path,
    workdir: Path,
    *args: str,
    port: int | None = None,
    reader: Reader | None = None,
) -> ServeProcess:
    """`reader`: how to read an API that is not plain http on loopback (https, a token)."""
    port = port or free_port()
    api_port = free_port()
    record, proc = spawn(
        f"serve-{port}",
        [
            sys.executable,
            "-m",
            "opamp_operator",
            "serve",
            f"--config={fleets}",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--api-port={api_port}",
            *args,
        ],
        workdir,
    )
    server = ServeProcess(record, proc, port, api_port, reader, fleets)

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
        """SIGTERM now, from a thread that then waits for the exit (one SIGTERM: kopf's
        handler completes a future, and a second signal made it log InvalidStateError).
        An operator exits within a fraction of a second (test_operator_shutdown.py), but a
        test need not wait even for that: it listens on its own port. `stop()` waits, for
        a test that stops and restarts on one port. `wait_stopped()` joins them all before
        the cluster goes."""
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


def spawn_operator(
    kubeconfig: Path,
    workdir: Path,
    argv: list[str],
    port: int,
    reader_kubeconfig: Path | None = None,
) -> OperatorProcess:
    """`opamp-operator *argv` (which must make it listen on 127.0.0.1:`port`), once it
    listens; its API on a free loopback port, read as `reader_kubeconfig`'s user (default:
    `kubeconfig`'s)."""
    api_port = free_port()
    record, proc = spawn(
        f"operator-{port}",
        [
            sys.executable,
            "-m",
            "opamp_operator",
            *argv,
            "--api-host=127.0.0.1",
            f"--api-port={api_port}",
        ],
        workdir,
        env={"KUBECONFIG": str(kubeconfig)},
    )
    reader = Reader.of(reader_kubeconfig or kubeconfig, workdir / "reader")

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until("opamp-operator run to listen", listening, timeout=60, watch=[record])
    # kopf lists and watches right after the port opens. That it watches is not visible
    # from outside (the listening port and /readyz are the OpAMP server's), so this one
    # stays a fixed wait: 1 s for kopf to start its watch streams.
    time.sleep(1.0)
    return OperatorProcess(record, proc, port, api_port, reader)
