"""A Collector image upgrade in template mode, staged and gated by a ConfigRollout, with
real Collectors on both sides (docs/rollout.md "Template changes").

The operator renders the fleet's workload (3 pods: a Deployment of 3 replicas, or a
DaemonSet on the test world's 3 kwok nodes) with image A. `PodRunner`
(world/pod_runner.py) is the container runtime kwok lacks: for every Running pod it runs
opampsupervisor with the Collector binary the pod's image holds — A: otelcol-opamp, B:
otelcol-opamp-next, the same Collector built a second time with another version
(scripts/test-deps, versions.env) — and kills it when its pod goes (the stop signal,
then SIGKILL after the grace period). An image that holds no Collector (one no node could
pull) gets a pod whose container never starts: its agent never connects.

The world behaves as a cluster would for what these proofs lean on: the real
kube-controller-manager scales the Deployments and recreates a DaemonSet's deleted pod
on its node from the DaemonSet's template; kwok reports a pod Running the moment it is
bound, so the agent-ready readiness gate (set by the operator once the pod's Collector
connected and applied its config) is the pods' only real readiness, as rendered. What
kwok does not do, the runner stands in for (module docstring of world/pod_runner.py):
images are only keys of the runner's map, a deleted pod's object goes before its
container is dead, pods share the machine's network (each Collector listens on its own
pod IP; its own metrics listener is off).

Each proof: a rollout of 3 steps (1 pod, paused until promoted; 50 %, paused 6 s; 100 %)
governs the fleet. First a change to the image no node can run: the first step's new pod
never connects, the step fails at its apply timeout (ApplyTimeout) and the rollout rolls
back, every pod on A again. Then A → B with spec.version.expected B's version: at each
step the pods' images, the Collectors' service.version and the fleet's status agree on
how many run B; the rollout passes a step only once its new pods' agents applied the
fleet's config and report B's version. The Deployment proof SIGKILLs the operator while
the second step is under way; the restarted operator resumes it exactly (no pod replaced
twice, the same members). In the end every pod runs B and no process of A is left.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
import urllib.error
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.k8s.workload import canary_name, workload_name
from world import binaries
from world.cluster import LocalCluster
from world.fleets import (
    create_fleet,
    create_rollout,
    events_of,
    fleet_status,
    patch_fleet_spec,
    rollout_control,
    rollout_status,
)
from world.operator import OperatorProcess, start_operator
from world.pod_runner import PodRunner, State
from world.processes import eventually, free_port

pytestmark = pytest.mark.world

COLLECTOR_A = "otelcol-opamp"
COLLECTOR_B = "otelcol-opamp-next"
IMAGE_A = "registry.test/otelcol:a"
IMAGE_B = "registry.test/otelcol:b"
IMAGE_MISSING = "registry.test/otelcol:missing"  # holds no Collector the runner knows
IMAGES = {IMAGE_A: COLLECTOR_A, IMAGE_B: COLLECTOR_B}
PODS = 3  # the Deployment's replicas; the kwok nodes a DaemonSet runs on
WAIT = 150.0
# A new pod's agent must have applied the revision within this (from the step's start or
# the pod's creation): a pod is started, its supervisor connects, its Collector applies
# the config (APPLIED only after config_apply_timeout, below) in ~15 s here.
APPLY_TIMEOUT = 30
STEP_PAUSE = 6
STEPS = [
    {"agents": 1, "pause": {"untilPromoted": True}},
    {"percent": 50, "pause": {"seconds": STEP_PAUSE}},
    {"percent": 100},
]
# Each Collector listens on its own pod's IP (kwok hands out loopback addresses).
CONFIG = """\
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "${env:K8S_POD_IP}:4317"}
exporters:
  debug: {}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [debug]}
  telemetry: {metrics: {level: none}}
