"""End to end, as a user meets the project: the chart installed, a template-mode fleet of
real Collectors (opampsupervisor running the Collector, one per pod), a staged rollout
promoted with `kubectl opamp`, a config the Collectors refuse rolled back, an image
upgrade to a second build of the Collector staged through a canary Deployment, and the
fleet deleted with its workload. The same module runs against the local cluster in CI and
against a kind cluster from scripts/kind-e2e (conftest.py says how each target runs).

The tests build on each other in file order — one fleet, one rollout — as a user's
session does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.api.models import AGENT_READY_CONDITION, GROUP, VERSION, FleetTemplate
from opamp_operator.fleet.versions import revision_hash
from opamp_operator.k8s.reads import get_or_none
from opamp_operator.k8s.workload import canary_name, config_map_name, workload_name
from opamp_operator.kubectl_plugin.format import short_hash
from world import binaries
from world.chart import CRD_NAMES
from world.e2e import (
    AGENT_EXECUTABLE,
    COLLECTOR,
    COLLECTOR_NEXT,
    HEALTH_PORT,
    RELEASE,
    RELEASE_NAMESPACE,
    WAIT,
    Target,
)
from world.fleets import (
    PLURAL,
    condition,
    create_fleet,
    create_rollout,
    fleet_status,
    patch_fleet_spec,
    rollout_status,
    set_fleet_config,
    single_file_hash,
)
from world.processes import eventually

pytestmark = pytest.mark.e2e

FLEET = "collectors"
REPLICAS = 2
# opampsupervisor v0.149.0 reports a config APPLIED only once config_apply_timeout is over
# (and the Collector healthy by then), so every config change here takes that long. The
# operator renders 30 s (room for a Collector under a CPU limit);
# the fleet's supervisorConfig, merged over it as a user's would be, asks for 10 s: what
# the world proofs give a Collector on this loaded 2-core machine (world/collector.py).
# Nothing here measures it: a config the Collectors refuse makes them exit, which the
# supervisor reports FAILED at once.
SUPERVISOR_CONFIG = {"agent": {"config_apply_timeout": "10s"}}


def collector_config(verbosity: str, extra: str = "") -> str:
    """A traces pipeline listening on the pod's own address (downward API), so Collectors
    side by side on one machine — the local target — do not collide."""
    return f"""\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: ${{env:K8S_POD_IP}}:4317
exporters:
  debug:
    verbosity: {verbosity}
{extra}extensions:
  health_check:
    endpoint: ${{env:K8S_POD_IP}}:{HEALTH_PORT}
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
  telemetry:
    metrics:
      level: none
