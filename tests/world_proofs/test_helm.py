"""helm, built into the test world for the chart tests, works against the local cluster;
and the opamp-operator chart with TLS for agents installs there, its operator (run as a
process with the Deployment's args and the chart's identity) serving both ports with the
mounted Secret and guarding its API with the chart's RBAC."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.opamp.proto import opamp_pb2 as pb
from world import binaries
from world.chart import (
    CHART,
    args_with_mounted_secrets,
    helm,
    service_account_token,
    token_kubeconfig,
)
from world.cluster import LocalCluster
from world.pki import CertificateAuthority
from world.podwatch import PodWatch
from world.processes import free_port, spawn, terminate, wait_until

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


# ---- the opamp-operator chart with TLS for agents, on the cluster -------------------

RELEASE = "tls"
FULL = f"{RELEASE}-opamp-operator"
TLS_SECRET = "agents-tls"
MOUNT = "/opamp-tls"


def _https(
    url: str,
    ca: Path,
    server_name: str,
    *,
    token: str | None = None,
    cert: Path | None = None,
    body: bytes | None = None,
) -> tuple[int, bytes]:
    """GET (POST with `body`, as OpAMP over HTTP) `url` verifying the server against `ca`
    for `server_name` (the address being 127.0.0.1), with a bearer token or a client
    certificate (`cert`: .crt, .key beside); the HTTP status and body."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, cert.with_suffix(".key"))
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPSConnection(server_name, parts.port, timeout=10)
    # Connect to 127.0.0.1 but check (and send SNI for) the Service's name.
    connection.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", parts.port), timeout=10),
        server_hostname=server_name,
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/x-protobuf"
    try:
        connection.request("GET" if body is None else "POST", parts.path, body, headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_chart_with_tls_for_agents_runs_the_operator_with_its_args_and_identity(
    cluster: LocalCluster, api_client: Any, crds: None, namespace: str, tmp_path: Path
) -> None:
    """A `helm install` (the default scope: its own namespace) with
    `opamp.tls.existingSecret` (client certificates required) and a narrowed
    NetworkPolicy: the apiserver takes every object (the kube-system RoleBinding, the
    metrics-reader ClusterRole, the NetworkPolicy, the Role). Then the
    Deployment's own args, with the mounted Secret's files at a local path, run the
    operator as a process with the chart ServiceAccount's token: it serves the Secret's
    certificate on the agents' port (an OpAMP exchange with a client certificate; none
    refused) and on the API port, and its API authenticates (TokenReview, the cluster's
    client CA) and authorizes (SubjectAccessReview) with nothing but the chart's RBAC;
    the metrics-reader role opens /metrics and nothing else. Then a `helm upgrade` rolls
    the one replica without ever running two operator pods (strategy Recreate)."""
    core: Any = k8s.CoreV1Api(api_client)
    rbac: Any = k8s.RbacAuthorizationV1Api(api_client)
    ca = CertificateAuthority("agents CA")
    opamp_name, api_name = f"{FULL}.{namespace}.svc", f"{FULL}-api.{namespace}.svc"
    server = ca.issue(FULL, hosts=(opamp_name, api_name), server=True)
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": TLS_SECRET},
            "type": "kubernetes.io/tls",
            "stringData": {
                "tls.crt": server.cert_pem.decode(),
                "tls.key": server.key_pem.decode(),
                "ca.crt": ca.cert_pem.decode(),
            },
        },
    )
    home = tmp_path / "helm"
    sets = (
        "opamp.tls.enabled=true",
        f"opamp.tls.existingSecret={TLS_SECRET}",
        "opamp.tls.clientAuth=require",
        "webhook.enabled=false",
        "image.pullPolicy=Never",
        "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=monitoring",
        # No clusterWide, no watchNamespaces: the default namespaced install, watching the
        # release namespace. No cluster-wide ConfigMap read, so the client CA in
        # kube-system is readable only through the chart's RoleBinding there.
    )
    helm(
        cluster.kubeconfig,
        home,
        "install",
        RELEASE,
        str(CHART),
        f"--namespace={namespace}",
        "--skip-crds",  # the `crds` fixture's, removed by it
        *(f"--set={s}" for s in sets),
        "--wait",
        "--timeout=90s",
        timeout=150,
    )
    scraper = f"{namespace}-scraper"
    record = None
    try:
        notes = helm(cluster.kubeconfig, home, "get", "notes", RELEASE, f"-n={namespace}")
        assert f"wss://{opamp_name}:4320/v1/opamp" in notes
        assert f"port-forward svc/{FULL}-api 8443" in notes
        networking: Any = k8s.NetworkingV1Api(api_client)
        policy = networking.read_namespaced_network_policy(FULL, namespace)
        assert [r.ports[0].port for r in policy.spec.ingress] == [4320, 8443]
        assert policy.spec.ingress[1]._from[0].namespace_selector.match_labels == {
            "team": "monitoring"
        }
        assert policy.spec.policy_types == ["Ingress"]
        binding = rbac.read_namespaced_role_binding(f"{FULL}-auth-reader", "kube-system")
        assert binding.role_ref.name == "extension-apiserver-authentication-reader"
        rbac.read_cluster_role(f"{FULL}-metrics-reader")
        assert core.read_namespaced_service(f"{FULL}-api", namespace).spec.type == "ClusterIP"

        # The Deployment's args, its Secret's files where it mounts them, its identity.
        apps: Any = k8s.AppsV1Api(api_client)
        pod = apps.read_namespaced_deployment(FULL, namespace).spec.template.spec
        (container,) = pod.containers
        [volume] = [v for v in pod.volumes if v.secret and v.secret.secret_name == TLS_SECRET]
        [mount] = [m for m in container.volume_mounts if m.name == volume.name]
        assert (mount.mount_path, mount.read_only) == (MOUNT, True)
        mounts = tmp_path / "mounted"
        args = args_with_mounted_secrets(api_client, pod, container, namespace, mounts)
        files = mounts / volume.name
        assert f"{files}/ca.crt" in args
        assert "--agent-ca-file" not in args  # a Secret of yours: your CA, maybe public
        assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == [namespace]
        assert rbac.read_namespaced_role(FULL, namespace).rules
        token = service_account_token(api_client, pod.service_account_name, namespace)
        kubeconfig = token_kubeconfig(cluster, token, tmp_path / "operator.kubeconfig")
        port, api_port = free_port(), free_port()
        record, _ = spawn(
            "operator-tls",
            [
                sys.executable,
                "-m",
                "opamp_operator",
                *args,
                "--host=127.0.0.1",
                f"--port={port}",
                "--api-host=127.0.0.1",
                f"--api-port={api_port}",
            ],
            tmp_path,
            env={"KUBECONFIG": str(kubeconfig)},
        )
        ca_file = files / "ca.crt"
        api = f"https://127.0.0.1:{api_port}"

        def healthy() -> bool:
            try:
                return _https(f"{api}/healthz", ca_file, api_name) == (200, b"ok")
            except OSError:
                return False

        wait_until("the operator's API /healthz over TLS", healthy, timeout=60, watch=[record])

        # Agents: the Secret's certificate, and a client certificate from its ca.crt;
        # OpAMP over HTTP, one AgentToServer answered with a ServerToAgent.
        ca.issue("agent-1", client=True).write(tmp_path, "agent")
        uid = uuid.uuid4().bytes
        hello = pb.AgentToServer(instance_uid=uid).SerializeToString()
        opamp = f"https://127.0.0.1:{port}/v1/opamp"
        status, reply = _https(opamp, ca_file, opamp_name, cert=tmp_path / "agent.crt", body=hello)
        assert status == 200, reply
        assert pb.ServerToAgent.FromString(reply).instance_uid == uid
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate
            _https(opamp, ca_file, opamp_name, body=hello)

        # The API: who (TokenReview, the cluster's client CA), then what (SAR).
        assert _https(f"{api}/metrics", ca_file, api_name)[0] == 401
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "scraper"}})
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": scraper},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"{FULL}-metrics-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": namespace}],
            }
        )
        scraping = service_account_token(api_client, "scraper", namespace)
        status, body = _https(f"{api}/metrics", ca_file, api_name, token=scraping)
        assert status == 200, body
        assert b"opamp_messages_total" in body
        nobody = service_account_token(api_client, "nobody", namespace)
        status, body = _https(f"{api}/metrics", ca_file, api_name, token=nobody)
        assert status == 403, body
        assert b"get path /metrics" in body
        status, _ = _https(f"{api}/api/v1/agents", ca_file, api_name, token=scraping)
        assert status == 403  # the role opens /metrics only
        # The cluster's admin by its kubeconfig's client certificate (system:masters).
        admin = yaml.safe_load(cluster.kubeconfig.read_text())["users"][0]["user"]
        (tmp_path / "admin.crt").write_bytes(base64.b64decode(admin["client-certificate-data"]))
        (tmp_path / "admin.key").write_bytes(base64.b64decode(admin["client-key-data"]))
        status, body = _https(
            f"{api}/api/v1/agents", ca_file, api_name, cert=tmp_path / "admin.crt"
        )
        assert status == 200, body
        agents = json.loads(body)["agents"]
        assert [a["instance_uid"] for a in agents] == [str(uuid.UUID(bytes=uid))]
        log = Path(record.log).read_text()
        assert "cannot read kube-system" not in log
        assert "Traceback" not in log

        # An upgrade of the one replica (a new pod template) never runs two operator
        # pods: the real Deployment controller deletes the old pod before it creates the
        # new one (strategy Recreate; a rolling update would surge a second pod first).
        selector = f"app.kubernetes.io/instance={RELEASE}"
        (old,) = core.list_namespaced_pod(namespace, label_selector=selector).items
        seen: list[tuple[str, str]] = []
        events = PodWatch(
            api_client,
            namespace,
            lambda kind, pod: seen.append((kind, pod.metadata.name)),
            selector,
        )
        assert events.listed.wait(10)
        helm(
            cluster.kubeconfig,
            home,
            "upgrade",
            RELEASE,
            str(CHART),
            f"--namespace={namespace}",
            "--reuse-values",
            "--set=podAnnotations.restartedAt=now",
            "--wait",
            "--timeout=90s",
            timeout=150,
        )
        time.sleep(1.0)  # the rollout's last events
        events.close()
        gone = [
            i
            for i, (kind, name) in enumerate(seen)
            if kind == "DELETED" and name == old.metadata.name
        ]
        added = [
            i
            for i, (kind, name) in enumerate(seen)
            if kind == "ADDED" and name != old.metadata.name
        ]
        assert gone, seen
        assert added, seen
        assert gone[0] < added[0], f"a new operator pod before the old one was gone: {seen}"
    except AssertionError as failed:
        tail = record.log_tail(40) if record is not None else "(not started)"
        raise AssertionError(f"{failed}\noperator log:\n{tail}") from failed
    finally:
        if record is not None:
            terminate(record)
        with contextlib.suppress(ApiException):
            rbac.delete_cluster_role_binding(scraper)
        helm(cluster.kubeconfig, home, "uninstall", RELEASE, f"-n={namespace}", "--wait")