"""
# opampsupervisor v0.149 reports a config APPLIED only when config_apply_timeout is over
# (world/collector.py): the rendered 30 s would make every step wait that long.
SUPERVISOR_CONFIG = {"agent": {"config_apply_timeout": "10s"}}


@dataclass
class Operator:
    """`opamp-operator run`, which its template-mode agents reach on its own port; it
    may be SIGKILLed and started again on that port."""

    cluster: LocalCluster
    workdir: Path
    port: int = field(default_factory=free_port)
    process: OperatorProcess | None = None
    t0: float = field(default_factory=time.monotonic)

    def mark(self, what: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {what}")

    def start(self, name: str) -> OperatorProcess:
        endpoint = f"--agent-endpoint=ws://127.0.0.1:{self.port}/v1/opamp"
        self.process = start_operator(
            self.cluster.kubeconfig,
            self.workdir / name,
            endpoint,
            "--rollout-interval=1",
            port=self.port,
        )
        return self.process

    def kill(self) -> None:
        """SIGKILL: no shutdown, no status written on the way out."""
        assert self.process is not None
        os.killpg(self.process.record.pid, signal.SIGKILL)
        self.process.proc.wait(timeout=10)

    @contextlib.contextmanager
    def running(self) -> Iterator[Operator]:
        """Started; stopped (in the background) when the block ends, however it ends."""
        self.start("operator")
        try:
            yield self
        finally:
            if self.process is not None:
                self.process.stop_in_background()


@dataclass
class Fleet:
    """One template fleet (its rollout of the same name), and its pods' containers."""

    api: Any
    ns: str
    kind: str
    name: str
    operator: Operator
    runner: PodRunner
    done_with: set[str] = field(default_factory=set)  # desiredHashes of finished rollouts

    @property
    def selector(self) -> str:
        return f"app={self.name}"

    def create(self) -> None:
        """The fleet on A, its rollout adopting A as the stable revision."""
        template = {
            "kind": self.kind,
            "image": IMAGE_A,
            "replicas": PODS,
            "supervisorConfig": SUPERVISOR_CONFIG,
        }
        labels = {"app": self.name}
        create_fleet(self.api, self.ns, self.name, labels, CONFIG, template=template)

    def govern(self) -> None:
        create_rollout(
            self.api,
            self.ns,
            self.name,
            self.name,
            steps=STEPS,
            gates={"applyTimeoutSeconds": APPLY_TIMEOUT},
        )

    def patch(self, spec: dict[str, Any]) -> None:
        patch_fleet_spec(self.api, self.ns, self.name, spec)
        self.operator.mark(f"{self.name}: {spec}")

    def rollout(self) -> dict[str, Any]:
        return rollout_status(self.api, self.ns, self.name)

    def phase(self, phase: str, step: int | None = None) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            s = self.rollout()
            if s.get("desiredHash") in self.done_with:
                return None  # the rollout has not taken the new revision in hand yet
            if s.get("phase") in ("RolledBack", "Failed") and phase != s.get("phase"):
                raise AssertionError(
                    f"{self.name}: the rollout ended {s.get('phase')}: {s.get('message')}"
                )
            ok = s.get("phase") == phase and (step is None or s.get("currentStep") == step)
            return s if ok else None

        found = eventually(f"{self.name}: rollout {phase} at step {step}", reached, WAIT)
        self.operator.mark(
            f"{self.name}: rollout {phase} (step {found.get('currentStep')}): "
            f"{found.get('message')}"
        )
        return found

    def pods(self) -> list[Any]:
        core: Any = k8s.CoreV1Api(self.api)
        listed = core.list_namespaced_pod(self.ns, label_selector=self.selector).items
        return [p for p in listed if p.metadata.deletion_timestamp is None]

    def images(self) -> Counter[str]:
        return Counter(p.spec.containers[0].image for p in self.pods())

    def agents(self) -> list[dict[str, Any]]:
        process = self.operator.process
        assert process is not None
        try:
            found = process.get(f"/api/v1/fleets/{self.ns}/{self.name}/agents")["agents"]
        except (urllib.error.HTTPError, urllib.error.URLError, ConnectionError) as error:
            if isinstance(error, urllib.error.HTTPError) and error.code != 404:
                raise
            return []  # a restarted operator not listening, or not resumed the fleet, yet
        return [a for a in found if a["connected"]]

    def workload(self) -> Any:
        apps: Any = k8s.AppsV1Api(self.api)
        if self.kind == "DaemonSet":
            return apps.read_namespaced_daemon_set(workload_name(self.name), self.ns)
        return apps.read_namespaced_deployment(workload_name(self.name), self.ns)

    def canary(self) -> Any | None:
        apps: Any = k8s.AppsV1Api(self.api)
        try:
            return apps.read_namespaced_deployment(canary_name(self.name), self.ns)
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise

    def canary_gone(self) -> bool:
        return self.canary() is None

    def agree(self, on_b: int, versions: tuple[str, str], what: str) -> None:
        """Wait until pods, Collectors, agents and the fleet's status all say `on_b` pods
        run B and the rest A, every agent with the fleet's config applied."""
        version_a, version_b = versions
        on_a = PODS - on_b
        wanted_images = Counter({IMAGE_A: on_a, IMAGE_B: on_b}) - Counter()
        wanted_versions = Counter({version_a: on_a, version_b: on_b}) - Counter()
        histogram = sorted(wanted_versions.items())

        def agreed() -> bool:
            agents = self.agents()
            status = fleet_status(self.api, self.ns, self.name)
            reported = status.get("versions") or []
            pods = {p.metadata.name: p.spec.containers[0].image for p in self.pods()}
            running = {n: c.image for n, c in self.runner.running().items()}
            versions_of = {a["pod"].split("/")[1]: a["version"] for a in agents}
            return (
                Counter(pods.values()) == wanted_images
                # each pod's container runs its image's Collector...
                and running == pods
                # ...which reports its build's version, the fleet's config applied
                and versions_of
                == {n: version_b if i == IMAGE_B else version_a for n, i in pods.items()}
                and all(a["remoteConfigStatus"] == "APPLIED" for a in agents)
                and Counter(a["version"] for a in agents) == wanted_versions
                and sorted((e["version"], e["count"]) for e in reported) == histogram
            )

        try:
            eventually(f"{self.name}, {what}: {on_b} on B, {on_a} on A", agreed, WAIT)
        except AssertionError:
            print(self.runner.describe())
            print(self.images(), [(a["pod"], a["version"]) for a in self.agents()])
            raise
        self.operator.mark(f"{self.name}, {what}: {on_b} on B, {on_a} on A")

    def history(self) -> Counter[str]:
        """Containers ever started, by image."""
        return Counter(c.image for c in self.runner.containers(include_stopped=True).values())

    def check_stops(self) -> None:
        """Every container ran without error and was stopped as the kubelet stops it."""
        for container in self.runner.containers(include_stopped=True).values():
            assert container.error is None, container
            if container.image != IMAGE_MISSING:
                assert container.stopped_by == "SIGINT", container

    def workload_events(self) -> list[str]:
        """The Workload Events of the fleet and its rollout: what the operator did to
        the fleet's objects, whichever of the two did it."""
        return [
            m
            for kind in ("ConfigRollout", "CollectorFleet")
            for r, m in events_of(self.api, self.ns, kind)
            if r == "Workload" and self.name in m
        ]


