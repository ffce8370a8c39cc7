"""A real local Kubernetes control plane: etcd, kube-apiserver, controller-manager,
scheduler and kwok, all on loopback ports, data in one directory.

The apiserver runs with RBAC and admission webhooks on and client-certificate auth; kwok
plays the kubelets, so pods of Deployments and DaemonSets reach Running with pod IPs; its
pod stages (kwok-pod-stages.yaml) leave readiness-gate conditions to whoever declared the
gate and keep Ready = ContainersReady AND every gate True, as a kubelet does.
Everything about a running cluster is written to `cluster.json` in its directory, so
`LocalCluster.attach` can inspect or stop a cluster another process started.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from world import binaries
from world.pki import CertificateAuthority, KeyPair, signing_key_pair
from world.processes import ProcessRecord, StartupError, free_port, spawn, terminate, wait_until

STATE_FILE = "cluster.json"
# Where kwok hands out pod IPs. Loopback, so a test can bind a socket to a pod's IP and
# connect from it: nothing here ever sends traffic to an address off this machine. Each
# cluster takes its own /16 of 127.0.0.0/8 (pod_cidr): pod IPs are unique in a cluster,
# and two test sessions on one machine must not hand out the same ones either (their
# Collectors, listening on their pods' IPs, would collide).
POD_CIDR_BLOCKS = 150  # 127.100.0.0/16 .. 127.249.0.0/16


def pod_cidr(api_port: int) -> str:
    """The cluster's pod CIDR, by its apiserver's port (free, so distinct between the
    clusters running at once)."""
    return f"127.{100 + api_port % POD_CIDR_BLOCKS}.0.1/16"


SERVICE_CIDR = "10.96.0.0/16"  # allocated to Service objects only; nothing connects to it
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# kwok's pod stages: a kubelet's view of readiness gates (the file says how and why).
KWOK_POD_STAGES = Path(__file__).with_name("kwok-pod-stages.yaml")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(path: Path, server: str, ca_pem: bytes, user: str, creds: KeyPair) -> Path:
    """A self-contained kubeconfig (certificates inline) that works from any directory."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(creds.cert_pem),
                    "client-key-data": _b64(creds.key_pem),
                },
            }
        ],
        "contexts": [{"name": f"{user}@local", "context": {"cluster": "local", "user": user}}],
        "current-context": f"{user}@local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


class Rest:
    """Just enough of a Kubernetes REST client for bringing the cluster up."""

    def __init__(self, server: str, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        self.server = server
        self._ctx = ssl.create_default_context(cafile=str(ca_file))
        self._ctx.load_cert_chain(str(cert_file), str(key_file))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - https to our own loopback apiserver
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, context=self._ctx, timeout=10) as resp:  # noqa: S310
            raw = resp.read()
        return json.loads(raw) if raw.startswith(b"{") else raw.decode()

    def ok(self, path: str) -> bool:
        try:
            self.request("GET", path)
        except (urllib.error.URLError, OSError):
            return False
        return True


