"""`kubectl opamp` against the local cluster: the installed console script run as a
process (and through the real kubectl binary, which finds it on PATH), reading fleets and
rollouts the operator really wrote, agents from its read API, and steering a rollout of
real opamp-go agents.

What the agents run is read from the agents themselves, not from the plugin's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from world import binaries
from world.cluster import LocalCluster
from world.fleets import (
    CONFIG_V1,
    CONFIG_V2,
    CONFIG_V3,
    PodAgents,
    create_fleet,
    create_rollout,
    rollout_status,
    set_fleet_config,
    single_file_hash,
)
from world.operator import OperatorProcess, start_operator
from world.processes import eventually

pytestmark = pytest.mark.world

PLUGIN = Path(sys.executable).parent / "kubectl-opamp"
LABELS = {"app": "collector"}
FLEET = "collectors"
ROLLOUT = "collectors"
BROKEN_MARK = "kubectl-plugin-proof: refused by one agent"
CONFIG_BAD = CONFIG_V1 + f"# {BROKEN_MARK}\n"
H1, H2, H3, HBAD = (single_file_hash(c) for c in (CONFIG_V1, CONFIG_V2, CONFIG_V3, CONFIG_BAD))


@pytest.fixture(scope="module")
def operator(
    crds: None, cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the module: each test has a namespace, fleet and agents of its own."""
    workdir = tmp_path_factory.mktemp("operator")
    with start_operator(cluster.kubeconfig, workdir, "--rollout-interval=1") as op:
        yield op