def _versions() -> tuple[str, str]:
    """Two builds of one Collector, each reporting the version it is pinned to."""
    version_a = binaries.collector_version(COLLECTOR_A)
    version_b = binaries.collector_version(COLLECTOR_B)
    assert version_a != version_b
    assert binaries.reported_collector_version(COLLECTOR_A) == version_a
    assert binaries.reported_collector_version(COLLECTOR_B) == version_b
    return version_a, version_b


def _step_2_posted(fleets: list[Fleet]) -> bool:
    """Each rollout's StepStarted for step 2, and the DaemonSet's pod deletions so far
    (the missing image's, its rollback's, steps 1 and 2)."""
    events = events_of(fleets[0].api, fleets[0].ns, "ConfigRollout")
    started = sum(r == "StepStarted" and m.startswith("step 2/3") for r, m in events)
    deleted = [
        sum("deleted Pod" in m for m in f.workload_events())
        for f in fleets
        if f.kind == "DaemonSet"
    ]
    return started == len(fleets) and all(n == 4 for n in deleted)


def _running_a(fleet: Fleet, count: int) -> bool:
    return len(fleet.runner.running(COLLECTOR_A)) == count


def _roll_back(fleets: list[Fleet], versions: tuple[str, str]) -> None:
    """The first step's new pod of an image no node can run never connects: the step
    fails at its apply timeout and every pod is back on A."""
    for fleet in fleets:
        fleet.patch({"template": {"image": IMAGE_MISSING}})
    for fleet in fleets:
        fleet.runner.wait(
            f"{fleet.name}: one pod of the missing image, its container not started",
            lambda c: sum(x.state == State.IMAGE_NOT_FOUND for x in c.values()) == 1,
            WAIT,
        )
        # Only the first step's one pod. The DaemonSet's other two nodes keep running A;
        # the stable Deployment keeps all three, its canary pod never available.
        # The replaced node's A container may still be stopping when the new pod shows
        # up: the DaemonSet controller does not wait for a terminating pod to be gone.
        on_a = PODS if fleet.kind == "Deployment" else PODS - 1
        eventually(
            f"{fleet.name}: {on_a} containers of A running",
            functools.partial(_running_a, fleet, on_a),
            WAIT,
        )
    for fleet in fleets:
        status = fleet.phase("RolledBack")
        fleet.done_with.add(status["desiredHash"])
        (failing, *_) = status["failingAgents"]
        assert failing["reason"] == "ApplyTimeout"
        assert f"not applied within {APPLY_TIMEOUT}s" in failing["message"]
        assert status["steps"][0]["offered"] == 1
    for fleet in fleets:
        fleet.agree(0, versions, "rolled back")
        if fleet.kind == "Deployment":
            eventually("the canary Deployment deleted", fleet.canary_gone, WAIT)
            assert fleet.workload().spec.replicas == PODS
        else:
            assert fleet.workload().spec.update_strategy.type == "OnDelete"
            assert fleet.workload().spec.template.spec.containers[0].image == IMAGE_A


