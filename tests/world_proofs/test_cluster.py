"""Proofs that the local control plane is a real Kubernetes: CRDs with a status
subresource, workloads whose pods reach Running on kwok nodes, RBAC that denies, and an
admission webhook the apiserver really calls."""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from world import binaries
from world.cluster import LocalCluster, pod_cidr
from world.fleets import workload_report
from world.pki import CertificateAuthority
from world.processes import eventually

pytestmark = pytest.mark.world

GROUP = "proof.opampoperator.io"


# The client's models are typed, but these tests send plain manifests (as users do); the
# API handles are therefore used untyped.
def _core(api_client: Any) -> Any:
    return k8s.CoreV1Api(api_client)


def _apps(api_client: Any) -> Any:
    return k8s.AppsV1Api(api_client)


def test_kubectl_get_nodes_shows_ready_kwok_nodes(cluster: LocalCluster) -> None:
    out = subprocess.run(
        [
            str(binaries.find("kubectl")),
            f"--kubeconfig={cluster.kubeconfig}",
            "get",
            "nodes",
            "-o",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    nodes = json.loads(out)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == cluster.node_names
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}.get("Ready")
        assert ready == "True", node["metadata"]["name"]
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_server_version_is_the_pinned_release(api_client: Any) -> None:
    info: Any = k8s.VersionApi(api_client).get_code()
    versions = (Path(binaries.REPO_ROOT) / "test-deps" / "versions.env").read_text()
    assert f"KUBERNETES_VERSION={info.git_version}\n" in versions


@pytest.fixture
def widget_crd(api_client: Any) -> Iterator[str]:
    ext: Any = k8s.ApiextensionsV1Api(api_client)
    name = f"widgets.{GROUP}"
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"size": {"type": "integer", "minimum": 1}},
                "required": ["size"],
            },
            "status": {
                "type": "object",
                "properties": {
                    "observedGeneration": {"type": "integer"},
                    "phase": {"type": "string"},
                },
            },
        },
    }
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": schema},
                        "subresources": {"status": {}},
                    }
                ],
            },
        }
    )

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    eventually("CRD Established", established)
    try:
        yield name
    finally:
        ext.delete_custom_resource_definition(name)


def test_crd_with_status_subresource(api_client: Any, namespace: str, widget_crd: str) -> None:
    co: Any = k8s.CustomObjectsApi(api_client)
    args = (GROUP, "v1", namespace, "widgets")
    # The structural schema is enforced by the real apiserver.
    with pytest.raises(ApiException) as bad:
        co.create_namespaced_custom_object(
            *args,
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": "Widget",
                "metadata": {"name": "bad"},
                "spec": {"size": 0},
            },
        )
    assert bad.value.status == 422

    created = _retry_not_found(
        lambda: co.create_namespaced_custom_object(
            *args,
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": "Widget",
                "metadata": {"name": "w"},
                "spec": {"size": 1},
                "status": {"phase": "ignored"},
            },
        )
    )
    assert created["metadata"]["generation"] == 1
    assert "status" not in created  # status is dropped on create when it is a subresource

    co.patch_namespaced_custom_object_status(
        *args, "w", {"status": {"observedGeneration": 1, "phase": "Ready"}}
    )
    after_status = co.get_namespaced_custom_object(*args, "w")
    assert after_status["metadata"]["generation"] == 1
    assert after_status["status"] == {"observedGeneration": 1, "phase": "Ready"}

    # A spec change bumps generation; status written through the main resource is ignored.
    co.patch_namespaced_custom_object(
        *args, "w", {"spec": {"size": 3}, "status": {"phase": "Overwritten"}}
    )
    after_spec = co.get_namespaced_custom_object(*args, "w")
    assert after_spec["metadata"]["generation"] == 2
    assert after_spec["status"]["phase"] == "Ready"


def _retry_not_found(call: Any, timeout: float = 30.0) -> Any:
    """A just-Established CRD can 404 for a moment while discovery catches up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def _pods(api_client: Any, namespace: str, selector: str) -> list[Any]:
    return list(_core(api_client).list_namespaced_pod(namespace, label_selector=selector).items)


def _all_running(pods: list[Any], count: int) -> bool:
    return len(pods) == count and all(
        p.status.phase == "Running" and p.status.pod_ip and p.spec.node_name for p in pods
    )


def _workload(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    """A Deployment or DaemonSet of one Collector container labelled app=<name>."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            **spec,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "otelcol", "image": "otel/opentelemetry-collector-contrib:0.149.0"}
                    ]
                },
            },
        },
    }


