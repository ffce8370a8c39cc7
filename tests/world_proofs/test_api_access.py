"""Who may read the operator's API, decided by the real cluster: `opamp-operator run`'s
API listener against real users (ServiceAccount tokens through TokenReview, the admin's
client certificate through the cluster's client CA), each given exactly the RBAC the
test names, and a real opamp-go agent reporting a Collector-style redacted config.

The attacks tried: no credential, a forged token, a user reading a fleet their RBAC does
not cover (same namespace, other namespace, the raw agent listing, /metrics), and any
response, Event or plugin output echoing a secret from the desired config.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from world.chart import token_kubeconfig
from world.cluster import LocalCluster
from world.collector import start_go_agent
from world.fleets import create_fleet, deploy_running, single_file_hash
from world.operator import OperatorProcess, start_operator
from world.processes import eventually
from world.users import FLEET_READER_RULES, grant, user

pytestmark = pytest.mark.world

PLUGIN = Path(sys.executable).parent / "kubectl-opamp"
LABELS = {"app": "collector"}
SECRET = f"sk_live_{secrets.token_hex(12)}"
CONFIG = f"""\
receivers:
  otlp:
    protocols:
      grpc: {{}}
exporters:
  debug: {{}}
  otlphttp:
    endpoint: https://telemetry.example.invalid
    headers:
      x-api-key: {SECRET}
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug, otlphttp]
"""
# What a Collector reports back: the secret as `[REDACTED]`, and one real difference.
EFFECTIVE = CONFIG.replace(SECRET, "'[REDACTED]'").replace(
    "debug: {}", "debug: {verbosity: detailed}"
)


def _get(op: OperatorProcess, path: str, token: str | None = None) -> tuple[int, Any]:
    """GET on the API listener as a token's user, or with no credential at all."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(f"{op.api_url}{path}")  # noqa: S310 - https to loopback
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:  # noqa: S310
            body, status = r.read(), r.status
    except urllib.error.HTTPError as error:
        body, status = error.read(), error.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