class Plugin:
    """Runs `kubectl-opamp` (or `kubectl opamp`) the way a user's shell does."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.ns = namespace
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.env.pop("OPAMP_OPERATOR_URL", None)

    def run(
        self, *args: str, kubectl: bool = False, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(binaries.find("kubectl")), "opamp"] if kubectl else [str(PLUGIN)]
        done = subprocess.run(
            [*argv, *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        assert "Traceback" not in done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    def rows(self, *args: str, kubectl: bool = False) -> list[dict[str, str]]:
        """A table the plugin printed, as one dict per row keyed by header."""
        lines = self.run(*args, kubectl=kubectl).stdout.splitlines()
        if not lines:
            return []
        headers = lines[0].split()
        return [dict(zip(headers, line.split(), strict=True)) for line in lines[1:]]

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(PLUGIN), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


class Agents(PodAgents):
    """opamp-go agents, one per kwok pod, claimed by pod uid."""

    def __init__(self, api_client: Any, namespace: str, operator: OperatorProcess) -> None:
        super().__init__(api_client, namespace, LABELS, operator.ws_url)

    def deploy(self, pods: int, *failing: int) -> list[Any]:
        """`pods` pods with an agent each; the agents at indexes `failing` refuse configs
        containing BROKEN_MARK."""
        found = super().deploy(pods)
        for i, pod in enumerate(found):
            self.start_agent(pod, *([f"--fail-containing={BROKEN_MARK}"] if i in failing else []))
        return found


@pytest.fixture
def agents(operator: OperatorProcess, api_client: Any, namespace: str) -> Iterator[Agents]:
    a = Agents(api_client, namespace, operator)
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def plugin(cluster: LocalCluster, namespace: str) -> Plugin:
    return Plugin(cluster.kubeconfig, namespace)


def test_fleets_and_agents(
    agents: Agents, plugin: Plugin, operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    pods = agents.deploy(3, 0)
    failing_pod = f"{namespace}/{pods[0].metadata.name}"
    create_fleet(api_client, namespace, FLEET, LABELS, CONFIG_V1)
    agents.wait_on(H1, 3, "every agent on v1")

    def counted(kubectl: bool = False) -> dict[str, str] | None:
        rows = plugin.rows("fleets", "-n", namespace, kubectl=kubectl)
        ok = rows and rows[0]["AGENTS"] == "3" and rows[0]["APPLIED"] == "3"
        return rows[0] if ok and rows[0]["READY"] == "True" else None

    row = eventually("the fleets table to count three applied agents", counted)
    assert row["NAME"] == FLEET
    assert (row["HEALTHY"], row["UNHEALTHY"], row["FAILED"], row["DRIFTED"]) == ("3", "0", "0", "0")
    assert row["DESIRED"] == row["STABLE"]
    assert row["DESIRED"].startswith(f"{FLEET}-")
    assert row["AGE"].endswith("s")
    # The same through kubectl itself, which finds the plugin on PATH.
    same = {k: v for k, v in row.items() if k != "AGE"}
    through_kubectl = counted(kubectl=True)
    assert through_kubectl is not None
    assert {k: v for k, v in through_kubectl.items() if k != "AGE"} == same
    everywhere = plugin.rows("fleets", "-A", kubectl=True)
    assert {"NAMESPACE": namespace, **same} in [
        {k: v for k, v in r.items() if k != "AGE"} for r in everywhere
    ]
    listed = json.loads(plugin.run("fleets", "-n", namespace, "-o", "json").stdout)
    assert listed["kind"] == "List"
    assert listed["items"][0]["status"]["configApplied"] == 3

    # The API's certificate is self-signed; the plugin presents the admin's client
    # certificate from the kubeconfig (test_api_access.py covers who may read what).
    url = operator.api_url
    api = ("--operator-url", url, "--insecure-skip-tls-verify")
    rows = plugin.rows("agents", FLEET, "-n", namespace, *api)
    assert {r["POD"] for r in rows} == {f"{namespace}/{p.metadata.name}" for p in pods}
    assert {(r["RULE"], r["CONNECTED"], r["HEALTHY"], r["CONFIG"]) for r in rows} == {
        ("k8s.pod.uid", "True", "True", "Applied")
    }
    assert {r["REVISION"] for r in rows} == {"desired"}

    # One agent refuses the next config: --state picks it out.
    set_fleet_config(api_client, namespace, FLEET, CONFIG_BAD)
    agents.wait_on(HBAD, 1, "the refusing agent to report FAILED", status="FAILED")
    failed = eventually(
        "the read API to see the failure",
        lambda: (
            plugin.rows(
                "agents",
                FLEET,
                "-n",
                namespace,
                "--operator-url",
                url,
                "--insecure-skip-tls-verify",
                "--state",
                "failed",
            )
            or None
        ),
    )
    assert [r["POD"] for r in failed] == [failing_pod]
    assert failed[0]["CONFIG"] == "Failed"
    as_json = json.loads(
        plugin.run(
            "agents",
            FLEET,
            "-n",
            namespace,
            "--state",
            "failed",
            "-o",
            "json",
            *api,
        ).stdout
    )
    assert as_json["count"] == 1
    assert as_json["agents"][0]["remoteConfigStatus"] == "FAILED"
    healthy = plugin.rows(
        "agents",
        FLEET,
        "-n",
        namespace,
        "--operator-url",
        url,
        "--insecure-skip-tls-verify",
        "--state",
        "healthy",
    )
    assert len(healthy) == 3
    none = plugin.run(
        "agents",
        FLEET,
        "-n",
        namespace,
        "--operator-url",
        url,
        "--insecure-skip-tls-verify",
        "--state",
        "unmapped",
    )
    assert none.stdout == ""
    assert "No agents in state unmapped" in none.stderr

    # Without --operator-url: the error says how to reach the API.
    nowhere = plugin.run("agents", FLEET, "-n", namespace, ok=False)
    assert nowhere.returncode == 1
    assert "port-forward svc/opamp-operator-api" in nowhere.stderr
    # The self-signed certificate is not trusted unless the user says so.
    untrusted = plugin.run("agents", FLEET, "-n", namespace, "--operator-url", url, ok=False)
    assert untrusted.returncode == 1
    assert "certificate" in untrusted.stderr
    assert "--operator-ca-file" in untrusted.stderr

    # Unreachable operators: a clear message and exit code 1.
    down = plugin.run(
        "agents", FLEET, "-n", namespace, "--operator-url", "https://127.0.0.1:1", ok=False
    )
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot reach the operator at https://127.0.0.1:1")
    unknown = plugin.run(
        "agents",
        "no-such-fleet",
        "-n",
        namespace,
        "--operator-url",
        url,
        "--insecure-skip-tls-verify",
        ok=False,
    )
    assert unknown.returncode == 1
    assert "no CollectorFleet" in unknown.stderr


def _phase(api_client: Any, namespace: str, phase: str, **where: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        s = rollout_status(api_client, namespace, ROLLOUT)
        ok = s.get("phase") == phase and all(s.get(k) == v for k, v in where.items())
        return s if ok else None

    found: dict[str, Any] = eventually(f"rollout phase {phase} {where}", check)
    return found


def _spec_paused(api_client: Any, namespace: str) -> bool:
    co: Any = k8s.CustomObjectsApi(api_client)
    obj = co.get_namespaced_custom_object(
        "opampoperator.io", "v1alpha1", namespace, "configrollouts", ROLLOUT
    )
    return bool(obj["spec"].get("paused"))


def test_rollout_commands(agents: Agents, plugin: Plugin, api_client: Any, namespace: str) -> None:
    agents.deploy(3)
    create_fleet(api_client, namespace, FLEET, LABELS, CONFIG_V1)
    agents.wait_on(H1, 3, "every agent on v1")
    create_rollout(
        api_client,
        namespace,
        ROLLOUT,
        FLEET,
        steps=[{"agents": 1, "pause": {"untilPromoted": True}}, {"percent": 100}],
    )
    _phase(api_client, namespace, "Succeeded")
    set_fleet_config(api_client, namespace, FLEET, CONFIG_V2)
    status = _phase(api_client, namespace, "Paused", currentStep=0, desiredHash=H2)
    canary = agents.wait_on(H2, 1, "the canary on v2")

    text = plugin.run("rollout", "status", ROLLOUT, "-n", namespace).stdout
    assert "Phase:    Paused (Step)" in text
    assert "Step:     1/2" in text
    assert f"Desired:  {status['desiredRevision']} ({H2[:12]})" in text
    assert f"Stable:   {status['stableRevision']} ({H1[:12]})" in text
    assert "1 agent, pause until promoted" in text
    assert "Conditions:" in text

    watch = plugin.start("rollout", "status", ROLLOUT, "-n", namespace, "--watch")
    try:
        time.sleep(2)  # a hold, on purpose: nothing may end the watch while paused
        assert watch.poll() is None, "the watch ended while the rollout was paused"
        promoted = plugin.run("rollout", "promote", ROLLOUT, "-n", namespace)
        assert "promote requested" in promoted.stdout
        assert promoted.stderr == ""
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    lines = out.splitlines()
    assert "Paused/Step" in lines[0]
    assert "Succeeded" in lines[-1]
    assert len(lines) >= 3, out  # paused, the next step, succeeded
    agents.wait_on(H2, 3, "every agent on v2 after the promote")
    assert canary <= agents.on(H2)

    history = plugin.rows("rollout", "history", ROLLOUT, "-n", namespace)
    assert [(r["REVISION"], r["HASH"], r["ROLE"]) for r in history] == [
        ("1", H1[:12], "-"),
        ("2", H2[:12], "DESIRED,STABLE"),
    ]

    # pause / resume edit spec.paused; a new revision waits while paused.
    assert "paused" in plugin.run("rollout", "pause", ROLLOUT, "-n", namespace).stdout
    assert _spec_paused(api_client, namespace)
    set_fleet_config(api_client, namespace, FLEET, CONFIG_V3)
    _phase(api_client, namespace, "Paused", desiredHash=H3, pauseReason="SpecPaused")
    time.sleep(2)  # a hold, on purpose: a paused rollout offers v3 to no one meanwhile
    assert agents.on(H3) == set()
    warned = plugin.run("rollout", "promote", ROLLOUT, "-n", namespace)
    assert "warning:" in warned.stderr
    assert "resume" in warned.stderr
    plugin.run("rollout", "resume", ROLLOUT, "-n", namespace)
    assert not _spec_paused(api_client, namespace)
    _phase(api_client, namespace, "Paused", desiredHash=H3, pauseReason="Step", currentStep=0)
    agents.wait_on(H3, 1, "the canary on v3")

    # abort rolls every agent back to the stable revision; retry starts over.
    plugin.run("rollout", "abort", ROLLOUT, "-n", namespace)
    aborted = _phase(api_client, namespace, "Aborted")
    agents.wait_on(H2, 3, "every agent back on v2 after the abort")
    text = plugin.run("rollout", "status", ROLLOUT, "-n", namespace).stdout
    assert "Phase:    Aborted" in text
    conditions = text.split("Conditions:\n")[1].splitlines()
    assert ["Stalled", "True", "Aborted"] in [line.split()[:3] for line in conditions]
    history = plugin.rows("rollout", "history", ROLLOUT, "-n", namespace)
    assert [(r["HASH"], r["ROLE"]) for r in history][-2:] == [
        (H2[:12], "STABLE"),
        (H3[:12], "DESIRED"),
    ]
    ended = plugin.run("rollout", "status", ROLLOUT, "-n", namespace, "--watch", ok=False)
    assert ended.returncode == 1  # Aborted is terminal, and not a success
    assert "Aborted" in ended.stdout

    plugin.run("rollout", "retry", ROLLOUT, "-n", namespace)
    _phase(
        api_client, namespace, "Paused", attempt=(aborted.get("attempt") or 1) + 1, currentStep=0
    )
    agents.wait_on(H3, 1, "the canary on v3 again")
    as_yaml = plugin.run("rollout", "status", ROLLOUT, "-n", namespace, "-o", "yaml").stdout
    assert "kind: ConfigRollout" in as_yaml


def test_errors_are_short(plugin: Plugin, crds: None, namespace: str, tmp_path: Path) -> None:
    missing = plugin.run("rollout", "status", "nothing", "-n", namespace, ok=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f'error: configrollouts.opampoperator.io "nothing" not found in namespace "{namespace}"'
    )
    empty = plugin.run("fleets", "-n", namespace, kubectl=True)
    assert empty.stdout == ""
    assert empty.stderr.strip() == f"No resources found in {namespace} namespace."
    bad = plugin.run("fleets", "--kubeconfig", str(tmp_path / "absent"), ok=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: cannot load the kubeconfig")
