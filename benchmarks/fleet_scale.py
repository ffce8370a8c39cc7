"""One CollectorFleet of N simulated agents under `opamp-operator run`, on the test world's
local cluster: how long a config change takes to reach every agent and the fleet's status,
what it costs in Kubernetes API writes, how big the status object is, and what the
operator process holds and burns.

1. a LocalCluster (tests/world: etcd, kube-apiserver, controller-manager, scheduler, kwok)
   whose apiserver writes an audit log of every request made by the user
   `opamp-operator` (the identity the operator runs as, and only it);
2. the CollectorFleet CRD; N pods `PREFIX-0 .. PREFIX-{N-1}` in one namespace, created
   concurrently with `spec.nodeName` preset to the kwok nodes (no scheduling), until kwok
   reports them all Running;
3. `opamp-operator run` as a process (its own client certificate, so the audit log tells
   its requests apart), the fleet (config v1) and `opamp-operator simulate` as a process
   with N WebSocket agents claiming those pods (k8s.namespace.name + k8s.pod.name);
4. once status says agentsMapped == N and configApplied == N for v1: an idle window (what
   the operator writes when nothing changes), then `--changes` config changes, each
   timed from the spec patch until status says configApplied == N for the new
   desiredHash, and until the simulator saw every agent apply it (from its JSON summary);
5. for each window: the operator's API requests from the audit log, by verb and resource;
   the apiserver's `apiserver_request_total` delta (every client); operator RSS and CPU
   (/proc); the status timer's run times (from the operator's log); then the fleet's JSON
   size and its ControllerRevisions.

    .venv/bin/python benchmarks/fleet_scale.py --agents 10000
    .venv/bin/python benchmarks/fleet_scale.py --agents 2000 --readiness-gates

Prints a Markdown table and (with --json) writes every figure as JSON; docs/benchmarks.md
keeps the figures. Everything started is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from tempfile import mkdtemp
from typing import IO, Any, TypeVar

import aiohttp
import kopf
import yaml
from procstat import Sampler, free_port, peak_rss
from server_scale import CONFIG_A

from opamp_operator import __version__
from opamp_operator.api.models import AGENT_READY_CONDITION, API_VERSION, GROUP, VERSION
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.simulator.runner import raise_file_limit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from world import binaries  # noqa: E402 - tests/ is not a package on sys.path by default
from world.cluster import LocalCluster, write_kubeconfig  # noqa: E402
from world.processes import ProcessRecord, spawn, terminate, wait_until  # noqa: E402

OPERATOR_USER = "opamp-operator"
CRD_FILES = [
    REPO / "deploy" / "crds" / f"{p}.{GROUP}.yaml" for p in ("collectorfleets", "configrollouts")
]
FLEET = "collectors"
LABELS = {"app": "collector-sim"}
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}
TIMER_DONE = "write_status' succeeded"  # kopf: Timer 'register.<locals>.write_status' ...
POD_EVENT = "pod_event' succeeded"  # kopf: Handler 'register.<locals>.pod_event' ...
RECONCILED = "reconciled: revision"
SIM_PROGRESS = re.compile(r"t=(?P<t>[\d.]+)s connected (?P<connected>\d+)/\d+ acked (?P<acked>\d+)")
SIM_CONFIG = re.compile(r"\| config (?P<hash>[0-9a-f]+) offered \d+ applied (?P<applied>\d+)")
SIM_PACKAGE = re.compile(
    r"\| package \S+ (?P<version>\S+) offered \d+ installed (?P<installed>\d+)"
)


def config(version: int) -> str:
    """The 1 KiB Collector config of server_scale.py; versions differ in one value."""
    return CONFIG_A.replace("timeout: 5s", f"timeout: {version}s")


def config_hash(text: str) -> str:
    return RemoteConfig.single(text.encode()).hash.hex()


# ---- the cluster, with an audit log of the operator's requests ---------------------------


class AuditedCluster(LocalCluster):
    """LocalCluster whose apiserver logs (audit level Metadata) every request of the user
    OPERATOR_USER, and nothing else."""

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _spawn(self, name: str, argv: list[str]) -> ProcessRecord:
        if name == "kube-apiserver":
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY))
            argv = [
                *argv,
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
            ]
        if name == "kube-controller-manager":
            # kwok renews node leases late when the machine is saturated; without this the
            # node controller marks the nodes NotReady and rewrites every pod's status, which
            # the operator then has to process: noise that is not the operator's doing
            argv = [*argv, "--node-monitor-grace-period=1h"]
        return super()._spawn(name, argv)

    def operator_kubeconfig(self) -> Path:
        """A kubeconfig for OPERATOR_USER (in system:masters, so RBAC is not measured)."""
        creds = self.ca.issue(OPERATOR_USER, organizations=("system:masters",), client=True)
        return write_kubeconfig(
            self.workdir / "operator.kubeconfig",
            self.server,
            self.ca.cert_pem,
            OPERATOR_USER,
            creds,
        )

    def pid_of(self, name: str) -> int:
        return next(p.pid for p in self.processes if p.name == name)


@dataclass(frozen=True)
class AuditEvent:
    at: float  # requestReceivedTimestamp, Unix seconds
    verb: str
    resource: str  # resource[/subresource]
    code: int


def read_audit(path: Path) -> list[AuditEvent]:
    """One entry per request (watches log ResponseStarted and ResponseComplete)."""
    seen: dict[str, AuditEvent] = {}
    with path.open() as f:
        for line in f:
            e = json.loads(line)
            if e.get("user", {}).get("username") != OPERATOR_USER or e["auditID"] in seen:
                continue
            ref = e.get("objectRef") or {}
            resource = ref.get("resource", e.get("requestURI", "?").split("?")[0])
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            at = datetime.fromisoformat(e["requestReceivedTimestamp"]).timestamp()
            code = int((e.get("responseStatus") or {}).get("code", 0))
            seen[e["auditID"]] = AuditEvent(at, e["verb"], resource, code)
    return sorted(seen.values(), key=lambda a: a.at)


def tally(events: Iterable[AuditEvent], start: float, end: float) -> dict[str, Any]:
    inside = [e for e in events if start <= e.at <= end]
    writes = Counter(f"{e.verb} {e.resource}" for e in inside if e.verb in WRITE_VERBS)
    reads = Counter(f"{e.verb} {e.resource}" for e in inside if e.verb not in WRITE_VERBS)
    return {
        "writes": sum(writes.values()),
        "reads": sum(reads.values()),
        "writes_by": dict(writes.most_common()),
        "reads_by": dict(reads.most_common()),
        "errors": sum(1 for e in inside if e.code >= 400),
    }


# ---- a small async Kubernetes client (admin) ---------------------------------------------


class Kube:
    def __init__(self, cluster: LocalCluster, concurrency: int) -> None:
        pki = cluster.pki_dir
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.server = cluster.server
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=concurrency + 8),
            timeout=aiohttp.ClientTimeout(total=60),
            read_bufsize=1 << 22,
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        accept: Iterable[int] = (200, 201),
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        async with self.session.request(
            method, self.server + path, data=data, headers={"Content-Type": content_type}
        ) as resp:
            raw = await resp.read()
            if resp.status not in accept:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
            return resp.status, raw

    async def get(self, path: str) -> Any:
        return json.loads((await self.call("GET", path))[1])

    async def request_totals(self) -> Counter[str]:
        """apiserver_request_total summed by verb (every client, every resource)."""
        _, raw = await self.call("GET", "/metrics")
        totals: Counter[str] = Counter()
        for line in raw.decode().splitlines():
            if line.startswith("apiserver_request_total{"):
                labels, value = line.rsplit(" ", 1)
                verb = re.search(r'verb="([A-Z]+)"', labels)
                if verb:
                    totals[verb.group(1)] += int(float(value))
        return totals


def fleets_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/collectorfleets"
    return f"{base}/{name}" if name else base


async def install_crd(kube: Kube) -> None:
    for crd_file in CRD_FILES:
        await _install_crd(kube, yaml.safe_load(crd_file.read_text()))


async def _install_crd(kube: Kube, crd: dict[str, Any]) -> None:
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    await kube.call("POST", path, crd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = await kube.get(f"{path}/{crd['metadata']['name']}")
        conds = (got.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            # discovery needs a moment more before a client can use the new kind
            await asyncio.sleep(1.0)
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the CRD was not Established within 60 s")


async def create_namespace(kube: Kube, namespace: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    await kube.call("POST", "/api/v1/namespaces", body)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, _ = await kube.call(
            "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default", accept=(200, 404)
        )
        if status == 200:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the namespace's default ServiceAccount did not appear")


def pod_body(name: str, node: str, gates: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node,  # kwok's node: the scheduler is not involved
        "containers": [{"name": "otelcol", "image": "otelcol-sim:bench"}],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
        # kwok's node heartbeats lag when the machine is saturated; the node controller
        # then marks the nodes NotReady, and without this would evict every pod after 300 s
        "tolerations": [{"operator": "Exists"}],
    }
    if gates:
        spec["readinessGates"] = [{"conditionType": AGENT_READY_CONDITION}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "spec": spec,
    }


async def create_pods(
    kube: Kube, namespace: str, names: list[str], *, nodes: list[str], gates: bool, workers: int
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(names)):
        queue.put_nowait(i)
    path = f"/api/v1/namespaces/{namespace}/pods"

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = pod_body(names[i], nodes[i % len(nodes)], gates)
            for attempt in range(10):
                try:
                    await kube.call("POST", path, body, accept=(201, 409))
                    break
                except (RuntimeError, aiohttp.ClientError, TimeoutError):
                    if attempt == 9:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(worker() for _ in range(workers)))


async def wait_pods_running(kube: Kube, namespace: str, count: int, within: float) -> None:
    """Until no pod of the namespace is in another phase than Running (checked in pages)."""
    deadline = time.monotonic() + within
    selector = "status.phase%21%3DRunning"
    while time.monotonic() < deadline:
        page = await kube.get(
            f"/api/v1/namespaces/{namespace}/pods?fieldSelector={selector}&limit=500"
        )
        waiting = len(page["items"])
        if waiting == 0 and not page["metadata"].get("continue"):
            listed = await kube.get(f"/api/v1/namespaces/{namespace}/pods?limit=1")
            total = 1 + int(listed["metadata"].get("remainingItemCount", 0))
            if total >= count:
                return
        log(f"pods: {waiting}{'+' if page['metadata'].get('continue') else ''} not Running yet")
        await asyncio.sleep(2.0)
    raise TimeoutError(f"pods not all Running within {within:.0f} s")


# ---- watching the fleet ------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSeen:
    at: float  # when this benchmark received it, Unix seconds
    generation: int
    status: dict[str, Any]
    size: int  # bytes of the object's JSON as the API sent it


class FleetWatch:
    """Every version of the fleet object, as a watch delivers it."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.seen: list[FleetSeen] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fleet-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _saw(self, obj: dict[str, Any]) -> None:
        self.seen.append(
            FleetSeen(
                time.time(),
                int(obj["metadata"].get("generation", 0)),
                dict(obj.get("status") or {}),
                len(json.dumps(obj, separators=(",", ":"))),
            )
        )

    async def _run(self) -> None:
        rv = ""
        path = fleets_path(self.namespace)
        while True:
            try:
                if not rv:
                    listed = await self.kube.get(path)
                    for obj in listed["items"]:
                        if obj["metadata"]["name"] == FLEET:
                            self._saw(obj)
                    rv = listed["metadata"]["resourceVersion"]
                url = (
                    f"{self.kube.server}{path}?watch=1&resourceVersion={rv}"
                    f"&fieldSelector=metadata.name%3D{FLEET}&timeoutSeconds=3600"
                )
                async with self.kube.session.get(
                    url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
                ) as resp:
                    resp.raise_for_status()
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            rv = ""
                            break
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._saw(obj)
            except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
                # e.g. 429 "storage is (re)initializing" right after the CRD was created
                log(f"fleet watch: {exc!r}; watching again")
                rv = ""
                await asyncio.sleep(0.5)

    async def wait_for(
        self,
        what: str,
        check: Callable[[FleetSeen], bool],
        within: float,
        alive: Callable[[], None],
    ) -> FleetSeen:
        deadline = time.monotonic() + within
        index = 0
        last_note = time.monotonic()
        while time.monotonic() < deadline:
            while index < len(self.seen):
                if check(self.seen[index]):
                    return self.seen[index]
                index += 1
            if time.monotonic() - last_note > 10 and self.seen:
                s = self.seen[-1].status
                log(
                    f"waiting for {what}: mapped {s.get('agentsMapped')} applied "
                    f"{s.get('configApplied')} pending {s.get('configPending')} "
                    f"hash {str(s.get('desiredHash'))[:12]}"
                )
                last_note = time.monotonic()
            alive()
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError("the fleet watch ended")
            await asyncio.sleep(0.05)
        raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")


