"""A Collector image upgrade in template mode, done by Kubernetes' own controllers, with
real Collectors on both sides.

The operator renders a Deployment of 2 pods with image A. `PodRunner` (world/pod_runner.py)
is the container runtime kwok lacks: for every Running pod it runs opampsupervisor with the
Collector binary the pod's image holds — A: otelcol-opamp, B: otelcol-opamp-next, the same
Collector built a second time with another version (scripts/test-deps, versions.env) — and
kills it when the pod goes. Changing the fleet's `spec.template.image` to B makes the
operator update the Deployment; the real kube-controller-manager rolls it (maxSurge 1,
maxUnavailable 0 for 2 replicas): a pod of B, which the controller waits on until it is
Ready — and Ready waits on the agent-ready gate, which the operator sets only once
Collector B connected and applied the fleet's config — then one pod of A deleted, and
again. The fleet ends with both agents on B's service.version (the version the Collector
itself reports, through the supervisor) and none left on A. An image then that holds no
Collector (one no node could pull) gets a pod whose container never starts: its gate stays
False and the rollout stalls with B's pods kept, as a cluster's would on ErrImagePull. So
the world behaves as a cluster would for an image change: the rollout is paced by the real
Collectors.

What kwok does not do, and the runner stands in for or the test accepts: it runs no
containers and pulls no images (the image is only a key of the runner's map); it reports
a container running and ready the moment the pod is bound, so ContainersReady is True at
once and the readiness gate is the only real readiness signal (a template pod's only
probe, as rendered); it deletes a pod as soon as its deletionTimestamp is set, without
waiting for the containers to stop, so the pod object is gone while the runner still
stops its supervisor (a kubelet keeps it Terminating until then), and hands that pod's IP
to a new pod at once (the runner starts the new container only once the old one is dead,
as a kubelet tears the old sandbox down first); it gives pods no network namespace of
their own (their IPs are loopback addresses of this machine, so the runner turns off the
Collector's own metrics listener, localhost:8888 in every pod otherwise); and it neither
restarts a container that exits nor reports that it did (the runner records it as an
error).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.k8s.workload import workload_name
from world import binaries
from world.cluster import LocalCluster
from world.fleets import create_fleet, fleet_status, patch_fleet_spec
from world.operator import OperatorProcess, start_operator
from world.pod_runner import Container, PodRunner, State
from world.processes import eventually, free_port

pytestmark = pytest.mark.world

FLEET = "collectors"
LABELS = {"app": "collector"}
SELECTOR = "app=collector"
COLLECTOR_A = "otelcol-opamp"
COLLECTOR_B = "otelcol-opamp-next"
IMAGE_A = "registry.test/otelcol:a"
IMAGE_B = "registry.test/otelcol:b"
IMAGES = {IMAGE_A: COLLECTOR_A, IMAGE_B: COLLECTOR_B}
IMAGE_MISSING = "registry.test/otelcol:missing"  # holds no Collector the runner knows
REPLICAS = 2
WAIT = 120.0
# Each Collector listens on its own pod's IP (kwok hands out loopback addresses), as a
# fleet config would on a real node; its own metrics are off (no shared :8888).
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
# (world/collector.py), and the gate, so the rollout, waits on APPLIED: the rendered 30 s
# would make each of the three steps take that long. 10 s is what the other supervisor
# proofs use on this machine.
SUPERVISOR_CONFIG = {"agent": {"config_apply_timeout": "10s"}}


@pytest.fixture
def operator(crds: None, cluster: LocalCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator, told that its template-mode agents reach it on its own port (as in
    test_operator_template.py)."""
    port = free_port()
    endpoint = f"--agent-endpoint=ws://127.0.0.1:{port}/v1/opamp"
    with start_operator(cluster.kubeconfig, tmp_path / "operator", endpoint, port=port) as op:
        yield op