"""


CONFIG_1 = collector_config("basic")
CONFIG_2 = collector_config("detailed")
# Valid YAML, every reference defined, but a setting the debug exporter does not have: the
# operator accepts it, the Collector refuses to start with it.
REFUSED = collector_config("detailed", "    no_such_setting: true\n")
H1, H2, H_REFUSED = (single_file_hash(c) for c in (CONFIG_1, CONFIG_2, REFUSED))


@pytest.fixture(scope="module")
def namespace(target: Target) -> Iterator[str]:
    core: Any = k8s.CoreV1Api(target.api_client)
    ns: str = core.create_namespace(
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(generate_name="e2e-"))
    ).metadata.name
    try:
        yield ns
    finally:
        core.delete_namespace(ns)


def _on(target: Target, namespace: str, config_hash: str) -> set[str]:
    """Pods whose agent has applied the config with `config_hash`."""
    return {
        a["pod"]
        for a in target.fleet_agents(namespace, FLEET)
        if a["remoteConfigHash"] == config_hash and a["remoteConfigStatus"] == "APPLIED"
    }


def _wait_on(target: Target, namespace: str, config_hash: str, count: int, what: str) -> set[str]:
    return eventually(
        what,
        lambda: pods if len(pods := _on(target, namespace, config_hash)) == count else None,
        timeout=WAIT,
    )


def _template(target: Target, image: str | None = None) -> dict[str, Any]:
    return {
        "image": image or target.collector_image,
        "agentExecutable": AGENT_EXECUTABLE,
        "replicas": REPLICAS,
        "supervisorConfig": SUPERVISOR_CONFIG,
    }


def _rev(target: Target, config_hash: str, image: str | None = None) -> str:
    """The fleet's revision of the config `config_hash` (status desiredHash, stableHash):
    in template mode a revision is its config and its pod template."""
    template = FleetTemplate.model_validate(_template(target, image))
    return revision_hash(config_hash, None, template.digest())


def _wait_phase(target: Target, namespace: str, phase: str, **fields: Any) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        s = rollout_status(target.api_client, namespace, FLEET)
        ok = s.get("phase") == phase and all(s.get(k) == v for k, v in fields.items())
        return s if ok else None

    return eventually(f"rollout {phase} {fields}", reached, timeout=WAIT)


def test_the_chart_is_installed_and_the_operator_serves(target: Target) -> None:
    ext: Any = k8s.ApiextensionsV1Api(target.api_client)
    for name in CRD_NAMES:
        crd = ext.read_custom_resource_definition(name)
        assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
    apps: Any = k8s.AppsV1Api(target.api_client)
    deployment = apps.read_namespaced_deployment(RELEASE, RELEASE_NAMESPACE)
    assert deployment.status.ready_replicas == 1
    assert target.operator_get("/readyz") == "ok"
    assert "opamp_" in target.operator_get("/metrics")


def test_a_template_fleet_of_real_collectors_applies_its_config(
    target: Target, namespace: str
) -> None:
    create_fleet(
        target.api_client,
        namespace,
        FLEET,
        {"app": FLEET},
        CONFIG_1,
        template=_template(target),
    )
    pods = target.run_pods(namespace, FLEET, REPLICAS)
    names = {f"{namespace}/{p.metadata.name}" for p in pods}
    assert _wait_on(target, namespace, H1, REPLICAS, "every Collector on the config") == names

    agents = target.fleet_agents(namespace, FLEET)
    by_pod = {p.metadata.uid: p for p in pods}
    for agent in agents:
        pod = by_pod[agent["attributes"]["k8s.pod.uid"]]
        assert agent["rule"] == "k8s.pod.uid"
        assert agent["attributes"]["k8s.node.name"] == pod.spec.node_name
        assert agent["healthy"] is True
        assert agent["drift"]["state"] == "InSync", agent["drift"]
    for container in target.collectors():
        # Locally the Collector's health check answers on the pod's IP: the fleet's config
        # runs, with the pod's environment.
        container.wait_healthy(timeout=WAIT)

    status = eventually(
        "the fleet Ready, every agent healthy and in sync",
        lambda: (
            s
            if condition(s := fleet_status(target.api_client, namespace, FLEET), "Ready") == "True"
            else None
        ),
        timeout=WAIT,
    )
    counts = ("podsSelected", "agentsMapped", "healthy", "configApplied", "drifted")
    assert [status[k] for k in counts] == [REPLICAS, REPLICAS, REPLICAS, REPLICAS, 0]
    assert status["podsWithoutAgent"] == status["agentsWithoutPod"] == 0
    assert status["desiredHash"] == _rev(target, H1)
    core: Any = k8s.CoreV1Api(target.api_client)
    eventually(
        "the agent-ready gate True on every pod",
        lambda: all(
            _gate(core.read_namespaced_pod(p.metadata.name, namespace)) == "True" for p in pods
        ),
        timeout=WAIT,
    )
    listed = target.plugin("fleets", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    assert FLEET in listed.stdout


def _gate(pod: Any) -> str | None:
    return next(
        (c.status for c in pod.status.conditions or [] if c.type == AGENT_READY_CONDITION), None
    )


def test_a_staged_rollout_holds_for_promote_then_reaches_everyone(
    target: Target, namespace: str
) -> None:
    create_rollout(
        target.api_client,
        namespace,
        FLEET,
        FLEET,
        steps=[{"agents": 1, "pause": {"untilPromoted": True}}, {"percent": 100}],
        gates={"applyTimeoutSeconds": 120},
    )
    _wait_phase(target, namespace, "Succeeded", stableHash=_rev(target, H1))

    set_fleet_config(target.api_client, namespace, FLEET, CONFIG_2)
    status = _wait_phase(target, namespace, "Paused", currentStep=0, desiredHash=_rev(target, H2))
    assert status["stableHash"] == _rev(target, H1)
    canary = _wait_on(target, namespace, H2, 1, "the canary on the new config")
    assert len(_on(target, namespace, H1) - canary) == REPLICAS - 1

    shown = target.plugin("rollout", "status", FLEET, "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert "Paused" in shown.stdout
    promoted = target.plugin("rollout", "promote", FLEET, "-n", namespace)
    assert promoted.returncode == 0, promoted.stderr

    status = _wait_phase(target, namespace, "Succeeded", stableHash=_rev(target, H2))
    assert [s["offered"] for s in status["steps"]] == [1, REPLICAS]
    _wait_on(target, namespace, H2, REPLICAS, "every Collector on the new config")
    history = target.plugin("rollout", "history", FLEET, "-n", namespace)
    assert history.returncode == 0, history.stderr
    rows = [line.split() for line in history.stdout.splitlines()[1:]]
    assert {row[2]: row[-1] for row in rows} == {
        short_hash(_rev(target, H1)): "-",
        short_hash(_rev(target, H2)): "DESIRED,STABLE",
    }


def test_a_config_the_collectors_refuse_is_rolled_back(target: Target, namespace: str) -> None:
    set_fleet_config(target.api_client, namespace, FLEET, REFUSED)
    status = _wait_phase(target, namespace, "RolledBack", desiredHash=_rev(target, H_REFUSED))
    assert status["stableHash"] == _rev(target, H2)
    (failing,) = status["failingAgents"]
    assert failing["reason"] == "ConfigFailed"
    assert failing["message"]  # the supervisor's own words

    _wait_on(target, namespace, H2, REPLICAS, "every Collector back on the stable config")
    for agent in target.fleet_agents(namespace, FLEET):
        assert agent["revision"] == "stable"
    f_status = eventually(
        "the fleet Stalled by the rollback",
        lambda: (
            s
            if condition(s := fleet_status(target.api_client, namespace, FLEET), "Stalled")
            == "True"
            else None
        ),
        timeout=WAIT,
    )
    stalled = next(c for c in f_status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "RolloutRolledBack"
    for container in target.collectors():
        container.wait_healthy(timeout=WAIT)


def test_an_image_upgrade_is_staged_by_the_rollout_and_reaches_every_collector(
    target: Target, namespace: str
) -> None:
    """spec.template.image to the second build of the Collector, spec.version.expected to
    its version, and the config back to the stable one, in one patch: one revision, rolled
    out with new pods (a canary Deployment beside the stable one), held at one pod until
    promoted with `kubectl opamp`, then every Collector on the new build."""
    version, version_next = (binaries.collector_version(c) for c in (COLLECTOR, COLLECTOR_NEXT))
    patch_fleet_spec(
        target.api_client,
        namespace,
        FLEET,
        {
            "config": {"inline": CONFIG_2},
            "template": {"image": target.collector_image_next},
            "version": {"expected": version_next},
        },
    )
    upgraded = _rev(target, H2, target.collector_image_next)
    status = _wait_phase(target, namespace, "Paused", currentStep=0, desiredHash=upgraded)
    assert status["stableHash"] == _rev(target, H2)

    def versions() -> Counter[str]:
        agents = target.fleet_agents(namespace, FLEET)
        return Counter(a["version"] for a in agents if a["remoteConfigStatus"] == "APPLIED")

    one = Counter({version_next: 1, version: REPLICAS - 1})
    eventually("one Collector on the new build", lambda: versions() == one, timeout=WAIT)
    target.run_pods(namespace, FLEET, REPLICAS)  # the stable Deployment gave a pod up
    images = Counter(p.spec.containers[0].image for p in _pods(target, namespace))
    assert images == Counter({target.collector_image_next: 1, target.collector_image: 1})

    promoted = target.plugin("rollout", "promote", FLEET, "-n", namespace)
    assert promoted.returncode == 0, promoted.stderr
    _wait_phase(target, namespace, "Succeeded", stableHash=upgraded)
    every = Counter({version_next: REPLICAS})
    eventually("every Collector on the new build", lambda: versions() == every, timeout=WAIT)
    apps: Any = k8s.AppsV1Api(target.api_client)
    eventually(
        "the canary Deployment gone, the stable one on the new image",
        lambda: get_or_none(apps.read_namespaced_deployment, canary_name(FLEET), namespace) is None,
        timeout=WAIT,
    )
    pods = target.run_pods(namespace, FLEET, REPLICAS)
    assert {p.spec.containers[0].image for p in pods} == {target.collector_image_next}
    status = fleet_status(target.api_client, namespace, FLEET)
    assert (status["targetVersion"], status["agentsOutdated"]) == (version_next, 0)


def _pods(target: Target, namespace: str) -> list[Any]:
    core: Any = k8s.CoreV1Api(target.api_client)
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={FLEET}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def test_deleting_the_fleet_removes_its_workload(target: Target, namespace: str) -> None:
    co: Any = k8s.CustomObjectsApi(target.api_client)
    co.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, FLEET)
    apps: Any = k8s.AppsV1Api(target.api_client)
    core: Any = k8s.CoreV1Api(target.api_client)

    def gone(read: Any, name: str) -> bool:
        return get_or_none(read, name, namespace) is None

    def read_fleet(name: str, ns: str) -> Any:
        return co.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    eventually(
        "the fleet, its Deployment and ConfigMap gone",
        lambda: (
            gone(read_fleet, FLEET)
            and gone(apps.read_namespaced_deployment, workload_name(FLEET))
            and gone(core.read_namespaced_config_map, config_map_name(FLEET))
        ),
        timeout=WAIT,
    )