def test_deployment_pods_reach_running_with_pod_ips(
    api_client: Any, namespace: str, cluster: LocalCluster
) -> None:
    _apps(api_client).create_namespaced_deployment(
        namespace, _workload("Deployment", "collector", replicas=3)
    )
    pods = eventually(
        "3 Running pods",
        lambda: p if _all_running(p := _pods(api_client, namespace, "app=collector"), 3) else None,
        90,
    )
    pod_net = ipaddress.ip_network(pod_cidr(cluster.api_port), strict=False)
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 3
    assert all(ipaddress.ip_address(ip) in pod_net for ip in ips)
    assert {p.spec.node_name for p in pods} <= set(cluster.node_names)
    try:
        deployment = eventually(
            "Deployment available",
            lambda: (
                d
                if (
                    d := _apps(api_client).read_namespaced_deployment("collector", namespace)
                ).status.available_replicas
                == 3
                else None
            ),
        )
    except AssertionError as timed_out:
        # Seen once in a full CI run, never alone: say what the controllers had done.
        raise AssertionError(
            f"{timed_out}\n{workload_report(api_client, cluster, namespace)}"
        ) from timed_out
    assert deployment.status.ready_replicas == 3


def test_daemonset_runs_one_pod_per_node(
    api_client: Any, namespace: str, cluster: LocalCluster
) -> None:
    _apps(api_client).create_namespaced_daemon_set(namespace, _workload("DaemonSet", "agent"))
    pods = eventually(
        "a Running pod on every node",
        lambda: (
            p
            if _all_running(p := _pods(api_client, namespace, "app=agent"), cluster.nodes)
            else None
        ),
        90,
    )
    assert sorted(p.spec.node_name for p in pods) == cluster.node_names


def test_rbac_denies_unprivileged_service_account(
    api_client: Any, namespace: str, cluster: LocalCluster
) -> None:
    core: Any = k8s.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    cfg = k8s.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(cluster.pki_dir / "ca.crt")
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with k8s.ApiClient(cfg) as as_sa:
        sa_core: Any = k8s.CoreV1Api(as_sa)
        for listing in (sa_core.list_namespaced_secret, sa_core.list_namespaced_config_map):
            with pytest.raises(ApiException) as denied:
                listing(namespace)
            assert denied.value.status == 403
            assert f"system:serviceaccount:{namespace}:nobody" in str(denied.value.body)

        # Granting exactly one verb on one resource opens that and nothing else.
        rbac: Any = k8s.RbacAuthorizationV1Api(api_client)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-cm"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "read-cm"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-cm",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )
        eventually(
            "the RoleBinding to take effect",
            lambda: _can(lambda: sa_core.list_namespaced_config_map(namespace)),
            30,
        )
        assert not _can(lambda: sa_core.list_namespaced_secret(namespace))


def _can(call: Any) -> bool:
    try:
        call()
    except ApiException as exc:
        if exc.status == 403:
            return False
        raise
    return True


class _AdmissionHandler(BaseHTTPRequestHandler):
    """Denies ConfigMaps labelled deny=yes and records every AdmissionReview it gets."""

    reviews: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.reviews.append(body)
        labels = body["request"]["object"]["metadata"].get("labels") or {}
        allowed = labels.get("deny") != "yes"
        response: dict[str, Any] = {"uid": body["request"]["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": "denied by the proof webhook"}
        payload = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return


def test_admission_webhook_is_called_by_the_apiserver(
    api_client: Any, namespace: str, tmp_path: Path
) -> None:
    ca = CertificateAuthority("proof webhook CA")
    cert, key = ca.issue("webhook", server=True, hosts=("127.0.0.1",)).write(tmp_path, "webhook")
    reviews: list[dict[str, Any]] = []
    handler = type("Handler", (_AdmissionHandler,), {"reviews": reviews})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    adm: Any = k8s.AdmissionregistrationV1Api(api_client)
    name = f"proof-{namespace}"
    adm.create_validating_webhook_configuration(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "deny.proof.opampoperator.io",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{server.server_address[1]}/validate",
                        "caBundle": base64.b64encode(ca.cert_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                }
            ],
        }
    )
    core: Any = k8s.CoreV1Api(api_client)
    try:
        probes = itertools.count()

        def refusal() -> ApiException | None:
            try:
                core.create_namespaced_config_map(
                    namespace,
                    {"metadata": {"name": f"probe-{next(probes)}", "labels": {"deny": "yes"}}},
                )
            except ApiException as exc:
                return exc
            return None  # created: the apiserver has not loaded the webhook yet

        refused = eventually("the webhook to deny a labelled ConfigMap", refusal, 30)
        assert refused.status == 403, refused.body
        assert "denied by the proof webhook" in str(refused.body)
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "allowed"}})
        names = [r["request"]["object"]["metadata"]["name"] for r in reviews]
        assert "allowed" in names
        assert all(
            r["kind"] == "AdmissionReview" and r["request"]["kind"]["kind"] == "ConfigMap"
            for r in reviews
        )
        assert core.read_namespaced_config_map("allowed", namespace).metadata.name == "allowed"
    finally:
        adm.delete_validating_webhook_configuration(name)
        server.shutdown()