def _connected(operator: OperatorProcess, namespace: str) -> list[dict[str, Any]]:
    agents: list[dict[str, Any]] = operator.get(f"/api/v1/fleets/{namespace}/{FLEET}/agents")[
        "agents"
    ]
    return [a for a in agents if a["connected"]]


def _fleet_on(
    operator: OperatorProcess,
    api_client: Any,
    namespace: str,
    version: str,
    containers: dict[str, Container],
) -> list[dict[str, Any]]:
    """Wait until exactly the agents of `containers` are connected, each holding its pod
    with the fleet's config applied and reporting `version`, and the fleet's status counts
    them all on it; returns the agents."""
    pods = {f"{namespace}/{c.pod}": c for c in containers.values()}

    def agents() -> list[dict[str, Any]] | None:
        found = _connected(operator, namespace)
        ok = sorted(a["pod"] or "" for a in found) == sorted(pods) and all(
            a["version"] == version and a["remoteConfigStatus"] == "APPLIED" for a in found
        )
        return found if ok else None

    found = eventually(f"the fleet's agents on {version} in {sorted(pods)}", agents, WAIT)
    for agent in found:
        container = pods[agent["pod"]]
        assert agent["instanceUid"].replace("-", "").lower() == (
            (container.instance_uid or "").replace("-", "").lower()
        )
        # The Collector's own description, relayed by the supervisor: same Collector.
        assert agent["attributes"]["service.name"] == "otelcol-opamp"
        assert agent["attributes"]["service.version"] == version
    eventually(
        f"the fleet's status: {len(pods)} agents, all on {version}",
        lambda: (
            (s := fleet_status(api_client, namespace, FLEET)).get("versions")
            == [{"version": version, "count": len(pods)}]
            and s.get("agentsMapped") == len(pods)
        ),
        WAIT,
    )
    return found


