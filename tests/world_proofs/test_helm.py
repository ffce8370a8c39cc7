"""helm, built into the test world for the chart tests, works against the local cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from world import binaries
from world.chart import helm
from world.cluster import LocalCluster

pytestmark = pytest.mark.world


def _helm(cluster: LocalCluster, tmp_path: Path, *args: str) -> str:
    return helm(cluster.kubeconfig, tmp_path / "helm", *args, timeout=120)


def test_helm_installs_a_chart_into_the_cluster(
    cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    versions = (binaries.REPO_ROOT / "test-deps" / "versions.env").read_text()
    assert (
        f"HELM_VERSION={_helm(cluster, tmp_path, 'version', '--template={{.Version}}')}\n"
        in versions
    )

    chart = tmp_path / "proof"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: proof\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    assert "0 chart(s) failed" in _helm(cluster, tmp_path, "lint", str(chart))
    _helm(
        cluster,
        tmp_path,
        "install",
        "proof",
        str(chart),
        "--namespace",
        namespace,
        "--set",
        "greeting=from-helm",
        "--wait",
        "--timeout",
        "60s",
    )
    cm = k8s.CoreV1Api(api_client).read_namespaced_config_map("proof-cm", namespace)
    assert cm.data == {"greeting": "from-helm"}
    assert "deployed" in _helm(cluster, tmp_path, "status", "proof", "--namespace", namespace)