def _upgrade(fleets: list[Fleet], versions: tuple[str, str], operator: Operator) -> None:
    """A -> B in the rollout's three steps, the pods agreeing at each; the operator
    SIGKILLed while the second step is under way."""
    version_b = versions[1]
    for fleet in fleets:
        fleet.patch({"template": {"image": IMAGE_B}, "version": {"expected": version_b}})
    for fleet in fleets:
        fleet.phase("Paused", step=0)
        fleet.agree(1, versions, "step 1 (1 pod, until promoted)")
    time.sleep(3)  # a hold, on purpose: nothing moves until the promote
    for fleet in fleets:
        assert fleet.rollout()["phase"] == "Paused"
        assert fleet.images() == Counter({IMAGE_A: PODS - 1, IMAGE_B: 1})
        assert fleet_status(fleet.api, fleet.ns, fleet.name)["agentsOutdated"] == PODS - 1
        rollout_control(fleet.api, fleet.ns, fleet.name, "promote")
    for fleet in fleets:
        assert fleet.phase("Progressing", step=1)["stepArmed"] is True
    # SIGKILLed mid-step once the step's Events are in the API (kopf posts them from a
    # queue, which dies with the process), so the counts at the end are exact.
    eventually("step 2's Events posted", functools.partial(_step_2_posted, fleets), WAIT)
    operator.kill()
    operator.mark("operator SIGKILLed during step 2")
    operator.start("restarted")
    operator.mark("operator restarted")
    for fleet in fleets:
        fleet.phase("Paused", step=1)
        fleet.agree(2, versions, "step 2 (50 %)")
    for fleet in fleets:
        fleet.phase("Succeeded")
        fleet.agree(PODS, versions, "step 3 (100 %)")
        status = fleet_status(fleet.api, fleet.ns, fleet.name)
        assert status["agentsOutdated"] == 0
        assert status["targetVersion"] == version_b


