"""Launch the OpAMP agents that are not written in Go: opentelemetry-opamp-client (PyPI) and
@elastic/opamp-client-node (npm). Both are HTTP-only, and both speak the JSON lines of the
opamp-go agent harness, so tests drive all three through the same JsonlProcess.

Over https:// both trust the system's CAs, or `ca_file`'s as well: the harnesses have no
TLS flags, so the CA goes through the environment each client library's HTTP stack reads
(requests: REQUESTS_CA_BUNDLE; Node: NODE_EXTRA_CA_CERTS). Neither harness can present a
client certificate, although both libraries could (tests/world_proofs/test_tls.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

from world import binaries
from world.collector import JsonlProcess, start_jsonl

PYTHON_HARNESS = Path(__file__).with_name("pyclient_agent.py")
PYTHON_CLIENT = "opentelemetry-opamp-client"


def _start_with_env(argv: list[str], env: dict[str, str]) -> JsonlProcess:
    """start_jsonl with more environment variables."""
    if not env:
        return start_jsonl(argv)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    )
    harness = JsonlProcess(proc)
    threading.Thread(target=harness._pump, daemon=True).start()
    return harness


def start_python_agent(url: str, *args: str, ca_file: Path | None = None) -> JsonlProcess:
    """opentelemetry-opamp-client as an agent at `url` (http:// or https://, trusting
    `ca_file` too); see pyclient_agent.py.

    It runs in its own interpreter (isolated: no script directory on sys.path, no PYTHON*
    variables) because its generated protobuf modules clash with ours in one process.
    """
    try:
        metadata.version(PYTHON_CLIENT)
    except metadata.PackageNotFoundError:
        raise binaries.MissingBinaryError(
            f"{PYTHON_CLIENT} is not installed for {sys.executable}; it is in the project's "
            "`test` extra (`pip install -e '.[test]'`, which scripts/check does)."
        ) from None
    # -I ignores PYTHON* variables only: requests still reads REQUESTS_CA_BUNDLE, for the
    # verify=True the library passes by default (tls_certificate).
    env = {"REQUESTS_CA_BUNDLE": str(ca_file)} if ca_file is not None else {}
    return _start_with_env([sys.executable, "-I", str(PYTHON_HARNESS), f"--url={url}", *args], env)


def start_node_agent(url: str, *args: str, ca_file: Path | None = None) -> JsonlProcess:
    """@elastic/opamp-client-node as an agent at `url` (http:// or https://, trusting
    `ca_file` too); see test-deps/node-agent."""
    # Node adds NODE_EXTRA_CA_CERTS to its default CAs, which undici's connector uses
    # when the client is given no `connect.ca` (the harness gives none).
    env = {"NODE_EXTRA_CA_CERTS": str(ca_file)} if ca_file is not None else {}
    return _start_with_env([str(binaries.find("opamp-node-agent")), f"--url={url}", *args], env)