@pytest.fixture
def operator(crds: None, cluster: LocalCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with start_operator(cluster.kubeconfig, tmp_path) as op:
        yield op


@pytest.fixture
def other_namespace(api_client: Any) -> Iterator[str]:
    core: Any = k8s.CoreV1Api(api_client)
    ns = core.create_namespace({"metadata": {"generateName": "api-access-other-"}}).metadata.name
    yield ns
    core.delete_namespace(ns)


def test_the_api_answers_only_whom_kubernetes_allows(
    operator: OperatorProcess,
    api_client: Any,
    cluster: LocalCluster,
    *,
    namespace: str,
    other_namespace: str,
    tmp_path: Path,
) -> None:
    create_fleet(api_client, namespace, "collectors", LABELS, CONFIG)
    create_fleet(api_client, other_namespace, "elsewhere", LABELS, CONFIG)
    (pod,) = deploy_running(api_client, namespace, LABELS, 1)
    agent = start_go_agent(
        operator.ws_url, "--heartbeat=1s", f"--attr=k8s.pod.uid={pod.metadata.uid}"
    )
    try:
        agent.wait_for(
            "remote_config_status",
            timeout=60,
            where=lambda e: (
                e["status"].endswith("APPLIED") and e["config_hash"] == single_file_hash(CONFIG)
            ),
        )
        agent.send(cmd="effective_config", body=EFFECTIVE)
        alice = user(api_client, namespace, "alice")
        grant(api_client, namespace, "alice", FLEET_READER_RULES)
        bob = user(api_client, namespace, "bob")
        carol = user(api_client, namespace, "carol")
        grant(
            api_client,
            namespace,
            "carol",
            [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
            cluster=True,
        )
        fleet_agents = f"/api/v1/fleets/{namespace}/collectors/agents"
        shown: list[str] = []

        def as_(token: str | None, path: str, expected: int) -> Any:
            status, body = _get(operator, path, token)
            assert status == expected, (path, status, body)
            shown.append(json.dumps(body))
            return body

        # No credential, or a forged one: 401 everywhere but the probes.
        for path in (fleet_agents, "/api/v1/fleets", "/api/v1/agents", "/metrics"):
            as_(None, path, 401)
            as_("not-a-token", path, 401)
            as_(alice[:-4] + "AAAA", path, 401)
        assert as_(None, "/healthz", 200) == "ok"
        assert as_(None, "/readyz", 200) == "ok"

        # bob is authenticated but has no RBAC: 403 that names what to grant, and an
        # empty listing rather than other namespaces' fleets.
        refused = as_(bob, fleet_agents, 403)
        assert refused["error"] == (
            f"system:serviceaccount:{namespace}:bob cannot get "
            f"collectorfleets.opampoperator.io collectors in namespace {namespace}"
        )
        assert as_(bob, "/api/v1/fleets", 200)["count"] == 0
        as_(bob, "/metrics", 403)
        # 403 before 404: a refused user cannot probe which fleets exist.
        as_(bob, f"/api/v1/fleets/{namespace}/no-such-fleet", 403)

        # alice may get fleets in her namespace only.
        listed = as_(alice, fleet_agents, 200)
        assert listed["count"] == 1
        uid = listed["agents"][0]["instanceUid"]

        def detail() -> dict[str, Any] | None:
            found: dict[str, Any] = as_(alice, f"{fleet_agents}/{uid}", 200)
            return found if "verbosity" in found["diff"] else None

        agent_detail = eventually("the reported effective config in the API", detail)
        assert "+    verbosity: detailed" in agent_detail["diff"]
        assert "[REDACTED]" in agent_detail["effectiveConfig"]
        as_(alice, f"/api/v1/fleets/{other_namespace}/elsewhere/agents", 403)
        as_(alice, f"/api/v1/fleets/{other_namespace}/elsewhere", 403)
        assert [f["namespace"] for f in as_(alice, "/api/v1/fleets", 200)["fleets"]] == [namespace]
        as_(alice, "/api/v1/agents", 403)
        as_(alice, f"/api/v1/agents/{uid}", 403)
        as_(alice, "/metrics", 403)

        # carol holds the nonResourceURL grant for /metrics, and nothing else.
        assert "opamp_messages_total" in as_(carol, "/metrics", 200)
        as_(carol, fleet_agents, 403)

        # The admin's client certificate (system:masters) reads the raw agent view.
        raw = operator.get(f"/api/v1/agents/{uid}")
        shown.append(json.dumps(raw))
        assert "[REDACTED]" in json.dumps(raw["effective_config"])

        # The kubectl plugin, as alice and as bob, with their own kubeconfigs.
        for name, token, ok in (("alice", alice, True), ("bob", bob, False)):
            kubeconfig = token_kubeconfig(cluster, token, tmp_path / f"{name}.kubeconfig")
            done = subprocess.run(
                [
                    str(PLUGIN),
                    "agents",
                    "collectors",
                    "-n",
                    namespace,
                    "--operator-url",
                    operator.api_url,
                    "--insecure-skip-tls-verify",
                    "-o",
                    "json",
                ],
                env={"KUBECONFIG": str(kubeconfig), "PATH": str(PLUGIN.parent)},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert "Traceback" not in done.stderr, done.stderr
            shown += [done.stdout, done.stderr]
            if ok:
                assert done.returncode == 0, done.stderr
                assert json.loads(done.stdout)["count"] == 1
            else:
                assert done.returncode == 1
                assert "answered 403" in done.stderr
                assert "cannot get collectorfleets.opampoperator.io collectors" in done.stderr

        # No secret literal in anything the API, the plugin or the Events showed.
        events: Any = k8s.CoreV1Api(api_client).list_namespaced_event(namespace)
        shown += [f"{e.reason} {e.message}" for e in events.items]
        leaks = [s for s in shown if SECRET in s]
        assert not leaks, leaks
    finally:
        agent.stop()
