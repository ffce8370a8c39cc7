"""Where the e2e module (tests/e2e) runs its operator and Collectors: the target.

OPAMP_E2E_TARGET=local (the default; CI): the test world's cluster. The chart is installed
with helm the way scripts/kind-e2e installs it (deploy/kind/values.yaml), except that the
webhook is off (this apiserver cannot reach Services: no kube-proxy). The operator runs as
a process with the arguments the chart gives its pod and the token of the chart's
ServiceAccount; only its listening address and the agents' endpoint are local. kwok runs
the fleet's pods, so a stand-in kubelet starts each pod's container here — the real
opampsupervisor and Collector, with the pod's environment (world/template.py).

OPAMP_E2E_TARGET=kind (scripts/kind-e2e): the cluster of $KUBECONFIG with the chart
installed from the image, and the fleet's pods running the Collector image
$OPAMP_E2E_COLLECTOR_IMAGE. The operator's API is reached through `kubectl
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

from opamp_operator.k8s.workload import CONFIG_KEY, WORKLOAD_LABEL, config_map_name
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
from world.processes import eventually, free_port
from world.template import PodVolumes, container_env, start_pod_supervisor

RELEASE = "opamp-operator"
API_PORT = ApiListen().port  # the chart's api.port default (tests/unit/test_settings.py)
RELEASE_NAMESPACE = "opamp-system"
KIND_VALUES = binaries.REPO_ROOT / "deploy" / "kind" / "values.yaml"
PLUGIN = Path(sys.executable).parent / "kubectl-opamp"
# The Collector in deploy/kind/collector/Dockerfile.
AGENT_EXECUTABLE = "/otelcol-opamp"
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
    operator_url: str
    """The operator's API (https), on this machine."""
    reader: Reader
    workdir: Path
    agents: dict[str, Agent] = field(default_factory=dict)  # pod uid -> its container
    volumes: list[PodVolumes] = field(default_factory=list)

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
        """Wait for `count` Running pods of the fleet's workload and make sure their
        Collectors run: on kind the kubelet does it, locally the stand-in does."""
        core: Any = k8s.CoreV1Api(self.api_client)

        def running() -> list[Any] | None:
            pods = core.list_namespaced_pod(
                namespace, label_selector=f"{WORKLOAD_LABEL}={fleet}"
            ).items
            up = [
                p
                for p in pods
                if p.status.phase == "Running"
                and p.status.pod_ip
                and p.metadata.deletion_timestamp is None
            ]
            return up if len(up) == count else None

        pods: list[Any] = eventually(f"{count} Running pods of {fleet}", running, timeout=WAIT)
        if self.name == "kind":
            return pods
        supervisor_yaml = core.read_namespaced_config_map(config_map_name(fleet), namespace).data[
            CONFIG_KEY
        ]
        for pod in pods:
            if pod.metadata.uid in self.agents:
                continue
            pod_json = self.api_client.sanitize_for_serialization(pod)
            workdir = self.workdir / pod.metadata.name
            # The ConfigMap's other file, the operator's CA, where the pod has it.
            volumes = PodVolumes(pod_json, self.api_client, workdir).mount()
            self.volumes.append(volumes)
            self.agents[pod.metadata.uid] = start_pod_supervisor(
                supervisor_yaml,
                pod_json,
                container_env(pod_json, self.api_client),
                workdir,
                health_url=f"http://{pod.status.pod_ip}:{HEALTH_PORT}/",
                volumes=volumes,
            )
        return pods


def kind_target(workdir: Path) -> Iterator[Target]:
    kubeconfig = Path(os.environ["KUBECONFIG"])
    image = os.environ.get("OPAMP_E2E_COLLECTOR_IMAGE")
    if not image:
        raise pytest.UsageError("OPAMP_E2E_TARGET=kind needs OPAMP_E2E_COLLECTOR_IMAGE")
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    reader = Reader.of(kubeconfig, workdir / "reader")
    try:
        with port_forward(kubeconfig, f"svc/{RELEASE}-api", API_PORT) as url:
            yield Target("kind", kubeconfig, api, image, url, reader, workdir)
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
            "kwok-runs-no-image",
            operator.api_url,
            reader,
            workdir,
        )
        yield target
    finally:
        for agent in target.agents.values() if target else ():
            agent.stop()
        for volumes in target.volumes if target else ():
            volumes.stop()
        if operator is not None:
            operator.stop()
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