def has_hash(desired: str) -> Callable[[FleetSeen], bool]:
    return lambda seen: seen.status.get("desiredHash") == desired


def applied_by_all(agents: int, desired: str, generation: int) -> Callable[[FleetSeen], bool]:
    def check(seen: FleetSeen) -> bool:
        s = seen.status
        return (
            s.get("desiredHash") == desired
            and s.get("observedGeneration") == generation
            and s.get("agentsMapped") == agents
            and s.get("configApplied") == agents
        )

    return check


# ---- processes: operator, simulator, sampling --------------------------------------------


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def vm_hwm_mib(pid: int) -> float | None:
    return round(peak_rss(pid) / 2**20, 1) or None


@dataclass
class SimProgress:
    at: float  # when this benchmark read the line, Unix seconds
    t: float  # the simulator's own clock
    connected: int
    acked: int
    config: str  # 12 hex digits of the newest offered config, "" before any
    applied: int
    package: str = ""  # version of the newest offered package (--accept-packages), "" before
    installed: int = 0  # agents that installed it


def simulate_argv(
    port: int, agents: int, pod_names: str, heartbeat: float, connect_rate: float
) -> list[str]:
    """`opamp-operator simulate` as the benchmarks start it: WebSocket agents on loopback,
    progress every second, generous timeouts (a connect storm is slow to answer)."""
    return [
        sys.executable,
        "-m",
        "opamp_operator",
        "--log-level=INFO",
        "simulate",
        f"--endpoint=ws://127.0.0.1:{port}/v1/opamp",
        f"--agents={agents}",
        f"--pod-names={pod_names}",
        f"--heartbeat={heartbeat:g}",
        f"--connect-rate={connect_rate:g}",
        "--progress-interval=1",
        "--open-timeout=60",
        "--request-timeout=60",
    ]


