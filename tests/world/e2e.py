"""Where the e2e module (tests/e2e) runs its operator and Collectors: the target.

OPAMP_E2E_TARGET=local (the default; CI): the test world's cluster. The chart is installed
with helm the way scripts/kind-e2e installs it (deploy/kind/values.yaml), except that the
webhook is off (this apiserver cannot reach Services: no kube-proxy). The operator runs as
a process with the arguments the chart gives its pod and the token of the chart's
ServiceAccount; only its listening address and the agents' endpoint are local. kwok runs
the fleet's pods, so a stand-in kubelet starts each pod's container here — the real
opampsupervisor and the Collector build the pod's image names, with the pod's environment
— and kills it when its pod goes (world/pod_runner.py).

OPAMP_E2E_TARGET=kind (scripts/kind-e2e): the cluster of $KUBECONFIG with the chart
installed from the image, and the fleet's pods running the Collector image
$OPAMP_E2E_COLLECTOR_IMAGE, then the same Collector built with another version,
$OPAMP_E2E_COLLECTOR_IMAGE_NEXT (the image upgrade). The operator's API is reached through `kubectl
port-forward` to its API Service, as docs/kubectl-plugin.md tells users to.

Either way the API is read with the kubeconfig's own credentials (the admin's client
certificate), which the operator checks with the cluster, as it does for any user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from opamp_operator.server.api import ApiListen
from world import binaries
from world.chart import (
    CHART,
    args_with_mounted_secrets,
    helm,
    remove_chart_crds,
    service_account_token,
    token_kubeconfig,
)
from world.cluster import LocalCluster
from world.collector import Agent
from world.operator import OperatorProcess, Reader, spawn_operator
from world.pod_runner import PodRunner
from world.processes import eventually, free_port

RELEASE = "opamp-operator"
API_PORT = ApiListen().port  # the chart's api.port default (tests/unit/test_settings.py)
RELEASE_NAMESPACE = "opamp-system"
KIND_VALUES = binaries.REPO_ROOT / "deploy" / "kind" / "values.yaml"
PLUGIN = Path(sys.executable).parent / "kubectl-opamp"
# The Collector in deploy/kind/collector/Dockerfile.
AGENT_EXECUTABLE = "/otelcol-opamp"
# The test world's two builds of it (scripts/test-deps): the images' Collectors.
COLLECTOR = "otelcol-opamp"
COLLECTOR_NEXT = "otelcol-opamp-next"
HEALTH_PORT = 13133
WAIT = 180.0


def target_name() -> str:
    name = os.environ.get("OPAMP_E2E_TARGET", "local")
    if name not in ("local", "kind"):
        raise pytest.UsageError(f"OPAMP_E2E_TARGET must be local or kind, not {name!r}")
    return name


@dataclass
class Target:
    """What a test needs to know about where it runs; see the module docstring."""

    name: str
    kubeconfig: Path
    api_client: Any
    collector_image: str
    collector_image_next: str
    """The same Collector built with another version: what an image upgrade rolls out."""
    operator_url: str
    """The operator's API (https), on this machine."""
    reader: Reader
    workdir: Path
    runners: dict[str, PodRunner] = field(default_factory=dict)  # local: per namespace

    def operator_get(self, path: str) -> str:
        """GET a path of the operator's API, as text, as the kubeconfig's user."""
        request = urllib.request.Request(f"{self.operator_url}{path}")  # noqa: S310
        if self.reader.token:
            request.add_header("Authorization", f"Bearer {self.reader.token}")
        with urllib.request.urlopen(request, timeout=10, context=self.reader.context) as r:  # noqa: S310
            return str(r.read().decode())

    def plugin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`kubectl opamp ARGS` as a user runs it against this target."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env["OPAMP_OPERATOR_URL"] = self.operator_url
        return subprocess.run(
            [str(PLUGIN), *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    def fleet_agents(self, namespace: str, fleet: str) -> list[dict[str, Any]]:
        # The API's certificate is the chart's self-signed default.
        insecure = "--insecure-skip-tls-verify"
        done = self.plugin("agents", fleet, "-n", namespace, "-o", "json", insecure)
        assert done.returncode == 0, done.stderr
        agents: list[dict[str, Any]] = json.loads(done.stdout)["agents"]
        return agents

    def run_pods(self, namespace: str, fleet: str, count: int) -> list[Any]:
        """Wait for `count` Running pods of the fleet (selected by its label `app`, a
        canary Deployment's too) whose Collectors run: on kind the kubelet runs them,
        locally the namespace's pod runner."""
        core: Any = k8s.CoreV1Api(self.api_client)
        runner = self._runner(namespace, fleet)

        def running() -> list[Any] | None:
            pods = core.list_namespaced_pod(namespace, label_selector=f"app={fleet}").items
            up = [
                p
                for p in pods
                if p.status.phase == "Running"
                and p.status.pod_ip
                and p.metadata.deletion_timestamp is None
            ]
            if len(up) != count:
                return None
            if runner is not None and set(runner.running()) != {p.metadata.name for p in up}:
                return None
            return up

        pods: list[Any] = eventually(f"{count} Running pods of {fleet}", running, timeout=WAIT)
        return pods

    def collectors(self) -> list[Agent]:
        """Locally, the supervisors the pod runners run now (none on kind)."""
        return [agent for runner in self.runners.values() for agent in runner.agents()]

    def _runner(self, namespace: str, fleet: str) -> PodRunner | None:
        if self.name == "kind":
            return None
        if namespace not in self.runners:
            images = {self.collector_image: COLLECTOR, self.collector_image_next: COLLECTOR_NEXT}
            self.runners[namespace] = PodRunner(
                self.api_client,
                namespace,
                f"app={fleet}",
                images,
                self.workdir / "pods" / namespace,
                health_port=HEALTH_PORT,
            ).start()
        runner = self.runners[namespace]
        runner.check()
        return runner

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close(check=False)


def kind_target(workdir: Path) -> Iterator[Target]:
    kubeconfig = Path(os.environ["KUBECONFIG"])
    image = os.environ.get("OPAMP_E2E_COLLECTOR_IMAGE")
    image_next = os.environ.get("OPAMP_E2E_COLLECTOR_IMAGE_NEXT")
    if not image or not image_next:
        raise pytest.UsageError(
            "OPAMP_E2E_TARGET=kind needs OPAMP_E2E_COLLECTOR_IMAGE and "
            "OPAMP_E2E_COLLECTOR_IMAGE_NEXT"
        )
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    reader = Reader.of(kubeconfig, workdir / "reader")
    try:
        with port_forward(kubeconfig, f"svc/{RELEASE}-api", API_PORT) as url:
            yield Target("kind", kubeconfig, api, image, image_next, url, reader, workdir)
    finally:
        api.close()


@contextlib.contextmanager
def port_forward(kubeconfig: Path, what: str, port: int) -> Iterator[str]:
    """`kubectl port-forward WHAT :PORT` in the release's namespace; yields the local
    https URL kubectl chose."""
    proc = subprocess.Popen(
        [
            str(binaries.find("kubectl")),
            f"--kubeconfig={kubeconfig}",
            f"--namespace={RELEASE_NAMESPACE}",
            "port-forward",
            what,
            f":{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"kubectl port-forward said: {line!r}"
        yield f"https://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def local_target(cluster: LocalCluster, workdir: Path) -> Iterator[Target]:
    admin = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    home = workdir / "helm"
    installed = False
    operator: OperatorProcess | None = None
    target: Target | None = None
    try:
        helm(
            cluster.kubeconfig,
            home,
            "install",
            RELEASE,
            str(CHART),
            f"--namespace={RELEASE_NAMESPACE}",
            "--create-namespace",
            # clusterWide: true there: the tests create namespaces of random names.
            f"--values={KIND_VALUES}",
            "--set=webhook.enabled=false",
            "--wait",
            "--timeout=120s",
        )
        installed = True
        operator = _operator_as_the_chart_runs_it(cluster, admin, workdir)
        reader = Reader.of(cluster.kubeconfig, workdir / "reader")
        target = Target(
            "local",
            cluster.kubeconfig,
            admin,
            # kwok pulls nothing: the pod runner maps these names to the test world's
            # two builds of the Collector.
            "registry.test/otelcol:e2e",
            "registry.test/otelcol:e2e-next",
            operator.api_url,
            reader,
            workdir,
        )
        yield target
    finally:
        if target is not None:
            target.close()
        if operator is not None:
            # SIGTERM now; its exit is waited for with the cluster's, as other
            # modules' operators are: its handlers are cancelled at once, so it neither
            # races the uninstall below nor holds a port anyone needs.
            operator.stop_in_background()
        if installed:
            helm(
                cluster.kubeconfig,
                home,
                "uninstall",
                RELEASE,
                f"--namespace={RELEASE_NAMESPACE}",
                "--wait",
            )
            remove_chart_crds(admin)
            k8s.CoreV1Api(admin).delete_namespace(RELEASE_NAMESPACE)
        admin.close()


def _operator_as_the_chart_runs_it(
    cluster: LocalCluster, admin: Any, workdir: Path
) -> OperatorProcess:
    """The chart's Deployment's own arguments (its mounted Secrets' files at a local path:
    the certificate Helm made for the agents' port, and its CA for template-mode pods)
    and ServiceAccount token; the address it listens on and tells agents about is this
    machine's, not its Service's, which the certificate names as 127.0.0.1."""
    apps: Any = k8s.AppsV1Api(admin)
    pod = apps.read_namespaced_deployment(RELEASE, RELEASE_NAMESPACE).spec.template.spec
    (container,) = pod.containers
    assert container.command == ["opamp-operator"]
    args = args_with_mounted_secrets(admin, pod, container, RELEASE_NAMESPACE, workdir / "mounts")
    assert "--agent-ca-file" in args, "the chart's default: TLS with a CA of its own"
    token = service_account_token(admin, pod.service_account_name, RELEASE_NAMESPACE)
    kubeconfig = token_kubeconfig(cluster, token, workdir / "operator.kubeconfig")
    port = free_port()
    argv = [
        *args,
        "--host=127.0.0.1",
        f"--port={port}",
        f"--agent-endpoint=wss://127.0.0.1:{port}/v1/opamp",
    ]
    # Its API is read as the cluster's admin (a client certificate), not as the operator.
    return spawn_operator(
        kubeconfig, workdir / "operator", argv, port, reader_kubeconfig=cluster.kubeconfig
    )