def test_an_image_change_rolls_the_collectors_from_a_to_b(
    operator: OperatorProcess, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    marks: list[tuple[str, float]] = []

    def mark(what: str) -> None:
        marks.append((what, time.monotonic() - t0))
        print(f"[{marks[-1][1]:6.1f}s] {what}")

    # Two builds of one Collector, each reporting the version it is pinned to.
    version_a = binaries.collector_version(COLLECTOR_A)
    version_b = binaries.collector_version(COLLECTOR_B)
    assert version_a != version_b
    assert binaries.reported_collector_version(COLLECTOR_A) == version_a
    assert binaries.reported_collector_version(COLLECTOR_B) == version_b

    apps: Any = k8s.AppsV1Api(api_client)

    def rolled_out() -> Any:
        d = apps.read_namespaced_deployment(workload_name(FLEET), namespace)
        counts = (d.status.replicas, d.status.updated_replicas, d.status.available_replicas)
        return d if counts == (REPLICAS,) * 3 else None

    template = {"image": IMAGE_A, "replicas": REPLICAS, "supervisorConfig": SUPERVISOR_CONFIG}
    create_fleet(api_client, namespace, FLEET, LABELS, CONFIG, template=template)
    with PodRunner(api_client, namespace, SELECTOR, IMAGES, tmp_path / "pods") as runner:
        on_a = runner.wait(
            f"{REPLICAS} pods running Collector A",
            lambda c: len(runner.running(COLLECTOR_A)) == REPLICAS and len(c) == REPLICAS,
            WAIT,
        )
        mark("both pods run Collector A")
        _fleet_on(operator, api_client, namespace, version_a, on_a)
        mark(f"the fleet: {REPLICAS} agents on {version_a}")
        deployment = eventually("the Deployment available, every pod Ready", rolled_out, WAIT)
        strategy = deployment.spec.strategy.rolling_update
        assert (deployment.spec.strategy.type, strategy.max_surge, strategy.max_unavailable) == (
            "RollingUpdate",
            "25%",
            "25%",
        )  # for 2 replicas: one pod more at a time, none less

        patch_fleet_spec(api_client, namespace, FLEET, {"template": {"image": IMAGE_B}})
        mark(f"spec.template.image -> {IMAGE_B}")
        on_b = runner.wait(
            f"{REPLICAS} pods running Collector B, none A",
            lambda c: len(runner.running(COLLECTOR_B)) == REPLICAS and len(c) == REPLICAS,
            WAIT,
        )
        mark("both pods run Collector B, A's stopped")
        _fleet_on(operator, api_client, namespace, version_b, on_b)
        mark(f"the fleet: {REPLICAS} agents on {version_b}, none on {version_a}")
        rolled = eventually("the Deployment rolled out", rolled_out, WAIT)
        assert rolled.spec.template.spec.containers[0].image == IMAGE_B

        # An image no node can run: its pod's container never starts, so its agent-ready
        # gate never turns True, and the rollout stalls with B's pods kept.
        patch_fleet_spec(api_client, namespace, FLEET, {"template": {"image": IMAGE_MISSING}})
        mark(f"spec.template.image -> {IMAGE_MISSING}")
        stalled = runner.wait(
            "a pod of the missing image, its container not started",
            lambda c: any(x.state == State.IMAGE_NOT_FOUND for x in c.values()),
            WAIT,
        )
        (missing,) = (c for c in stalled.values() if c.state == State.IMAGE_NOT_FOUND)
        assert missing.binary is None
        assert missing.pid is None

        def counts() -> tuple[int | None, ...]:
            d = apps.read_namespaced_deployment(workload_name(FLEET), namespace)
            return (d.status.replicas, d.status.updated_replicas, d.status.available_replicas)

        stuck = (REPLICAS + 1, 1, REPLICAS)  # one pod more, of the new image, not available
        eventually(f"the Deployment at {stuck}", lambda: counts() == stuck, WAIT)
        # A hold: nothing is to happen meanwhile (maxUnavailable 0 keeps B's pods while
        # the new one is not Ready).
        time.sleep(3)
        assert counts() == stuck
        assert set(runner.running(COLLECTOR_B)) == set(on_b)
        assert set(runner.containers()) == {*on_b, missing.pod}
        _fleet_on(operator, api_client, namespace, version_b, on_b)
        mark("the rollout to the missing image stalled, B kept")
        runner.check()

    # The runner closed: every container killed, nothing went wrong meanwhile.
    history = runner.containers(include_stopped=True)
    print("\n--- pod runner timeline\n" + runner.timeline())
    # Five pods in all: A's two, killed with their pods (by their stop signal), B's two
    # and the one of the missing image.
    by_image: dict[str, list[Container]] = {IMAGE_A: [], IMAGE_B: [], IMAGE_MISSING: []}
    for container in history.values():
        by_image[container.image].append(container)
    assert sorted(c.pod for c in by_image[IMAGE_A]) == sorted(on_a)
    assert all(c.stopped_by == "SIGINT" for c in by_image[IMAGE_A])
    assert sorted(c.pod for c in by_image[IMAGE_B]) == sorted(on_b)
    assert not set(on_a) & set(on_b)
    # The controller paced the rollout on readiness (maxUnavailable 0): the n-th pod of A
    # was deleted only once n pods of B were Ready, so once n Collectors B had connected.
    a_going = sorted(c.going or 0.0 for c in by_image[IMAGE_A])
    b_started = sorted(c.started or 0.0 for c in by_image[IMAGE_B])
    assert all(b < a for b, a in zip(b_started, a_going, strict=True)), (a_going, b_started)
    assert [c.pod for c in by_image[IMAGE_MISSING]] == [missing.pod]
    for container in history.values():
        assert container.state == (
            State.IMAGE_NOT_FOUND if container.image == IMAGE_MISSING else State.STOPPED
        )
        assert container.error is None
    print(f"\ntotal {time.monotonic() - t0:.1f}s")
