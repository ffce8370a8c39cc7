"""Launch the OpAMP agents that are not written in Go: opentelemetry-opamp-client (PyPI) and
@elastic/opamp-client-node (npm). Both are HTTP-only, and both speak the JSON lines of the
opamp-go agent harness, so tests drive all three through the same JsonlProcess."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from world import binaries
from world.collector import JsonlProcess, start_jsonl

PYTHON_HARNESS = Path(__file__).with_name("pyclient_agent.py")
PYTHON_CLIENT = "opentelemetry-opamp-client"


def start_python_agent(url: str, *args: str) -> JsonlProcess:
    """opentelemetry-opamp-client as an agent at `url` (http:// only); see pyclient_agent.py.

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
    return start_jsonl([sys.executable, "-I", str(PYTHON_HARNESS), f"--url={url}", *args])


def start_node_agent(url: str, *args: str) -> JsonlProcess:
    """@elastic/opamp-client-node as an agent at `url` (http:// only); see test-deps/node-agent."""
    return start_jsonl([str(binaries.find("opamp-node-agent")), f"--url={url}", *args])
