"""Proofs that the PyPI and npm OpAMP clients are real agents in the test world, each in its
own process, against opamp-go's reference server; the opamp-go agent runs the same checks
beside them, which proves one helper drives all three.

What the two clients cannot do (details and evidence in tests/world/pyclient_agent.py and
test-deps/node-agent/index.js), pinned here by the exact capabilities each announces, so a
library upgrade that adds something fails a test and gets noticed:

- opentelemetry-opamp-client 0.5b0: no health, no description change after start, no
  available components, HTTP only.
- @elastic/opamp-client-node 0.5.0: no health, no effective config, no available
  components, HTTP only.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from opamp_operator.opamp.proto import opamp_pb2 as pb
from world.collector import JsonlProcess, ReferenceServer, start_go_agent
from world.peers import start_node_agent, start_python_agent

pytestmark = pytest.mark.world

OFFERED = "receivers:\n  otlp:\n    protocols:\n      http: {}\n"
OFFERED_HASH = hashlib.sha256(OFFERED.encode()).hexdigest()
APPLIED = "RemoteConfigStatuses_APPLIED"
FAILED = "RemoteConfigStatuses_FAILED"

Event = dict[str, Any]
START: dict[str, Callable[..., JsonlProcess]] = {
    "go": start_go_agent,
    "python": start_python_agent,
    "node": start_node_agent,
}
REMOTE_CONFIG = pb.AgentCapabilities_AcceptsRemoteConfig | pb.AgentCapabilities_ReportsRemoteConfig
ALWAYS = pb.AgentCapabilities_ReportsStatus | pb.AgentCapabilities_ReportsHeartbeat
CAPABILITIES = {
    "go": ALWAYS
    | REMOTE_CONFIG
    | pb.AgentCapabilities_ReportsEffectiveConfig
    | pb.AgentCapabilities_ReportsHealth,
    "python": ALWAYS | REMOTE_CONFIG | pb.AgentCapabilities_ReportsEffectiveConfig,
    "node": ALWAYS | REMOTE_CONFIG,
}


def _from(uid: str, also: Callable[[Event], bool] = lambda _: True) -> Callable[[Event], bool]:
    return lambda e: bool(e["instance_uid"] == uid and also(e))


def _status(status: str) -> Callable[[Event], bool]:
    return lambda e: bool(e.get("remote_config_status", {}).get("status") == status)


def _nth(agent: JsonlProcess, n: int, event: str, where: Callable[[Event], bool]) -> Event:
    """The `n`th event named `event` that satisfies `where`, seen or still to come."""
    count = 0

    def counted(e: Event) -> bool:
        nonlocal count
        count += where(e)
        return count >= n

    return agent.wait_for(event, where=counted)


@pytest.mark.parametrize("peer", START)
def test_peer_describes_itself_and_applies_the_offered_config(
    reference_server: ReferenceServer, peer: str
) -> None:
    server = reference_server.harness
    with START[peer](
        reference_server.http_url,
        "--heartbeat=1s",
        f"--service-name=proof-{peer}",
        "--attr=k8s.pod.name=pod-a",
        "--non-identifying=os.type=linux",
    ) as agent:
        started = agent.wait_for("started")
        uid = started["instance_uid"]
        assert started["transport"] == "http"
        agent.wait_for("connected")

        first = server.wait_for("agent_message", where=_from(uid, lambda e: "identifying" in e))
        assert first["transport"] == "http"
        assert first["capabilities"] == CAPABILITIES[peer]
        assert first["identifying"] == {
            "service.name": f"proof-{peer}",
            "service.instance.id": str(uuid.UUID(uid)),
            "k8s.pod.name": "pod-a",
        }
        assert first["non_identifying"] == {"os.type": "linux"}

        offered = agent.wait_for("message", where=lambda e: "remote_config" in e)
        assert offered["remote_config"] == {
            "config_hash": OFFERED_HASH,
            "files": {"": {"content_type": "text/yaml", "body": OFFERED}},
        }
        said = agent.wait_for("remote_config_status")
        assert (said["status"], said["config_hash"]) == (APPLIED, OFFERED_HASH)

        applied = server.wait_for("agent_message", where=_from(uid, _status(APPLIED)))
        assert applied["remote_config_status"] == {
            "status": APPLIED,
            "hash": OFFERED_HASH,
            "error": "",
        }
        if CAPABILITIES[peer] & pb.AgentCapabilities_ReportsEffectiveConfig:
            server.wait_for(
                "agent_message",
                where=_from(uid, lambda e: e.get("effective_config") == {"": OFFERED}),
            )


@pytest.mark.parametrize("peer", START)
def test_peer_reports_a_rejected_config_failed_with_a_message(
    reference_server: ReferenceServer, peer: str
) -> None:
    server = reference_server.harness
    with START[peer](reference_server.http_url, "--heartbeat=1s", "--apply=fail") as agent:
        uid = agent.wait_for("started")["instance_uid"]
        failed = server.wait_for("agent_message", where=_from(uid, _status(FAILED)))
        status = failed["remote_config_status"]
        assert status["hash"] == OFFERED_HASH
        assert status["error"].startswith("rejected by ")
        assert "--apply=fail" in status["error"]  # the harness's own words, across the wire
        # The server offers it again on every poll. By the third offer, any answer to the
        # second has reached the server: none may say APPLIED or carry the config as effective.
        _nth(agent, 3, "message", lambda e: "remote_config" in e)
        mine = [
            e for e in server.seen if e["event"] == "agent_message" and e["instance_uid"] == uid
        ]
        assert not [e for e in mine if _status(APPLIED)(e)]
        assert not [e for e in mine if e.get("effective_config") == {"": OFFERED}]


def test_python_agent_reports_its_effective_config(reference_server: ReferenceServer) -> None:
    server = reference_server.harness
    with start_python_agent(
        reference_server.http_url, "--heartbeat=1s", "--effective-config=initial: true\n"
    ) as agent:
        uid = agent.wait_for("started")["instance_uid"]
        first = server.wait_for("agent_message", where=_from(uid))
        assert first["effective_config"] == {"": "initial: true\n"}
        # The offered config becomes the effective one in the report that says APPLIED.
        applied = server.wait_for("agent_message", where=_from(uid, _status(APPLIED)))
        assert applied["effective_config"] == {"": OFFERED}

        agent.send(cmd="effective_config", body="changed: locally\n")
        agent.wait_for("done", where=lambda e: e["cmd"] == "effective_config")
        changed = server.wait_for(
            "agent_message",
            where=_from(uid, lambda e: e.get("effective_config") == {"": "changed: locally\n"}),
        )
        assert changed["remote_config_status"]["status"] == APPLIED


def test_node_agent_changes_its_description_after_start(reference_server: ReferenceServer) -> None:
    server = reference_server.harness
    with start_node_agent(reference_server.http_url, "--heartbeat=1s") as agent:
        uid = agent.wait_for("started")["instance_uid"]
        server.wait_for("agent_message", where=_from(uid, _status(APPLIED)))
        agent.send(
            cmd="description",
            identifying={"service.name": "renamed"},
            non_identifying={"host.name": "h1"},
        )
        agent.wait_for("done", where=lambda e: e["cmd"] == "description")
        renamed = server.wait_for(
            "agent_message",
            where=_from(uid, lambda e: e.get("identifying") == {"service.name": "renamed"}),
        )
        assert renamed["non_identifying"] == {"host.name": "h1"}


@pytest.mark.parametrize(
    ("peer", "command"),
    [
        ("python", {"cmd": "health", "healthy": False, "last_error": "boom"}),
        ("python", {"cmd": "description", "identifying": {"service.name": "renamed"}}),
        ("node", {"cmd": "health", "healthy": False, "last_error": "boom"}),
        ("node", {"cmd": "effective_config", "body": "changed: locally\n"}),
    ],
)
def test_peer_answers_an_error_for_what_its_client_cannot_do(
    reference_server: ReferenceServer, peer: str, command: dict[str, Any]
) -> None:
    with START[peer](reference_server.http_url, "--heartbeat=1s") as agent:
        agent.wait_for("connected")
        agent.send(**command)
        error = agent.wait_for("error", where=lambda e: e["op"] == command["cmd"])
        assert "cannot" in error["error"]
        assert not [e for e in agent.seen if e["event"] == "done"]


@pytest.mark.parametrize(
    ("peer", "flag"),
    [
        ("python", "--unhealthy"),
        ("python", "--components=receivers/otlp"),
        ("node", "--unhealthy"),
        ("node", "--effective-config=initial: true"),
        ("node", "--components=receivers/otlp"),
    ],
)
def test_peer_refuses_to_start_with_a_flag_its_client_cannot_honour(
    reference_server: ReferenceServer, peer: str, flag: str
) -> None:
    with START[peer](reference_server.http_url, flag) as agent:
        fatal = agent.wait_for("fatal", timeout=15)
        assert flag.partition("=")[0] in fatal["error"]
        assert agent.proc.wait(timeout=10) == 1


@pytest.mark.parametrize("peer", ["python", "node"])
def test_peer_refuses_websocket(reference_server: ReferenceServer, peer: str) -> None:
    with START[peer](reference_server.ws_url) as agent:
        fatal = agent.wait_for("fatal", timeout=15)
        assert "HTTP only" in fatal["error"]