@pytest.fixture
def operator(crds: None, cluster: LocalCluster, tmp_path: Path) -> Iterator[Operator]:
    with Operator(cluster, tmp_path).running() as running:
        yield running


def test_image_upgrades_are_staged_for_a_deployment_and_a_daemon_set(
    operator: Operator, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    versions = _versions()
    with contextlib.ExitStack() as stack:
        fleets = []
        for kind, name in (("Deployment", "gateways"), ("DaemonSet", "agents")):
            runner = PodRunner(api_client, namespace, f"app={name}", IMAGES, tmp_path / name)
            stack.enter_context(runner)
            fleets.append(Fleet(api_client, namespace, kind, name, operator, runner))
        gateways, agents = fleets
        for fleet in fleets:
            fleet.create()
        for fleet in fleets:
            fleet.agree(0, versions, "created")
            fleet.govern()
        for fleet in fleets:
            fleet.phase("Succeeded")
        nodes = sorted(p.spec.node_name for p in agents.pods())
        assert len(set(nodes)) == PODS

        _roll_back(fleets, versions)
        _upgrade(fleets, versions, operator)

        # The stable Deployment takes the proven template and rolls it out its own way;
        # the canary goes once the stable one is available.
        eventually("the canary Deployment deleted", gateways.canary_gone, WAIT)
        deployment = gateways.workload()
        assert deployment.spec.replicas == PODS
        assert deployment.spec.template.spec.containers[0].image == IMAGE_B
        gateways.agree(PODS, versions, "promoted to the stable Deployment")
        # The DaemonSet's pods were replaced on their nodes, one pod per node all along;
        # the rollout over, it is back on Kubernetes' own strategy.
        assert sorted(p.spec.node_name for p in agents.pods()) == nodes
        eventually(
            "the DaemonSet back on RollingUpdate",
            lambda: agents.workload().spec.update_strategy.type == "RollingUpdate",
            WAIT,
        )
        assert agents.workload().spec.template.spec.containers[0].image == IMAGE_B
        for fleet in fleets:
            fleet.runner.check()

    # Every container there was. The Deployment: A's three (the stable Deployment gives
    # a pod up only once a canary pod is available, so the missing image cost it none),
    # the missing image's one, B's three canary pods, each started once (the restart
    # replaced none of them), then the stable Deployment's three. The DaemonSet: A's
    # three and the one the rollback put back on its node, the missing image's one, B's
    # three, each pod replaced once.
    print("\n--- gateways\n" + gateways.runner.timeline())
    assert gateways.history() == Counter({IMAGE_A: PODS, IMAGE_MISSING: 1, IMAGE_B: 2 * PODS})
    assert agents.history() == Counter({IMAGE_A: PODS + 1, IMAGE_MISSING: 1, IMAGE_B: PODS})
    for fleet in fleets:
        fleet.check_stops()
    events = events_of(api_client, namespace, "ConfigRollout")
    reasons = [r for r, _ in events]
    assert reasons.count("RolledBack") == len(fleets)
    # 1 step for the missing image, 3 for B, each started once across the restart.
    assert reasons.count("StepStarted") == 4 * len(fleets), events
    # The DaemonSet's pods deleted by the operator: 1, then 1 back, then 3.
    assert sum("deleted Pod" in m for m in agents.workload_events()) == PODS + 2