class SimulatorProcess:
    """`opamp-operator simulate` as a process; its progress lines are parsed as they come."""

    def __init__(self, argv: list[str], log_path: Path, summary_path: Path) -> None:
        self.log_path = log_path
        self.summary_path = summary_path
        self._log: IO[str] = log_path.open("w")
        self._out: IO[bytes] = summary_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.progress: list[SimProgress] = []
        self._reader = threading.Thread(target=self._read, name="simulator-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            now = time.time()
            self._log.write(line)
            m = SIM_PROGRESS.search(line)
            if m:
                c = SIM_CONFIG.search(line)
                p = SIM_PACKAGE.search(line)
                self.progress.append(
                    SimProgress(
                        now,
                        float(m["t"]),
                        int(m["connected"]),
                        int(m["acked"]),
                        c["hash"] if c else "",
                        int(c["applied"]) if c else 0,
                        p["version"] if p else "",
                        int(p["installed"]) if p else 0,
                    )
                )
        self._log.flush()

    @property
    def clock_offset(self) -> float:
        """Unix time of the simulator's t=0: the smallest (read time - t) over the progress
        lines, as a line is read a little after it is written, never before."""
        return min(p.at - p.t for p in self.progress)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the simulator exited with {self.proc.returncode}; log {self.log_path}"
            )

    def stop(self) -> dict[str, Any] | None:
        """SIGTERM; the simulator disconnects every agent and prints its summary."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=10)
        self._out.close()
        self._log.close()
        text = self.summary_path.read_text().strip()
        if not text:
            return None
        summary: dict[str, Any] = json.loads(text.splitlines()[-1])
        return summary


def start_operator(
    kubeconfig: Path,
    log_dir: Path,
    port: int,
    status_interval: float,
    extra_args: Iterable[str] = (),
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    record, proc = spawn(
        "operator",
        [
            sys.executable,
            "-m",
            "opamp_operator",
            "--log-level=INFO",
            "run",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--status-interval={status_interval:g}",
            # Above the chart's per-process defaults (5,000 WebSockets, 10,000 agent
            # records, sized for 512 Mi): this machine has the memory.
            "--max-websockets=50000",
            "--max-agents=100000",
            *extra_args,
        ],
        log_dir,
        env={"KUBECONFIG": str(kubeconfig)},
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until("opamp-operator run to listen", listening, timeout=60, watch=[record])
    return record, proc


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(path: Path, marker: str) -> list[float]:
    """Unix times of the operator's log lines that contain `marker`."""
    times: list[float] = []
    with path.open(errors="replace") as f:
        for line in f:
            if marker in line:
                m = _LOG_TIME.match(line)
                if m:
                    when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f")
                    times.append(when.timestamp())
    return times


