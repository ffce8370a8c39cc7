"""Two `opamp-operator run` replicas sharing a kopf peering: one active, one standby that
turns agents away until the active one dies, then takes over."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from opamp_operator.api.models import GROUP, VERSION
from world import binaries
from world.cluster import LocalCluster
from world.collector import start_go_agent
from world.fleets import install_crd, remove_crd
from world.operator import OperatorProcess, start_operator
from world.processes import eventually

pytestmark = pytest.mark.world

PEERING_CRDS = binaries.REPO_ROOT / "deploy" / "crds" / "kopf-peering.yaml"
CONFIG = """\
receivers: {otlp: {protocols: {grpc: {}}}}
exporters: {debug: {}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}
"""


@pytest.fixture
def crds(api_client: Any) -> Iterator[None]:
    ext: Any = k8s.ApiextensionsV1Api(api_client)
    peering = list(yaml.safe_load_all(PEERING_CRDS.read_text()))
    for crd in peering:
        ext.create_custom_resource_definition(crd)
    created = install_crd(api_client)

    def established(name: str) -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for crd in peering:
        name = crd["metadata"]["name"]
        eventually(f"{name} served", functools.partial(established, name))
    yield
    for crd in peering:
        with contextlib.suppress(k8s.ApiException):
            ext.delete_custom_resource_definition(crd["metadata"]["name"])
    if created:
        remove_crd(api_client)


def _readyz(op: OperatorProcess) -> str:
    try:
        return str(op.get("/readyz"))
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode()}"


def _status(api_client: Any, namespace: str) -> dict[str, Any]:
    co: Any = k8s.CustomObjectsApi(api_client)
    fleet = co.get_namespaced_custom_object(GROUP, VERSION, namespace, "collectorfleets", "f")
    return dict(fleet.get("status") or {})


def test_the_standby_turns_agents_away_then_takes_over_when_the_active_dies(
    crds: None, cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    core: Any = k8s.CoreV1Api(api_client)
    labels = {"app": "collector"}
    for name in ("p0", "p1"):
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "nodeName": cluster.node_names[0],
                    "containers": [{"name": "otelcol", "image": "otelcol"}],
                },
            },
        )
    pods = eventually(
        "2 Running pods",
        lambda: (
            p
            if len(
                p := [
                    x
                    for x in core.list_namespaced_pod(namespace).items
                    if x.status.phase == "Running"
                ]
            )
            == 2
            else None
        ),
    )
    co: Any = k8s.CustomObjectsApi(api_client)
    co.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "collectorfleets",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CollectorFleet",
            "metadata": {"name": "f"},
            "spec": {"selector": {"matchLabels": labels}, "config": {"inline": CONFIG}},
        },
    )
    peering = [f"--peering={namespace}", "--peering-lifetime=6"]
    active = start_operator(cluster.kubeconfig, tmp_path / "a", *peering, "--peering-priority=200")
    standby = start_operator(cluster.kubeconfig, tmp_path / "b", *peering, "--peering-priority=100")
    by_pod = {p.metadata.name: p.metadata.uid for p in pods}
    on_active = start_go_agent(
        active.ws_url, "--heartbeat=1s", f"--attr=k8s.pod.uid={by_pod['p0']}"
    )
    on_standby = start_go_agent(
        standby.ws_url, "--heartbeat=1s", f"--attr=k8s.pod.uid={by_pod['p1']}"
    )
    try:
        eventually(
            "one active, one standby",
            lambda: _readyz(active) == "ok" and _readyz(standby) == "503 standby",
        )
        on_active.wait_for("message", timeout=60, where=lambda e: "remote_config" in e)
        refused = on_standby.wait_for("connect_failed", timeout=30)
        assert refused["error"]
        status = eventually(
            "the active replica's status: one applied, one pod without agent",
            lambda: (
                s
                if (s := _status(api_client, namespace)).get("configApplied") == 1
                and s.get("podsWithoutAgent") == 1
                else None
            ),
        )
        assert status["agentsConnected"] == 1

        # The active replica crashes: no goodbye, its peering entry simply expires.
        os.killpg(active.record.pid, signal.SIGKILL)
        eventually("the standby to take over", lambda: _readyz(standby) == "ok", timeout=60)
        got = on_standby.wait_for("message", timeout=90, where=lambda e: "remote_config" in e)
        assert got["remote_config"]["files"][""]["body"] == CONFIG
        eventually(
            "status now written by the new active replica",
            lambda: (
                (s := _status(api_client, namespace)).get("configApplied") == 1
                and s.get("agentsConnected") == 1
                and s.get("podsWithoutAgent") == 1
                and s.get("agentsMapped") == 1
            ),
            timeout=60,
        )
        mapped = standby.get(f"/api/v1/fleets/{namespace}/f/agents")["agents"]
        assert [a["pod"] for a in mapped] == [f"{namespace}/p1"]
    finally:
        on_active.stop()
        on_standby.stop()
        standby.stop()
        active.stop()