def kwok_node(name: str) -> dict[str, Any]:
    """A Node kwok adopts (by annotation) and keeps Ready; schedulable for ordinary pods."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }


def _node_ready(node: dict[str, Any]) -> bool:
    conds = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


@dataclass
class LocalCluster:
    workdir: Path
    nodes: int = 3
    api_port: int = 0
    processes: list[ProcessRecord] = field(default_factory=list)
    # kube-apiserver's --enable-admission-plugins (beyond its defaults).
    admission_plugins: tuple[str, ...] = ("NodeRestriction",)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def node_names(self) -> list[str]:
        return [f"kwok-node-{i}" for i in range(self.nodes)]

    def admin_rest(self) -> Rest:
        return Rest(
            self.server,
            self.pki_dir / "ca.crt",
            self.pki_dir / "admin.crt",
            self.pki_dir / "admin.key",
        )

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> LocalCluster:
        """Bring the whole control plane up, or stop what started and raise with logs."""
        paths = {
            n: binaries.find(n)
            for n in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki_dir.mkdir(exist_ok=True)
        try:
            self._start_etcd(paths["etcd"], timeout)
            self._start_apiserver(paths["kube-apiserver"], timeout)
            self._start_controllers(paths, timeout)
            self._create_nodes(timeout)
        except BaseException:
            self.stop(remove=False)
            raise
        self._save()
        return self

    def stop(self, *, remove: bool = True) -> None:
        """Stop every process (newest first); remove the data directory when asked."""
        for rec in reversed(self.processes):
            terminate(rec)
        self.processes.clear()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / STATE_FILE).unlink()

    @classmethod
    def attach(cls, workdir: Path) -> LocalCluster:
        state = json.loads((workdir / STATE_FILE).read_text())
        return cls(
            workdir=workdir,
            nodes=state["nodes"],
            api_port=state["api_port"],
            processes=[ProcessRecord(**p) for p in state["processes"]],
        )

    def _save(self) -> None:
        state = {
            "nodes": self.nodes,
            "api_port": self.api_port,
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": [p.to_json() for p in self.processes],
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _spawn(self, name: str, argv: list[str]) -> ProcessRecord:
        rec, _ = spawn(name, argv, self.log_dir)
        self.processes.append(rec)
        return rec

    # ---- components ------------------------------------------------------------------

    def _start_etcd(self, etcd: Path, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        rec = self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=opamp-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=opamp-test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:  # noqa: S310
                return bool(json.loads(r.read()).get("health") == "true")

        wait_until("etcd /health", healthy, timeout=timeout, watch=[rec])

    def _start_apiserver(self, apiserver: Path, timeout: float) -> None:
        ca = CertificateAuthority()
        self.ca = ca
        pki = self.pki_dir
        (pki / "ca.crt").write_bytes(ca.cert_pem)
        ca.key_pair.write(pki, "ca")
        serving = ca.issue(
            "kube-apiserver",
            server=True,
            hosts=(
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        serving.write(pki, "apiserver")
        signing_key_pair().write(pki, "service-account")
        ca.issue("admin", organizations=("system:masters",), client=True).write(pki, "admin")
        # The aggregation layer's front proxy: without it the controllers cannot read
        # extension-apiserver-authentication and log errors forever.
        front_proxy = CertificateAuthority("opamp-operator test front-proxy CA")
        (pki / "front-proxy-ca.crt").write_bytes(front_proxy.cert_pem)
        front_proxy.issue("front-proxy-client", client=True).write(pki, "front-proxy-client")
        self.api_port = free_port()
        rec = self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--enable-admission-plugins={','.join(self.admission_plugins)}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'service-account.crt'}",
                f"--service-account-signing-key-file={pki / 'service-account.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                # The `kubernetes` Service cannot point at a loopback address; nothing in
                # the tests reaches the apiserver through it.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        write_kubeconfig(
            self.kubeconfig,
            self.server,
            ca.cert_pem,
            "admin",
            KeyPair((pki / "admin.crt").read_bytes(), (pki / "admin.key").read_bytes()),
        )
        rest = self.admin_rest()
        wait_until(
            "kube-apiserver /readyz", lambda: rest.ok("/readyz"), timeout=timeout, watch=[rec]
        )

    def _component_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        creds = self.ca.issue(user, organizations=groups, client=True)
        return write_kubeconfig(
            self.workdir / f"{user.replace(':', '-')}.kubeconfig",
            self.server,
            self.ca.cert_pem,
            user,
            creds,
        )

    def _component_flags(self, user: str) -> list[str]:
        """Flags the controller-manager and scheduler share: own identity, loopback
        serving with a self-signed cert, no leader election."""
        cfg = self._component_kubeconfig(user)
        return [
            f"--kubeconfig={cfg}",
            f"--authentication-kubeconfig={cfg}",
            f"--authorization-kubeconfig={cfg}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / (user.replace(':', '-') + '-certs')}",
            "--leader-elect=false",
            "--v=1",
        ]

    def _start_controllers(self, paths: dict[str, Path], timeout: float) -> None:
        pki = self.pki_dir
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(paths["kube-controller-manager"]),
                *self._component_flags("system:kube-controller-manager"),
                f"--service-account-private-key-file={pki / 'service-account.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=true",
            ],
        )
        sched = self._spawn(
            "kube-scheduler",
            [str(paths["kube-scheduler"]), *self._component_flags("system:kube-scheduler")],
        )
        kwok_cfg = self._component_kubeconfig("kwok-controller", ("system:masters",))
        stages = self.workdir / KWOK_POD_STAGES.name
        shutil.copyfile(KWOK_POD_STAGES, stages)
        kwok = self._spawn(
            "kwok",
            [
                str(paths["kwok"]),
                f"--kubeconfig={kwok_cfg}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--cidr={pod_cidr(self.api_port)}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        rest = self.admin_rest()
        # The controller-manager is working once the token controller has made the
        # default ServiceAccount; pods cannot be admitted before that.
        wait_until(
            "kube-controller-manager to create the default ServiceAccount",
            lambda: rest.ok("/api/v1/namespaces/default/serviceaccounts/default"),
            timeout=timeout,
            watch=[kcm, sched, kwok],
        )

    def _create_nodes(self, timeout: float) -> None:
        rest = self.admin_rest()
        for name in self.node_names:
            rest.request("POST", "/api/v1/nodes", kwok_node(name))

        def all_ready() -> bool:
            items = rest.request("GET", "/api/v1/nodes")["items"]
            ready = {n["metadata"]["name"] for n in items if _node_ready(n)}
            return ready >= set(self.node_names)

        wait_until("kwok nodes Ready", all_ready, timeout=timeout, watch=self.processes)

    def check_running(self) -> None:
        """Raise if any process of the cluster has died (a test's failure then says why)."""
        dead = [p for p in self.processes if not p.alive()]
        if dead:
            raise StartupError(
                "; ".join(f"{p.name} died, log {p.log}:\n{p.log_tail()}" for p in dead)
            )