def timer_runs(ends: list[float], interval: float, start: float, end: float) -> dict[str, Any]:
    """How long the status timer's runs took: kopf sleeps `interval` after each run ends,
    so the time between two ends less the interval is the later run."""
    runs = [b - a - interval for a, b in itertools.pairwise(ends) if start <= b <= end]
    if not runs:
        return {"runs": 0}
    return {
        "runs": len(runs),
        "median_s": round(statistics.median(runs), 2),
        "max_s": round(max(runs), 2),
    }


class PySpy:
    """`py-spy record` attached to the operator for one window (--py-spy)."""

    def __init__(self, binary: str | None, pid: int, out_dir: Path) -> None:
        self.binary = binary
        self.pid = pid
        self.out_dir = out_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str) -> None:
        if self.binary is None:
            return
        out = self.out_dir / f"py-spy-{name}.txt"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "record",
                f"--pid={self.pid}",
                "--rate=50",
                "--format=raw",
                f"--output={out}",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.out_dir / f"py-spy-{name}.log").open("wb"),
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# ---- the run -----------------------------------------------------------------------------


@dataclass
class Change:
    version: int
    desired_hash: str
    reconciled_s: float | None  # patch -> the operator logged the fleet reconciled
    first_offer_s: float | None  # patch -> first agent offered the config (simulator)
    sim_all_applied_s: float | None  # patch -> every agent applied (simulator)
    status_hash_s: float  # patch -> status carries the new desiredHash
    status_applied_s: float  # patch -> status: configApplied == N for it
    fleet_versions_seen: int  # versions of the fleet object the watch saw in the window
    api: dict[str, Any]
    apiserver_requests: dict[str, int]  # every client, by verb
    operator: dict[str, float]
    apiserver: dict[str, float]
    timer: dict[str, Any]
    pod_events: int  # pod watch events the operator handled in the window
    drifted_max: int  # the most agents status counted as drifted in the window


