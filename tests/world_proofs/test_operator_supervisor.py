"""`opamp-operator run` on the local cluster with the real Collector under the real
opampsupervisor as the one member of a CollectorFleet: the supervisor claims a kwok-run
pod's identity, gets the fleet's config, runs it, and the operator sees what it runs —
including a local change that makes it drift, and a new fleet config it then applies."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opamp_operator.api.models import AGENT_READY_CONDITION
from world.cluster import LocalCluster
from world.collector import (
    OPAMP_EXTENSION_CONFIG,
    OWN_TELEMETRY_CONFIG,
    REMOTE_CONFIG,
    Agent,
    start_supervised_collector,
    supervisor_instance_uid,
)
from world.fleets import (
    child_processes,
    condition,
    create_deployment,
    create_fleet,
    create_rollout,
    fleet_status,
    pod_condition,
    rollout_status,
    running_pods,
    set_fleet_config,
    single_file_hash,
)
from world.operator import OperatorProcess, start_operator
from world.processes import eventually, free_port

pytestmark = pytest.mark.world

FLEET = "collectors"
LABELS = {"app": "supervised-collector"}
SUPERVISOR_WAIT = 120.0  # the supervisor restarts the Collector for every config; 2 shared cores


@pytest.fixture
def operator(crds: None, cluster: LocalCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with start_operator(cluster.kubeconfig, tmp_path / "operator") as op:
        yield op


def fleet_config(grpc_port: int, health_port: int, verbosity: str, batch_timeout: str) -> str:
    """What users write: a traces pipeline, a health check, the Collector's own metrics off.
    Levels are written as users write them; the Collector reports `level: none` back as
    `None`, and `verbosity: basic` not at all (Basic is the zero level, omitted)."""
    return f"""\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc_port}
processors:
  batch:
    timeout: {batch_timeout}
exporters:
  debug:
    verbosity: {verbosity}
extensions:
  health_check:
    endpoint: 127.0.0.1:{health_port}
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [debug]
  telemetry:
    metrics:
      level: none
"""


def _answers(port: int) -> bool:
    """Whether a health check answers 200 on this loopback port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _agent(operator: OperatorProcess, namespace: str, uid: str) -> dict[str, Any] | None:
    """The read API's detail of one agent of the fleet; None while the fleet lacks it."""
    try:
        detail: dict[str, Any] = operator.get(f"/api/v1/fleets/{namespace}/{FLEET}/agents/{uid}")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise
    return detail


def _runs(
    operator: OperatorProcess, namespace: str, uid: str, config_hash: str, health_port: int
) -> dict[str, Any] | None:
    """The agent's detail once it reports APPLIED for `config_hash` and an effective config
    from a Collector that has the health check on `health_port` (the fleet's own value)."""
    detail = _agent(operator, namespace, uid)
    if (
        detail is not None
        and detail["remoteConfigStatus"] == "APPLIED"
        and detail["remoteConfigHash"] == config_hash
        and f"127.0.0.1:{health_port}" in (detail.get("effectiveConfig") or "")
    ):
        return detail
    return None


def _collector_pid(supervisor: Agent) -> int | None:
    """The pid of the otelcol-opamp the supervisor runs, None while it runs none."""
    children = child_processes(supervisor.record.pid)
    return next((pid for pid, cmd in children.items() if "otelcol-opamp" in cmd), None)


