"""CollectorFleets on the local cluster for operator proofs: the CRD, kwok-run workloads,
fleet objects and their status, and what the real agents look like from outside.

Plain functions over a kubernetes ApiClient; test modules wrap them in fixtures.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import GROUP, VERSION
from opamp_operator.k8s.reads import get_or_none
from world import binaries
from world.cluster import LocalCluster
from world.collector import JsonlProcess, start_go_agent
from world.processes import eventually

CRD_FILE = binaries.REPO_ROOT / "deploy" / "crds" / f"collectorfleets.{GROUP}.yaml"
ROLLOUT_CRD_FILE = binaries.REPO_ROOT / "deploy" / "crds" / f"configrollouts.{GROUP}.yaml"
CRD_FILES = (CRD_FILE, ROLLOUT_CRD_FILE)
PLURAL = "collectorfleets"
ROLLOUTS = "configrollouts"
# A small complete Collector config (a traces pipeline) and two versions of it that differ
# in one value: what the operator proofs offer and roll out.
CONFIG_V1 = """\
receivers:
  otlp:
    protocols:
      grpc: {}
exporters:
  debug: {}
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
"""
CONFIG_V2 = CONFIG_V1.replace("debug: {}", "debug: {verbosity: detailed}")
CONFIG_V3 = CONFIG_V1.replace("debug: {}", "debug: {verbosity: basic}")


def _read_crd(ext: Any, name: str) -> Any | None:
    return get_or_none(ext.read_custom_resource_definition, name)


def release_fleets(api_client: Any) -> int:
    """Drop the finalizers of every CollectorFleet left on the cluster; returns how many.

    kopf puts a finalizer on fleets (their status timer must be stopped before they go);
    once the operator that put it there has stopped, nothing would remove it, and the
    fleet, its namespace and the CRD would stay Terminating for good.
    """
    co: Any = k8s.CustomObjectsApi(api_client)
    released = 0
    for plural in (PLURAL, ROLLOUTS):
        try:
            items = co.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        except ApiException as error:
            if error.status == 404:
                continue  # that CRD is not installed
            raise
        for item in items:
            meta = item["metadata"]
            if not meta.get("finalizers"):
                continue
            try:
                co.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    meta["namespace"],
                    plural,
                    meta["name"],
                    {"metadata": {"finalizers": None}},
                )
                released += 1
            except ApiException as error:
                if error.status != 404:
                    raise
    return released


def _gone(ext: Any, name: str) -> Callable[[], bool]:
    return lambda: _read_crd(ext, name) is None


def _established(ext: Any, name: str) -> Callable[[], bool]:
    return lambda: any(
        c.type == "Established" and c.status == "True"
        for c in ext.read_custom_resource_definition(name).status.conditions or []
    )


def install_crd(api_client: Any, timeout: float = 60.0) -> bool:
    """Create the operator's CRDs (CollectorFleet, ConfigRollout) and wait until they are
    served. True when this call created them; False when they were already there
    (someone else's, left for them to remove).

    CRDs another module left being deleted are helped along (see `release_fleets`) and
    waited out first.
    """
    ext: Any = k8s.ApiextensionsV1Api(api_client)
    created = False
    for path in CRD_FILES:
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        existing = _read_crd(ext, name)
        if existing is not None and existing.metadata.deletion_timestamp is not None:
            release_fleets(api_client)
            eventually(f"CRD {name} to finish deleting", _gone(ext, name), timeout)
            existing = None
        if existing is None:
            ext.create_custom_resource_definition(crd)
            created = True
        eventually(f"the CRD {name} to be served", _established(ext, name), timeout)
    return created


def remove_crd(api_client: Any, timeout: float = 120.0) -> None:
    """Delete the operator's CRDs and wait until they are gone, so the next module that
    installs them starts clean. Call it once no operator runs: finalizers are dropped
    first."""
    ext: Any = k8s.ApiextensionsV1Api(api_client)
    release_fleets(api_client)
    for path in CRD_FILES:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        try:
            ext.delete_custom_resource_definition(name)
        except ApiException as error:
            if error.status != 404:
                raise
        eventually(f"CRD {name} to be deleted", _gone(ext, name), timeout)


def create_deployment(
    api_client: Any,
    namespace: str,
    name: str,
    labels: dict[str, str],
    *,
    replicas: int = 1,
    readiness_gates: tuple[str, ...] = (),
    service_account: str | None = None,
) -> None:
    """A Deployment kwok runs (the image is never pulled); its pods carry `labels`."""
    apps: Any = k8s.AppsV1Api(api_client)
    pod_spec: dict[str, Any] = {"containers": [{"name": "otelcol", "image": "otelcol:0.149.0"}]}
    if service_account is not None:
        pod_spec["serviceAccountName"] = service_account
    if readiness_gates:
        pod_spec["readinessGates"] = [{"conditionType": g} for g in readiness_gates]
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        },
    )


def deploy_running(api_client: Any, namespace: str, labels: dict[str, str], pods: int) -> list[Any]:
    """A Deployment `collector` of `pods` kwok pods carrying `labels`, once all run."""
    create_deployment(api_client, namespace, "collector", labels, replicas=pods)
    found: list[Any] = eventually(
        f"{pods} Running pods",
        lambda: p if len(p := running_pods(api_client, namespace, labels)) == pods else None,
    )
    return found


def workload_report(api_client: Any, cluster: LocalCluster, namespace: str) -> str:
    """What the controllers and kwok made of the Deployments in `namespace`, with the tail
    of their logs: for a test that timed out waiting for one to become available."""
    apps: Any = k8s.AppsV1Api(api_client)
    core: Any = k8s.CoreV1Api(api_client)
    lines = [
        f"deployment {d.metadata.name}: {d.status}"
        for d in apps.list_namespaced_deployment(namespace).items
    ]
    lines += [
        f"replicaset {r.metadata.name}: {r.status}"
        for r in apps.list_namespaced_replica_set(namespace).items
    ]
    lines += [
        f"pod {p.metadata.name} {p.status.phase}: {p.status.conditions}"
        for p in core.list_namespaced_pod(namespace).items
    ]
    lines += [
        f"{rec.name} log:\n{rec.log_tail(20)}"
        for rec in cluster.processes
        if rec.name in ("kube-controller-manager", "kwok")
    ]
    return "\n".join(lines)


def running_pods(api_client: Any, namespace: str, labels: dict[str, str]) -> list[Any]:
    """Pods with `labels` that kwok reports Running with an IP."""
    core: Any = k8s.CoreV1Api(api_client)
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]


def pod_condition(api_client: Any, namespace: str, name: str, condition: str) -> str | None:
    """The status ("True"/"False") of one condition of a pod; None when it has none."""
    core: Any = k8s.CoreV1Api(api_client)
    pod = core.read_namespaced_pod(name, namespace)
    return next(
        (c.status for c in pod.status.conditions or [] if c.type == condition),
        None,
    )


def create_fleet(
    api_client: Any,
    namespace: str,
    name: str,
    labels: dict[str, str],
    config: str,
    **spec: Any,
) -> None:
    """A CollectorFleet selecting `labels` with an inline `config`; `spec`: more fields
    (camelCase), e.g. template=… or authSecretRef=…."""
    co: Any = k8s.CustomObjectsApi(api_client)
    co.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CollectorFleet",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": labels},
                "config": {"inline": config},
                **spec,
            },
        },
    )


def patch_fleet_spec(api_client: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    co: Any = k8s.CustomObjectsApi(api_client)
    co.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def set_fleet_config(api_client: Any, namespace: str, name: str, config: str) -> None:
    patch_fleet_spec(api_client, namespace, name, {"config": {"inline": config}})


def fleet_status(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    co: Any = k8s.CustomObjectsApi(api_client)
    fleet: dict[str, Any] = co.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return dict(fleet.get("status") or {})


def condition(status: dict[str, Any], kind: str) -> str | None:
    """The status of the fleet condition `kind` ("True"/"False"), None when absent."""
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == kind), None)


def single_file_hash(body: str, content_type: str = "text/yaml") -> str:
    """The hash the operator gives a config of one unnamed file, computed here from the
    definition (docs/opamp-server.md: SHA-256 over name, content type and body, each
    prefixed by its length as 8 big-endian bytes) rather than by the operator's code."""
    digest = hashlib.sha256()
    for item in (b"", content_type.encode(), body.encode()):
        digest.update(len(item).to_bytes(8, "big") + item)
    return digest.hexdigest()


def child_processes(pid: int) -> dict[int, str]:
    """The direct children of `pid`: pid → command line, read from /proc."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(stat.parent.name)] = cmdline
        except (OSError, IndexError, ValueError):
            continue
    return found


def create_rollout(
    api_client: Any, namespace: str, name: str, fleet: str, **spec: Any
) -> dict[str, Any]:
    co: Any = k8s.CustomObjectsApi(api_client)
    created: dict[str, Any] = co.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        ROLLOUTS,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ConfigRollout",
            "metadata": {"name": name},
            "spec": {"fleetRef": {"name": fleet}, **spec},
        },
    )
    return created


def patch_rollout(api_client: Any, namespace: str, name: str, body: dict[str, Any]) -> None:
    co: Any = k8s.CustomObjectsApi(api_client)
    co.patch_namespaced_custom_object(GROUP, VERSION, namespace, ROLLOUTS, name, body)


def rollout_control(api_client: Any, namespace: str, name: str, control: str) -> str:
    """`kubectl annotate configrollout NAME opampoperator.io/CONTROL=<new token>`."""
    token = f"{control}-{time.time_ns()}"
    patch_rollout(
        api_client, namespace, name, {"metadata": {"annotations": {f"{GROUP}/{control}": token}}}
    )
    return token


def rollout_status(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    co: Any = k8s.CustomObjectsApi(api_client)
    obj: dict[str, Any] = co.get_namespaced_custom_object(GROUP, VERSION, namespace, ROLLOUTS, name)
    return dict(obj.get("status") or {})


def events_of(api_client: Any, namespace: str, kind: str) -> list[tuple[str, str]]:
    """(reason, message) of the Events about objects of `kind`, oldest first."""
    core: Any = k8s.CoreV1Api(api_client)
    items = [
        e for e in core.list_namespaced_event(namespace).items if e.involved_object.kind == kind
    ]
    items.sort(key=lambda e: (e.first_timestamp or e.event_time or 0, e.metadata.name))
    return [(e.reason, e.message) for e in items]


class PodAgents:
    """opamp-go agents, one per kwok pod, each claiming its pod by uid; what they were
    offered and reported is read from their own output, not from the operator."""

    def __init__(self, api_client: Any, namespace: str, labels: dict[str, str], url: str) -> None:
        self.api = api_client
        self.ns = namespace
        self.labels = labels
        self.url = url
        self.agents: dict[str, JsonlProcess] = {}  # pod name -> agent

    def deploy(self, pods: int) -> list[Any]:
        return deploy_running(self.api, self.ns, self.labels, pods)

    def start_agent(self, pod: Any, *args: str, url: str | None = None) -> JsonlProcess:
        agent = start_go_agent(
            url or self.url,
            "--heartbeat=1s",
            f"--attr=k8s.pod.uid={pod.metadata.uid}",
            *args,
        )
        self.agents[pod.metadata.name] = agent
        return agent

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()

    def _seen(self, agent: JsonlProcess) -> list[dict[str, Any]]:
        with contextlib.suppress(TimeoutError):
            agent.wait_for("(drain)", timeout=0.2)
        return agent.seen

    def reported(self) -> dict[str, tuple[str, str]]:
        """Pod name → (status, config hash) each agent last reported."""
        out = {}
        for pod, agent in self.agents.items():
            statuses = [e for e in self._seen(agent) if e["event"] == "remote_config_status"]
            if statuses:
                out[pod] = (statuses[-1]["status"].rsplit("_", 1)[-1], statuses[-1]["config_hash"])
        return out

    def offered(self, pod: str) -> list[str]:
        """Hashes of every config the agent on `pod` was offered, in order."""
        return [
            e["remote_config"]["config_hash"]
            for e in self._seen(self.agents[pod])
            if e["event"] == "message" and "remote_config" in e
        ]

    def on(self, config_hash: str, status: str = "APPLIED") -> set[str]:
        """Pods whose agent last reported `status` for `config_hash`."""
        return {p for p, (s, h) in self.reported().items() if s == status and h == config_hash}

    def wait_on(
        self, config_hash: str, pods: int, what: str, status: str = "APPLIED", timeout: float = 60
    ) -> set[str]:
        found: set[str] = eventually(
            what,
            lambda: on if len(on := self.on(config_hash, status)) == pods else None,
            timeout=timeout,
        )
        return found