@dataclass
class Results:
    agents: int
    readiness_gates: bool
    status_interval: float
    machine: dict[str, Any]
    setup_s: dict[str, float] = field(default_factory=dict)
    idle: dict[str, Any] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    status_bytes: int = 0
    status_only_bytes: int = 0
    object_bytes_max: int = 0
    controller_revisions: int = 0
    events: dict[str, int] = field(default_factory=dict)  # in the namespace, by reason
    warnings: list[str] = field(default_factory=list)  # the operator's Warning events
    operator_rss_mib: float = 0.0
    operator_rss_pods_only_mib: float = 0.0  # with the pods listed, before any agent
    operator_rss_peak_mib: float | None = None
    operator_idle_cpu_pct: float = 0.0
    simulator: dict[str, Any] = field(default_factory=dict)
    connect_api: dict[str, Any] = field(default_factory=dict)
    connect_timer: dict[str, Any] = field(default_factory=dict)
    run_api: dict[str, Any] = field(default_factory=dict)
    load: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)


def load_note(results: Results, when: str) -> None:
    results.load.append((when, os.getloadavg()))


def machine() -> dict[str, Any]:
    kube_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        kube_version = subprocess.run(
            [str(binaries.find("kube-apiserver")), "--version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        ).stdout.strip()
    git = ["git", "-C", str(REPO)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=False
    ).stdout.split("\n")
    return {
        "commit": head
        + (f" + {len([d for d in dirty if d])} changed files in src" if any(dirty) else ""),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "opamp_operator": __version__,
        "kopf": getattr(kopf, "__version__", "?"),
        "kube_apiserver": kube_version,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


class Bench:
    """One run; `run()` returns the Results and stops what it started, also on failure."""

    def __init__(self, cluster: AuditedCluster, args: argparse.Namespace, workdir: Path) -> None:
        self.cluster = cluster
        self.args = args
        self.workdir = workdir
        self.n: int = args.agents
        self.ns: str = args.namespace
        self.interval: float = args.status_interval
        self.results = Results(self.n, args.readiness_gates, self.interval, machine())
        self.kube = Kube(cluster, args.workers)
        self.watch = FleetWatch(self.kube, self.ns)
        self.operator: ProcessRecord | None = None
        self.port = 0
        self.sim: SimulatorProcess | None = None
        self.sampler: Sampler | None = None
        self.spy: PySpy | None = None
        self.windows: dict[str, tuple[float, float]] = {}

    async def run(self) -> Results:
        try:
            load_note(self.results, "start")
            await self.make_pods()
            await self.start_operator_and_fleet()
            await self.connect_agents()
            await self.idle()
            generation = 1
            for k in range(self.args.changes):
                generation += 1
                await self.change(k + 2, generation)
            load_note(self.results, "after the changes")
            await self.measure_objects()
            self.stop_simulator()
            self.stop_operator()
            await asyncio.sleep(1.0)  # the audit log is written as requests complete
            self.count_requests()
            return self.results
        finally:
            await self.close()

    # What a benchmark built on this one varies (rollout_scale.py --package).
    def fleet_spec(self) -> dict[str, Any]:
        """The fleet's spec as created."""
        return {"selector": {"matchLabels": LABELS}, "config": {"inline": config(1)}}

    def simulator_flags(self) -> list[str]:
        """More flags for `opamp-operator simulate`."""
        return []

    def first_hash(self) -> str:
        """The fleet's first status.desiredHash: config v1's hash (its revision's hash
        when fleet_spec names a package)."""
        return config_hash(config(1))

    async def close(self) -> None:
        """Stop whatever this run started, whatever stage it reached."""
        if self.spy is not None:
            self.spy.stop()
        if self.sim is not None:
            self.sim.stop()
        self.stop_operator()
        if self.sampler is not None:
            self.sampler.stop()
        await self.watch.stop()
        await self.kube.close()

    def alive(self) -> None:
        """Raise if the operator or the simulator died (a wait then says why)."""
        if self.operator is not None and not self.operator.alive():
            raise RuntimeError(f"the operator exited; log {self.operator.log}")
        if self.sim is not None:
            self.sim.check()

    async def wait(self, what: str, check: Callable[[FleetSeen], bool]) -> FleetSeen:
        return await self.watch.wait_for(what, check, self.args.timeout, self.alive)

    async def make_pods(self) -> None:
        t = time.time()
        await install_crd(self.kube)
        await create_namespace(self.kube, self.ns)
        names = [f"{self.args.pod_prefix}-{i}" for i in range(self.n)]
        nodes = self.cluster.node_names
        log(f"creating {self.n} pods in {self.ns} on {len(nodes)} kwok nodes")
        await create_pods(
            self.kube,
            self.ns,
            names,
            nodes=nodes,
            gates=self.args.readiness_gates,
            workers=self.args.workers,
        )
        self.results.setup_s["pods_created"] = round(time.time() - t, 1)
        await wait_pods_running(self.kube, self.ns, self.n, self.args.timeout)
        self.results.setup_s["pods_running"] = round(time.time() - t, 1)
        log(f"{self.n} pods Running after {time.time() - t:.1f} s")

    async def start_operator_and_fleet(self) -> None:
        self.port = free_port()
        t = time.time()
        self.operator, _ = start_operator(
            self.cluster.operator_kubeconfig(), self.workdir / "logs", self.port, self.interval
        )
        self.results.setup_s["operator_listening"] = round(time.time() - t, 1)
        self.sampler = Sampler(
            {"operator": self.operator.pid, "apiserver": self.cluster.pid_of("kube-apiserver")}
        )
        self.sampler.start()
        self.spy = PySpy(self.args.py_spy, self.operator.pid, self.workdir)
        self.watch.start()
        await self.kube.call(
            "POST",
            fleets_path(self.ns),
            {
                "apiVersion": API_VERSION,
                "kind": "CollectorFleet",
                "metadata": {"name": FLEET},
                "spec": self.fleet_spec(),
            },
        )
        n = self.n
        await self.wait(f"status podsSelected == {n}", lambda s: s.status.get("podsSelected") == n)
        self.results.setup_s["status_all_pods"] = round(time.time() - t, 1)
        await asyncio.sleep(self.interval)
        self.sampler.take()
        self.results.operator_rss_pods_only_mib = round(
            self.sampler.samples["operator"][-1].rss / 2**20, 1
        )
        log(f"operator sees {n} pods after {time.time() - t:.1f} s")

    async def connect_agents(self) -> None:
        assert self.spy is not None
        t = time.time()
        self.spy.start("connect")
        self.sim = SimulatorProcess(
            [
                *simulate_argv(
                    self.port,
                    self.n,
                    self.args.pod_prefix,
                    self.args.heartbeat,
                    self.args.connect_rate,
                ),
                f"--namespace={self.ns}",
                *self.simulator_flags(),
            ],
            self.workdir / "logs" / "simulator.log",
            self.workdir / "simulator-summary.json",
        )
        await self.wait(
            f"status: {self.n} agents mapped and config v1 applied",
            applied_by_all(self.n, self.first_hash(), 1),
        )
        self.spy.stop()
        self.windows["connect"] = (t, time.time())
        setup = self.results.setup_s
        setup["v1_applied_by_all_in_status"] = round(time.time() - t, 1)
        assert self.operator is not None
        ends = log_times(Path(self.operator.log), TIMER_DONE)
        self.results.connect_timer = timer_runs(ends, self.interval, t, time.time())
        connected = next((p for p in self.sim.progress if p.connected == self.n), None)
        if connected is not None:
            setup["all_agents_connected"] = round(connected.at - t, 1)
        log(f"status: v1 applied by {self.n} agents {time.time() - t:.1f} s after the simulator")
        load_note(self.results, "v1 applied")

    async def idle(self) -> None:
        """What the operator does with nothing to do."""
        assert self.spy is not None
        assert self.sampler is not None
        assert self.operator is not None
        await asyncio.sleep(self.interval * 2)
        start = time.time()
        self.spy.start("idle")
        await asyncio.sleep(self.args.idle)
        self.spy.stop()
        end = time.time()
        self.windows["idle"] = (start, end)
        stats = self.sampler.window("operator", start, end)
        ends = log_times(Path(self.operator.log), TIMER_DONE)
        self.results.idle = {
            "seconds": round(end - start, 1),
            "operator": stats,
            "timer": timer_runs(ends, self.interval, start, end),
            "fleet_versions_seen": sum(1 for s in self.watch.seen if start <= s.at <= end),
            "pod_events": sum(
                1 for x in log_times(Path(self.operator.log), POD_EVENT) if start <= x <= end
            ),
        }
        self.results.operator_idle_cpu_pct = stats["cpu_pct"]
        load_note(self.results, "before the changes")

    async def change(self, version: int, generation: int) -> None:
        assert self.spy is not None
        assert self.sampler is not None
        assert self.operator is not None
        assert self.sim is not None
        text = config(version)
        desired = config_hash(text)
        await asyncio.sleep(self.interval * 2)  # a status tick or two in between
        before = await self.kube.request_totals()
        seen_before = len(self.watch.seen)
        self.spy.start(f"change-{version}")
        t0 = time.time()
        await self.kube.call(
            "PATCH",
            fleets_path(self.ns, FLEET),
            {"spec": {"config": {"inline": text}}},
            content_type="application/merge-patch+json",
        )
        got_hash = await self.wait(f"status desiredHash of v{version}", has_hash(desired))
        done = await self.wait(
            f"status: v{version} applied by {self.n}",
            applied_by_all(self.n, desired, generation),
        )
        t1 = time.time()
        self.spy.stop()
        after = await self.kube.request_totals()
        self.sampler.take()
        op_log = Path(self.operator.log)
        reconciled = [x for x in log_times(op_log, RECONCILED) if x >= t0]
        sim_done = next(
            (p for p in self.sim.progress if p.config == desired[:12] and p.applied == self.n),
            None,
        )
        self.windows[f"change-{version}"] = (t0, t1)
        self.results.changes.append(
            Change(
                version=version,
                desired_hash=desired,
                reconciled_s=round(reconciled[0] - t0, 2) if reconciled else None,
                first_offer_s=None,
                sim_all_applied_s=round(sim_done.at - t0, 2) if sim_done else None,
                status_hash_s=round(got_hash.at - t0, 2),
                status_applied_s=round(done.at - t0, 2),
                fleet_versions_seen=len(self.watch.seen) - seen_before,
                api={},
                apiserver_requests={v: after[v] - before[v] for v in sorted(after)},
                operator=self.sampler.window("operator", t0, t1),
                apiserver=self.sampler.window("apiserver", t0, t1),
                timer=timer_runs(log_times(op_log, TIMER_DONE), self.interval, t0, t1),
                pod_events=sum(1 for x in log_times(op_log, POD_EVENT) if t0 <= x <= t1),
                drifted_max=max(
                    int(s.status.get("drifted") or 0) for s in self.watch.seen[seen_before:]
                ),
            )
        )
        log(
            f"v{version}: status applied by all after {done.at - t0:.2f} s "
            f"(desiredHash after {got_hash.at - t0:.2f} s)"
        )

    async def measure_objects(self) -> None:
        assert self.sampler is not None
        assert self.operator is not None
        r = self.results
        _, raw = await self.kube.call("GET", fleets_path(self.ns, FLEET))
        r.status_bytes = len(raw)
        r.status_only_bytes = len(json.dumps(json.loads(raw).get("status"), separators=(",", ":")))
        r.object_bytes_max = max(s.size for s in self.watch.seen)
        revs = await self.kube.get(
            f"/apis/apps/v1/namespaces/{self.ns}/controllerrevisions"
            f"?labelSelector={GROUP}/fleet%3D{FLEET}"
        )
        r.controller_revisions = len(revs["items"])
        events = await self.kube.get(f"/api/v1/namespaces/{self.ns}/events")
        r.events = dict(
            Counter(
                f"{e.get('source', {}).get('component', '?')}: {e.get('reason')}"
                for e in events["items"]
            ).most_common()
        )
        r.warnings = [
            f"{e.get('reason')}: {e.get('message')}"
            for e in events["items"]
            if e.get("type") == "Warning" and e.get("source", {}).get("component") == "kopf"
        ][:10]
        self.sampler.take()
        r.operator_rss_mib = round(self.sampler.samples["operator"][-1].rss / 2**20, 1)
        r.operator_rss_peak_mib = vm_hwm_mib(self.operator.pid)

    def stop_simulator(self) -> None:
        """Stop it and take the exact apply times from its summary."""
        assert self.sim is not None
        sim, self.sim = self.sim, None
        summary = sim.stop()
        if summary is None:
            return
        offset = sim.clock_offset
        by_hash = {c["hash"]: c for c in summary["configs"]}
        for change in self.results.changes:
            c = by_hash.get(change.desired_hash)
            if c is None:
                continue
            t0 = self.windows[f"change-{change.version}"][0]
            change.first_offer_s = round(offset + c["first_offer_s"] - t0, 2)
            if c["all_applied_s"] is not None:
                change.sim_all_applied_s = round(
                    offset + c["first_offer_s"] + c["all_applied_s"] - t0, 2
                )
        keys = (
            "all_connected_s",
            "all_acked_s",
            "reconnects",
            "connect_failures",
            "errors",
            "server_errors",
            "peak_rss_mib",
        )
        self.results.simulator = {k: summary[k] for k in keys}

    def stop_operator(self) -> None:
        if self.operator is not None:
            terminate(self.operator)
            self.operator = None

    def count_requests(self) -> None:
        audit = read_audit(self.cluster.audit_log)
        for change in self.results.changes:
            change.api = tally(audit, *self.windows[f"change-{change.version}"])
        self.results.idle["api"] = tally(audit, *self.windows["idle"])
        self.results.connect_api = tally(audit, *self.windows["connect"])
        self.results.run_api = tally(audit, 0, time.time())


async def run_bench(cluster: AuditedCluster, args: argparse.Namespace, workdir: Path) -> Results:
    """Bench opens its HTTP session in __init__, which needs the running loop."""
    return await Bench(cluster, args, workdir).run()


# ---- output ------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _writes(api: dict[str, Any]) -> str:
    by = api.get("writes_by", {})
    return ", ".join(f"{v} {k}" for k, v in by.items()) or "none"


def print_world_header(
    machine: dict[str, Any],
    what: str,
    status_interval: float,
    load: list[tuple[str, tuple[float, float, float]]],
    setup_s: dict[str, float],
) -> None:
    """The lines every report of a run in the test world begins with: machine, versions,
    commit, date, `what` was run, load averages and setup times."""
    m = machine
    print(
        f"\n{m['host']} · {m['cores']} cores · Python {m['python']} · kopf {m['kopf']} · "
        f"{m['kube_apiserver']} · {m['commit']} · {m['date']} · {what} · "
        f"status interval {status_interval:g} s"
    )
    print("load average (1/5/15 min): " + "; ".join(f"{w}: {la}" for w, la in load))
    print("\nsetup (s): " + ", ".join(f"{k} {v}" for k, v in setup_s.items()))


def print_report(r: Results) -> None:
    print_world_header(
        r.machine,
        f"{r.agents} agents · readiness gates {'on' if r.readiness_gates else 'off'}",
        r.status_interval,
        r.load,
        r.setup_s,
    )
    print(
        "\n| change | operator reconciled (s) | first agent offered (s) | all agents APPLIED "
        "(simulator) (s) | status: new desiredHash (s) | status: all APPLIED (s) | operator "
        "API writes | operator API reads | status timer runs (median / max s) | operator CPU "
        "(% core) | operator RSS peak (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in r.changes:
        print(
            f"| v{c.version - 1}→v{c.version} | {_fmt(c.reconciled_s, 2)} | "
            f"{_fmt(c.first_offer_s, 2)} | {_fmt(c.sim_all_applied_s, 2)} | "
            f"{c.status_hash_s:.2f} | {c.status_applied_s:.2f} | {c.api['writes']} | "
            f"{c.api['reads']} | {_fmt(c.timer.get('median_s'), 2)} / "
            f"{_fmt(c.timer.get('max_s'), 2)} | {c.operator['cpu_pct']} | "
            f"{c.operator['rss_peak_mib']} |"
        )
    for c in r.changes:
        print(
            f"v{c.version}: pod events handled {c.pod_events}, "
            f"fleet versions {c.fleet_versions_seen}, most drifted in status {c.drifted_max}"
        )
    for c in r.changes:
        print(f"\nv{c.version} writes: {_writes(c.api)}; reads: {c.api['reads_by']}")
        print(f"v{c.version} apiserver_request_total delta (every client): {c.apiserver_requests}")
    idle = r.idle
    print(
        f"\nidle {idle['seconds']} s: operator writes {idle['api']['writes']} "
        f"({_writes(idle['api'])}), reads {idle['api']['reads']}, CPU "
        f"{idle['operator']['cpu_pct']} % of a core, status timer {idle['timer']}, pod events "
        f"{idle['pod_events']}"
    )
    print(
        f"status object: {r.status_bytes} bytes (status alone {r.status_only_bytes}; largest "
        f"version seen {r.object_bytes_max}); ControllerRevisions {r.controller_revisions}; "
        f"operator RSS {r.operator_rss_mib} MiB (peak {r.operator_rss_peak_mib}; "
        f"{r.operator_rss_pods_only_mib} with the pods and no agents)"
    )
    print(f"events in the namespace: {r.events}")
    for w in r.warnings:
        print(f"  operator warning: {w}")
    print(
        f"connect (simulator start until status: v1 applied by all): operator writes "
        f"{r.connect_api['writes']} ({_writes(r.connect_api)}); status timer {r.connect_timer}"
    )
    print(f"simulator: {r.simulator}")
    print(f"whole run, operator: {r.run_api['writes']} writes ({_writes(r.run_api)})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000, help="agents = pods")
    parser.add_argument("--changes", type=int, default=2, help="config changes measured")
    parser.add_argument(
        "--status-interval", type=float, default=5.0, help="the operator's (default 5 s)"
    )
    parser.add_argument(
        "--readiness-gates",
        action="store_true",
        help="pods declare the agent-ready readiness gate (the operator patches every pod)",
    )
    parser.add_argument("--heartbeat", type=float, default=30.0, help="agents' heartbeat (s)")
    parser.add_argument(
        "--connect-rate", type=float, default=500.0, help="agents started per second"
    )
    parser.add_argument("--idle", type=float, default=30.0, help="idle window before changes")
    parser.add_argument("--nodes", type=int, default=3, help="kwok nodes")
    parser.add_argument("--workers", type=int, default=32, help="concurrent pod creations")
    parser.add_argument("--namespace", default="fleet-scale")
    parser.add_argument("--pod-prefix", default="collector")
    parser.add_argument("--timeout", type=float, default=900.0, help="for each wait (s)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--py-spy", default=None, help="py-spy binary: profile the operator in each window"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (logs, audit log, profiles)"
    )
    args = parser.parse_args()
    results = run_in_world(args, "fleet-scale-", run_bench)
    print_report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str) + "\n")


_R = TypeVar("_R")


def run_in_world(
    args: argparse.Namespace,
    prefix: str,
    bench: Callable[[AuditedCluster, argparse.Namespace, Path], Coroutine[Any, Any, _R]],
) -> _R:
    """Start the audited cluster in a fresh work dir, run `bench` in it, stop everything
    (also on failure, SIGTERM or Ctrl-C); the work dir is kept with --keep or on failure."""
    raise_file_limit(args.agents + 1000)
    workdir = Path(mkdtemp(prefix=prefix))
    log(f"work dir {workdir}")
    cluster = AuditedCluster(workdir=workdir / "cluster", nodes=args.nodes)

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    failed = True
    try:
        t = time.time()
        cluster.start()
        log(f"cluster up in {time.time() - t:.1f} s")
        results = asyncio.run(bench(cluster, args, workdir))
        failed = False
    finally:
        cluster.stop(remove=False)
        if not args.keep and not failed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")
    return results


if __name__ == "__main__":
    main()