def test_supervised_collector_is_a_fleet_member_that_applies_drifts_and_follows(
    operator: OperatorProcess, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    create_deployment(
        api_client, namespace, "collector", LABELS, readiness_gates=(AGENT_READY_CONDITION,)
    )
    (pod,) = eventually(
        "1 Running pod",
        lambda: p if len(p := running_pods(api_client, namespace, LABELS)) else None,
    )
    pod_key = f"{namespace}/{pod.metadata.name}"
    health_v1, health_local, health_v2 = free_port(), free_port(), free_port()
    grpc_port = free_port()
    config_v1 = fleet_config(grpc_port, health_v1, "basic", "2s")
    config_v2 = fleet_config(grpc_port, health_v2, "detailed", "500ms")
    hash_v1, hash_v2 = single_file_hash(config_v1), single_file_hash(config_v2)
    create_fleet(api_client, namespace, FLEET, LABELS, config_v1)

    workdir = tmp_path / "supervisor"
    # The default merge order, spelled out: the fleet's config last.
    remote_last: list[str | Path] = [OWN_TELEMETRY_CONFIG, OPAMP_EXTENSION_CONFIG, REMOTE_CONFIG]

    def start(config_files: list[str | Path]) -> Agent:
        """The supervisor on `workdir` (same storage, so the same agent) claiming the pod."""
        return start_supervised_collector(
            operator.ws_url,
            workdir,
            identifying_attributes={"k8s.pod.uid": pod.metadata.uid},
            attributes={"k8s.namespace.name": namespace, "k8s.pod.name": pod.metadata.name},
            config_files=config_files,
        )

    supervisor = start(remote_last)
    try:
        # 1. Mapped to the pod by its uid, given the fleet's config, running it, in sync.
        uid = eventually("the supervisor's instance uid", lambda: supervisor_instance_uid(workdir))
        detail = eventually(
            "the supervisor to apply the fleet's config and report the Collector running it",
            lambda: _runs(operator, namespace, uid, hash_v1, health_v1),
            SUPERVISOR_WAIT,
        )
        supervisor.health_url = f"http://127.0.0.1:{health_v1}/"
        supervisor.wait_healthy(timeout=SUPERVISOR_WAIT)  # the port only the fleet's config names
        assert detail["pod"] == pod_key
        assert detail["rule"] == "k8s.pod.uid"
        assert detail["attributes"]["k8s.pod.uid"] == pod.metadata.uid
        assert detail["attributes"]["service.name"] == "otelcol-opamp"  # the real Collector's
        assert detail["config"] == "Applied"
        assert detail["drift"]["state"] == "InSync", detail["drift"]
        assert detail["drift"]["paths"] == []
        status = eventually(
            "status: 1 pod, its agent, config applied, nothing drifted, Ready",
            lambda: (
                s
                if (s := fleet_status(api_client, namespace, FLEET)).get("configApplied") == 1
                and s.get("drifted") == 0
                and condition(s, "Ready") == "True"
                else None
            ),
            SUPERVISOR_WAIT,
        )
        assert status["podsSelected"] == 1
        assert status["agentsMapped"] == 1
        assert status["podsWithoutAgent"] == 0
        assert status["agentsWithoutPod"] == 0
        assert status["desiredHash"] == hash_v1
        assert operator.get(f"/api/v1/fleets/{namespace}/{FLEET}")["desiredHash"] == hash_v1
        eventually(
            "the pod's agent-ready gate True",
            lambda: (
                pod_condition(api_client, namespace, pod.metadata.name, AGENT_READY_CONDITION)
                == "True"
            ),
        )

        # 2. A local file merged after the fleet's config moves the health check: the
        # supervisor still says it applied the fleet's config, the Collector runs another.
        supervisor.stop()
        override = workdir / "override.yaml"
        override.write_text(
            yaml.safe_dump(
                {"extensions": {"health_check": {"endpoint": f"127.0.0.1:{health_local}"}}}
            )
        )
        supervisor = start([*remote_last, override])
        eventually(
            "the Collector to serve its health check where the local file says",
            lambda: _answers(health_local),
            SUPERVISOR_WAIT,
        )
        assert not _answers(health_v1)
        assert supervisor_instance_uid(workdir) == uid
        status = eventually(
            "a drifted agent in status",
            lambda: (
                s if (s := fleet_status(api_client, namespace, FLEET)).get("drifted") == 1 else None
            ),
            SUPERVISOR_WAIT,
        )
        assert status["configApplied"] == 1  # it did apply the fleet's config
        (worst,) = (w for w in status["worstAgents"] if w["instanceUid"] == uid)
        assert worst["reason"] == "Drifted"
        assert worst["pod"] == pod_key
        drifted = operator.get(f"/api/v1/fleets/{namespace}/{FLEET}/agents?state=drifted")
        assert [(a["instanceUid"], a["pod"]) for a in drifted["agents"]] == [(uid, pod_key)]
        found = _agent(operator, namespace, uid)
        assert found is not None
        detail = found
        assert (detail["remoteConfigStatus"], detail["remoteConfigHash"]) == ("APPLIED", hash_v1)
        assert detail["drift"]["state"] == "Drifted"
        assert detail["drift"]["paths"] == ["extensions.health_check.endpoint"]
        diff_lines = detail["diff"].splitlines()
        assert f"-    endpoint: 127.0.0.1:{health_v1}" in diff_lines, detail["diff"]
        assert f"+    endpoint: 127.0.0.1:{health_local}" in diff_lines, detail["diff"]

        # Without the local file, the same agent runs the fleet's config again.
        supervisor.stop()
        supervisor = start(remote_last)
        supervisor.health_url = f"http://127.0.0.1:{health_v1}/"
        supervisor.wait_healthy(timeout=SUPERVISOR_WAIT)
        assert not _answers(health_local)
        detail = eventually(
            "the supervisor to report the Collector running the fleet's config again",
            lambda: _runs(operator, namespace, uid, hash_v1, health_v1),
            SUPERVISOR_WAIT,
        )
        assert detail["drift"]["state"] == "InSync", detail["drift"]
        eventually(
            "the drift to clear in status",
            lambda: (
                s
                if (s := fleet_status(api_client, namespace, FLEET)).get("drifted") == 0
                and s.get("configApplied") == 1
                else None
            ),
            SUPERVISOR_WAIT,
        )

        # 3. A new fleet config reaches the running supervisor, which restarts the
        # Collector with it and reports it applied.
        collector_before = eventually("the Collector process", lambda: _collector_pid(supervisor))
        set_fleet_config(api_client, namespace, FLEET, config_v2)
        detail = eventually(
            "the supervisor to apply the new config and report the Collector running it",
            lambda: _runs(operator, namespace, uid, hash_v2, health_v2),
            SUPERVISOR_WAIT,
        )
        supervisor.health_url = f"http://127.0.0.1:{health_v2}/"
        supervisor.wait_healthy(timeout=SUPERVISOR_WAIT)
        assert not _answers(health_v1)
        assert supervisor.record.alive()  # the same supervisor process took the new config
        collector_after = _collector_pid(supervisor)
        assert collector_after is not None
        assert collector_after != collector_before
        assert detail["drift"]["state"] == "InSync", detail["drift"]
        status = eventually(
            "status: generation 2 applied, nothing drifted, Ready",
            lambda: (
                s
                if (s := fleet_status(api_client, namespace, FLEET)).get("observedGeneration") == 2
                and s.get("desiredHash") == hash_v2
                and s.get("configApplied") == 1
                and s.get("drifted") == 0
                and condition(s, "Ready") == "True"
                else None
            ),
            SUPERVISOR_WAIT,
        )
        assert status["agentsMapped"] == 1
    finally:
        supervisor.stop()


def test_supervisor_failing_a_config_triggers_the_rollback_to_the_stable_one(
    operator: OperatorProcess, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    """ConfigRollout with the real supervisor: a config the Collector refuses to start
    with (valid YAML, every reference defined; a field the debug exporter does not have)
    is reported FAILED by the supervisor, the rollout rolls back, and the Collector ends
    up running the stable config, as its own effective config says."""
    create_deployment(api_client, namespace, "collector", LABELS)
    (pod,) = eventually(
        "1 Running pod",
        lambda: p if len(p := running_pods(api_client, namespace, LABELS)) else None,
    )
    health_v1, health_bad, grpc_port = free_port(), free_port(), free_port()
    config_v1 = fleet_config(grpc_port, health_v1, "basic", "2s")
    broken = fleet_config(grpc_port, health_bad, "basic", "2s").replace(
        "    verbosity: basic\n", "    verbosity: basic\n    no_such_setting: true\n"
    )
    hash_v1, hash_bad = single_file_hash(config_v1), single_file_hash(broken)
    create_fleet(api_client, namespace, FLEET, LABELS, config_v1)
    workdir = tmp_path / "supervisor"
    supervisor = start_supervised_collector(
        operator.ws_url,
        workdir,
        identifying_attributes={"k8s.pod.uid": pod.metadata.uid},
        config_files=[OWN_TELEMETRY_CONFIG, OPAMP_EXTENSION_CONFIG, REMOTE_CONFIG],
    )
    try:
        uid = eventually("the supervisor's instance uid", lambda: supervisor_instance_uid(workdir))
        eventually(
            "the Collector running the first config",
            lambda: _runs(operator, namespace, uid, hash_v1, health_v1),
            SUPERVISOR_WAIT,
        )
        create_rollout(api_client, namespace, FLEET, FLEET, gates={"applyTimeoutSeconds": 90})
        eventually(
            "the rollout to take the fleet's config as stable",
            lambda: rollout_status(api_client, namespace, FLEET).get("phase") == "Succeeded",
        )

        set_fleet_config(api_client, namespace, FLEET, broken)
        status = eventually(
            "the rollout rolled back",
            lambda: (
                s
                if (s := rollout_status(api_client, namespace, FLEET)).get("phase")
                in ("RolledBack", "Failed")
                else None
            ),
            SUPERVISOR_WAIT,
        )
        assert status["phase"] == "RolledBack"
        assert status["desiredHash"] == hash_bad
        assert status["stableHash"] == hash_v1
        (failing,) = status["failingAgents"]
        assert failing["instanceUid"] == uid
        assert failing["reason"] == "ConfigFailed"
        assert failing["message"]  # the supervisor's own words

        detail = eventually(
            "the Collector running the stable config again, by its effective config",
            lambda: _runs(operator, namespace, uid, hash_v1, health_v1),
            SUPERVISOR_WAIT,
        )
        assert detail["revision"] == "stable"
        assert "no_such_setting" not in detail["effectiveConfig"]
        supervisor.health_url = f"http://127.0.0.1:{health_v1}/"
        supervisor.wait_healthy(timeout=SUPERVISOR_WAIT)
        assert not _answers(health_bad)
        f_status = eventually(
            "the fleet Stalled by the rollback, nothing drifted",
            lambda: (
                s
                if condition(s := fleet_status(api_client, namespace, FLEET), "Stalled") == "True"
                and s.get("drifted") == 0
                else None
            ),
        )
        assert f_status["stableHash"] == hash_v1
        stalled = next(c for c in f_status["conditions"] if c["type"] == "Stalled")
        assert stalled["reason"] == "RolloutRolledBack"
    finally:
        supervisor.stop()
