"""`opamp-operator run` on the local cluster: a CollectorFleet over kwok-run pods, with
real opamp-go agents claiming those pods' identities."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.api.models import AGENT_READY_CONDITION, GROUP, VERSION
from world import binaries
from world.cluster import LocalCluster
from world.collector import JsonlProcess, start_go_agent
from world.fleets import (
    CONFIG_V1,
    CONFIG_V2,
    create_fleet,
    patch_fleet_spec,
    release_fleets,
    single_file_hash,
)
from world.gitops import judge
from world.operator import OperatorProcess, start_operator
from world.processes import eventually, free_port

pytestmark = pytest.mark.world

CRD_FILE = binaries.REPO_ROOT / "deploy" / "crds" / f"collectorfleets.{GROUP}.yaml"


@pytest.fixture
def operator(crds: None, cluster: LocalCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with start_operator(cluster.kubeconfig, tmp_path) as op:
        yield op


def _pods(api_client: Any, namespace: str) -> list[Any]:
    core: Any = k8s.CoreV1Api(api_client)
    pods = core.list_namespaced_pod(namespace, label_selector="app=collector").items
    return [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]


def _create_fleet(
    api_client: Any, namespace: str, labels: dict[str, str], config: str, **spec: Any
) -> None:
    create_fleet(api_client, namespace, "collectors", labels, config, **spec)


def _gates(
    api_client: Any, namespace: str, condition: str = AGENT_READY_CONDITION
) -> dict[str, str]:
    """Pod name → status of the agent-ready condition (absent pods are left out)."""
    out = {}
    for pod in _pods(api_client, namespace):
        for cond in pod.status.conditions or []:
            if cond.type == condition:
                out[pod.metadata.name] = cond.status
    return out


def _all_true(gates: dict[str, str], pods: int) -> bool:
    return len(gates) == pods and set(gates.values()) == {"True"}


def _fleet(api_client: Any, namespace: str) -> dict[str, Any]:
    co: Any = k8s.CustomObjectsApi(api_client)
    fleet: dict[str, Any] = co.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "collectorfleets", "collectors"
    )
    return fleet


def _status(api_client: Any, namespace: str) -> dict[str, Any]:
    return dict(_fleet(api_client, namespace).get("status") or {})


def _ready(status: dict[str, Any]) -> str | None:
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def _deploy(api_client: Any, namespace: str, replicas: int) -> list[Any]:
    """A Deployment of `replicas` kwok pods labelled app=collector, with the agent-ready
    gate; returns its Running pods."""
    apps: Any = k8s.AppsV1Api(api_client)
    labels = {"app": "collector"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "collector"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{"name": "otelcol", "image": "otelcol:0.149.0"}],
                        "readinessGates": [{"conditionType": AGENT_READY_CONDITION}],
                    },
                },
            },
        },
    )
    pods: list[Any] = eventually(
        f"{replicas} Running pods",
        lambda: p if len(p := _pods(api_client, namespace)) == replicas else None,
    )
    return pods


def test_fleet_maps_agents_to_pods_delivers_config_and_reports_status(
    operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    labels = {"app": "collector"}
    pods = _deploy(api_client, namespace, 3)
    co: Any = k8s.CustomObjectsApi(api_client)
    _create_fleet(api_client, namespace, labels, CONFIG_V1)
    # One agent per mapping rule, and one that claims no pod.
    claims = [
        [f"--attr=k8s.pod.uid={pods[0].metadata.uid}"],
        [f"--attr=k8s.namespace.name={namespace}", f"--attr=k8s.pod.name={pods[1].metadata.name}"],
        [f"--non-identifying=host.name={pods[2].metadata.name}"],
        ["--attr=k8s.pod.name=not-a-pod"],
    ]
    agents: list[JsonlProcess] = []
    try:
        for claim in claims:
            agents.append(start_go_agent(operator.ws_url, "--heartbeat=1s", *claim))
        for agent in agents[:3]:
            got = agent.wait_for("message", timeout=60, where=lambda e: "remote_config" in e)
            assert got["remote_config"]["files"][""]["body"] == CONFIG_V1
        status = eventually(
            "status: 3 pods, 3 agents mapped, all applied, Ready",
            lambda: (
                s
                if (s := _status(api_client, namespace)).get("configApplied") == 3
                and _ready(s) == "True"
                else None
            ),
        )
        gates = eventually(
            "the agent-ready gate True on every pod",
            lambda: g if _all_true(g := _gates(api_client, namespace), 3) else None,
        )
        assert sorted(gates) == sorted(p.metadata.name for p in pods)
        fleet_api = operator.get(f"/api/v1/fleets/{namespace}/collectors")
        assert fleet_api["configApplied"] == 3
        assert fleet_api["desiredRevision"] == status["desiredRevision"]
        rules = {
            a["rule"]
            for a in operator.get(f"/api/v1/fleets/{namespace}/collectors/agents")["agents"]
        }
        assert rules == {"k8s.pod.uid", "namespace+name", "host.name"}
        assert status["podsSelected"] == 3
        assert status["agentsMapped"] == 3
        assert status["podsWithoutAgent"] == 0
        assert status["observedGeneration"] == 1
        assert status["desiredRevision"].startswith("collectors-")
        # The orphan claims no pod of this fleet: it gets no config.
        assert not any("remote_config" in e for e in agents[3].seen)

        revisions: Any = k8s.AppsV1Api(api_client)
        listed = revisions.list_namespaced_controller_revision(
            namespace, label_selector=f"{GROUP}/fleet=collectors"
        ).items
        assert [r.data["config"] for r in listed] == [CONFIG_V1]
        assert listed[0].metadata.owner_references[0].kind == "CollectorFleet"

        co.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "collectorfleets",
            "collectors",
            {"spec": {"config": {"inline": CONFIG_V2}}},
        )
        for agent in agents[:3]:
            agent.wait_for(
                "message",
                timeout=60,
                where=lambda e: (
                    e.get("remote_config", {}).get("files", {}).get("", {}).get("body") == CONFIG_V2
                ),
            )
        status = eventually(
            "status: generation 2 applied by all",
            lambda: (
                s
                if (s := _status(api_client, namespace)).get("observedGeneration") == 2
                and s.get("configApplied") == 3
                else None
            ),
        )
        assert status["desiredRevision"] != listed[0].metadata.name
        listed = revisions.list_namespaced_controller_revision(
            namespace, label_selector=f"{GROUP}/fleet=collectors"
        ).items
        assert sorted(r.revision for r in listed) == [1, 2]

        # An agent running something else than it was given is drifted.
        local_edit = CONFIG_V2.replace("detailed", "basic")
        agents[1].send(cmd="effective_config", body=local_edit)
        status = eventually(
            "a drifted agent in status",
            lambda: s if (s := _status(api_client, namespace)).get("drifted") == 1 else None,
        )
        assert any(w["reason"] == "Drifted" for w in status["worstAgents"])
        assert operator.get(f"/api/v1/fleets/{namespace}/collectors")["drifted"] == 1
        drifted = operator.get(f"/api/v1/fleets/{namespace}/collectors/agents?state=drifted")
        assert drifted["count"] == 1
        (entry,) = drifted["agents"]
        assert entry["pod"] == f"{namespace}/{pods[1].metadata.name}"
        assert entry["rule"] == "namespace+name"
        detail = operator.get(
            f"/api/v1/fleets/{namespace}/collectors/agents/{entry['instanceUid']}"
        )
        assert "-    verbosity: detailed" in detail["diff"]
        assert "+    verbosity: basic" in detail["diff"]
        agents[1].send(cmd="effective_config", body=CONFIG_V2)
        eventually(
            "the drift to clear",
            lambda: s if (s := _status(api_client, namespace)).get("drifted") == 0 else None,
        )

        # An agent going unhealthy reaches the fleet's status.
        agents[0].send(cmd="health", healthy=False, last_error="exporter down")
        status = eventually(
            "an unhealthy agent in status",
            lambda: s if (s := _status(api_client, namespace)).get("unhealthy") == 1 else None,
        )
        assert _ready(status) == "False"
        assert any("exporter down" in w["message"] for w in status["worstAgents"])
        gates = eventually(
            "the unhealthy agent's pod gate False",
            lambda: (
                g
                if (g := _gates(api_client, namespace)).get(pods[0].metadata.name) == "False"
                else None
            ),
        )
        assert [gates[p.metadata.name] for p in pods[1:]] == ["True", "True"]
        # The gate decides the pod's Ready (the world computes it as a kubelet does):
        # the unhealthy agent's pod leaves its Service's endpoints, the others stay.
        eventually(
            "Ready False on the unhealthy agent's pod only",
            lambda: (
                _gates(api_client, namespace, "Ready")
                == {p.metadata.name: "False" if p is pods[0] else "True" for p in pods}
            ),
        )
        # Level-triggered: a gate set True by someone else is put back by the operator.
        core: Any = k8s.CoreV1Api(api_client)
        forged = {"type": AGENT_READY_CONDITION, "status": "True", "reason": "Forged"}
        core.patch_namespaced_pod_status(
            pods[0].metadata.name, namespace, {"status": {"conditions": [forged]}}
        )
        eventually(
            "the forged gate False again",
            lambda: _gates(api_client, namespace).get(pods[0].metadata.name) == "False",
            timeout=15,
        )
    finally:
        for agent in agents:
            agent.stop()


def _stalled(status: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Stalled" and c["status"] == "True" for c in status.get("conditions", [])
    )


def test_fleet_with_an_invalid_config_is_stalled_and_offers_nothing(
    operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    broken = CONFIG_V1.replace("exporters: [debug]", "exporters: [otlphttp]")
    _create_fleet(api_client, namespace, {"app": "x"}, broken)
    status = eventually(
        "Stalled with the validation message",
        lambda: s if _stalled(s := _status(api_client, namespace)) else None,
    )
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert "service.pipelines.traces.exporters[0]" in stalled["message"]
    assert '"otlphttp"' in stalled["message"]
    assert status.get("desiredRevision") is None


def _seen(agent: JsonlProcess, event: str, key: str | None = None) -> list[dict[str, Any]]:
    """Every `event` the agent printed so far (with `key` present, when given)."""
    with contextlib.suppress(TimeoutError):
        agent.wait_for("(read everything printed so far)", timeout=0.5)
    return [e for e in agent.seen if e["event"] == event and (key is None or key in e)]


def _events(api_client: Any, namespace: str) -> dict[str, list[str]]:
    """The fleet's Event reasons → messages."""
    core: Any = k8s.CoreV1Api(api_client)
    out: dict[str, list[str]] = {}
    for e in core.list_namespaced_event(namespace).items:
        if e.involved_object.kind == "CollectorFleet":
            out.setdefault(e.reason, []).append(e.message)
    return out


def test_remediate_reoffers_then_restarts_then_gives_up(
    crds: None, cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    pods = _deploy(api_client, namespace, 2)
    local_edit = CONFIG_V2.replace("detailed", "basic")
    with start_operator(cluster.kubeconfig, tmp_path, "--remediation-wait-seconds=2") as op:
        _create_fleet(
            api_client, namespace, {"app": "collector"}, CONFIG_V2, driftPolicy="Remediate"
        )
        # `fixes` takes whatever it is offered; `stuck` ignores offers (so it never
        # reports a config status) and runs a local edit, but accepts restart commands.
        fixes = start_go_agent(
            op.ws_url, "--heartbeat=1s", f"--attr=k8s.pod.uid={pods[0].metadata.uid}"
        )
        stuck = start_go_agent(
            op.ws_url,
            "--heartbeat=1s",
            "--apply=ignore",
            "--accept-restart",
            f"--effective-config={local_edit}",
            f"--attr=k8s.pod.uid={pods[1].metadata.uid}",
        )
        try:
            fixes.wait_for("message", timeout=60, where=lambda e: "remote_config" in e)
            eventually(
                "the stuck agent drifted and given up on, the other in sync",
                lambda: "RemediationFailed" in _events(api_client, namespace),
                timeout=90,
            )
            assert (
                len(_seen(stuck, "message", "remote_config")) == 2
            )  # the first offer and one re-offer, not a loop
            commands = [e["type"] for e in _seen(stuck, "command")]
            assert commands == ["CommandType_Restart"]
            events = _events(api_client, namespace)
            assert pods[1].metadata.name in events["RemediationFailed"][0]
            assert any("restarting 1 agents" in m for m in events["DriftRemediating"])
            assert "Remediated" not in events
            status = _status(api_client, namespace)
            assert status["drifted"] == 1
            assert [w["reason"] for w in status["worstAgents"]] == ["Drifted"]

            # A local edit on an agent that takes offers is undone by the re-offer.
            fixes.send(cmd="effective_config", body=local_edit)
            eventually(
                "the re-offer to undo the local edit",
                lambda: "Remediated" in _events(api_client, namespace),
                timeout=90,
            )
            assert len(_seen(fixes, "message", "remote_config")) == 2
            assert _seen(fixes, "command") == []
            events = _events(api_client, namespace)
            assert pods[0].metadata.name in events["Remediated"][0]
            assert "DriftDetected" in events
            status = eventually(
                "one drifted agent left",
                lambda: s if (s := _status(api_client, namespace)).get("drifted") == 1 else None,
            )
            assert status["configApplied"] == 1
            # After giving up, the stuck agent is left alone: no further offers.
            assert len(_seen(stuck, "message", "remote_config")) == 2
        finally:
            fixes.stop()
            stuck.stop()


def test_a_fleet_token_admits_its_agents_and_refuses_others(
    operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    core: Any = k8s.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "agent-token"}, "stringData": {"token": "s3cret-fleet-token"}},
    )
    pods = _deploy(api_client, namespace, 3)
    _create_fleet(
        api_client,
        namespace,
        {"app": "collector"},
        CONFIG_V1,
        authSecretRef={"name": "agent-token"},
    )
    bearer = "--header=Authorization=Bearer s3cret-fleet-token"
    admitted_ws = start_go_agent(
        operator.ws_url, "--heartbeat=1s", bearer, f"--attr=k8s.pod.uid={pods[0].metadata.uid}"
    )
    admitted_http = start_go_agent(
        operator.http_url, "--heartbeat=1s", bearer, f"--attr=k8s.pod.uid={pods[1].metadata.uid}"
    )
    anonymous = start_go_agent(
        operator.ws_url, "--heartbeat=1s", f"--attr=k8s.pod.uid={pods[2].metadata.uid}"
    )
    wrong = start_go_agent(
        operator.ws_url,
        "--heartbeat=1s",
        "--header=Authorization=Bearer guessed",
        f"--attr=k8s.pod.uid={pods[2].metadata.uid}",
    )
    try:
        for agent in (admitted_ws, admitted_http):
            got = agent.wait_for("message", timeout=60, where=lambda e: "remote_config" in e)
            assert got["remote_config"]["files"][""]["body"] == CONFIG_V1
        # opamp-go reports a refused WebSocket upgrade as "bad handshake"; the 401 is
        # counted by the server.
        failed = wrong.wait_for("connect_failed", timeout=30)
        assert "bad handshake" in failed["error"]
        status = eventually(
            "two agents applied, one unauthenticated",
            lambda: (
                s
                if (s := _status(api_client, namespace)).get("configApplied") == 2
                and s.get("agentsUnauthenticated") == 1
                else None
            ),
        )
        assert status["agentsMapped"] == 2
        assert status["podsWithoutAgent"] == 1
        # The anonymous agent claiming a pod of this fleet is given nothing.
        assert _seen(anonymous, "message", "remote_config") == []
        assert _seen(wrong, "message") == []
        metrics = operator.get("/metrics")
        refused = re.search(r'opamp_errors_total\{reason="unauthorized"\} (\d+)', metrics)
        assert refused is not None
        assert int(refused.group(1)) >= 1

        # A missing Secret stalls nothing already running but says why it is not Ready.
        core.delete_namespaced_secret("agent-token", namespace)
        co: Any = k8s.CustomObjectsApi(api_client)
        co.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "collectorfleets",
            "collectors",
            {"spec": {"authSecretRef": {"name": "no-such-secret"}}},
        )

        def not_ready_message() -> str:
            conditions = _status(api_client, namespace).get("conditions", [])
            return next(
                (
                    c["message"]
                    for c in conditions
                    if c["type"] == "Ready" and c["status"] == "False"
                ),
                "",
            )

        message = eventually(
            "not Ready, naming the missing Secret",
            lambda: m if "no-such-secret" in (m := not_ready_message()) else None,
        )
        assert "not found" in message
    finally:
        for agent in (admitted_ws, admitted_http, anonymous, wrong):
            agent.stop()


def test_the_admission_webhook_refuses_broken_fleets_with_the_reason(
    crds: None, cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    admission: Any = k8s.AdmissionregistrationV1Api(api_client)
    configuration = f"{namespace}.opampoperator.io"
    webhook_port = free_port()
    args = (
        f"--webhook-port={webhook_port}",
        "--webhook-host=127.0.0.1",
        f"--webhook-configuration={configuration}",
    )
    co: Any = k8s.CustomObjectsApi(api_client)
    try:
        with start_operator(cluster.kubeconfig, tmp_path, *args):
            config = eventually(
                "kopf to create the webhook configuration",
                lambda: next(
                    (
                        c
                        for c in admission.list_validating_webhook_configuration().items
                        if c.metadata.name == configuration and c.webhooks
                    ),
                    None,
                ),
            )
            (hook,) = config.webhooks
            assert hook.failure_policy == "Ignore"
            assert hook.client_config.ca_bundle
            assert hook.client_config.url.startswith(f"https://127.0.0.1:{webhook_port}/")

            broken = CONFIG_V1.replace("exporters: [debug]", "exporters: [otlphttp]")
            with pytest.raises(k8s.ApiException) as refused:
                _create_fleet(api_client, namespace, {"app": "x"}, broken)
            assert refused.value.status == 422
            body = json.loads(str(refused.value.body))
            assert "service.pipelines.traces.exporters[0]" in body["message"]
            assert '"otlphttp"' in body["message"]

            with pytest.raises(k8s.ApiException) as not_yaml:
                _create_fleet(api_client, namespace, {"app": "x"}, "receivers: [unclosed\n")
            assert not_yaml.value.status == 422
            assert "YAML" in json.loads(str(not_yaml.value.body))["message"]

            _create_fleet(api_client, namespace, {"app": "x"}, CONFIG_V1)
            with pytest.raises(k8s.ApiException) as update:
                co.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    "collectorfleets",
                    "collectors",
                    {"spec": {"config": {"inline": broken}}},
                )
            assert update.value.status == 422
            assert _fleet(api_client, namespace)["spec"]["config"]["inline"] == CONFIG_V1
            assert _fleet(api_client, namespace)["metadata"]["generation"] == 1
    finally:
        with contextlib.suppress(k8s.ApiException):
            admission.delete_validating_webhook_configuration(configuration)
        with contextlib.suppress(k8s.ApiException):
            admission.delete_mutating_webhook_configuration(configuration)


def test_an_operator_restart_resumes_without_new_revisions_offers_or_annotations(
    crds: None, cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    pods = _deploy(api_client, namespace, 2)
    first = start_operator(cluster.kubeconfig, tmp_path / "first")
    port = first.port
    agents = [
        start_go_agent(first.ws_url, "--heartbeat=1s", f"--attr=k8s.pod.uid={p.metadata.uid}")
        for p in pods
    ]
    try:
        _create_fleet(api_client, namespace, {"app": "collector"}, CONFIG_V1)
        before = eventually(
            "both agents applied, Ready",
            lambda: (
                s
                if (s := _status(api_client, namespace)).get("configApplied") == 2
                and _ready(s) == "True"
                else None
            ),
        )
        first.stop()
        second = start_operator(cluster.kubeconfig, tmp_path / "second", port=port)
        try:

            def applied_on_second() -> bool:
                try:
                    fleet = second.get(f"/api/v1/fleets/{namespace}/collectors")
                except urllib.error.HTTPError as exc:
                    if exc.code != 404:  # 404: not resumed yet
                        raise
                    return False
                return bool(fleet["configApplied"] == 2)

            eventually("both agents back on the new operator", applied_on_second, timeout=120)
            after = eventually(
                "Ready again",
                lambda: s if _ready(s := _status(api_client, namespace)) == "True" else None,
            )
            assert after["desiredRevision"] == before["desiredRevision"]
            assert after["desiredHash"] == before["desiredHash"]
            assert after["observedGeneration"] == 1
            apps: Any = k8s.AppsV1Api(api_client)
            revisions = apps.list_namespaced_controller_revision(
                namespace, label_selector=f"{GROUP}/fleet=collectors"
            ).items
            assert [r.revision for r in revisions] == [1]
            # The agents report the desired hash: nothing is offered again.
            for agent in agents:
                assert len(_seen(agent, "message", "remote_config")) == 1
            assert len(_events(api_client, namespace).get("ConfigRevision", [])) == 1
            # kopf's bookkeeping is in status, never in the metadata GitOps tools own.
            fleet = _fleet(api_client, namespace)
            annotations = fleet["metadata"].get("annotations") or {}
            assert not [a for a in annotations if "kopf" in a]
            assert "kopf" in fleet["status"]
        finally:
            second.stop()
    finally:
        for agent in agents:
            agent.stop()
        first.stop()


def test_an_operator_limited_to_a_namespace_leaves_other_fleets_alone(
    crds: None, cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    core: Any = k8s.CoreV1Api(api_client)
    other = core.create_namespace(
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(generate_name="not-watched-"))
    ).metadata.name
    try:
        with start_operator(cluster.kubeconfig, tmp_path, f"--namespace={namespace}") as op:
            _create_fleet(api_client, namespace, {"app": "collector"}, CONFIG_V1)
            _create_fleet(api_client, other, {"app": "collector"}, CONFIG_V1)
            eventually(
                "the watched fleet reconciled",
                lambda: _status(api_client, namespace).get("desiredRevision"),
            )
            # A hold, on purpose: three status intervals (1 s) in which nothing may
            # write to the other namespace's fleet.
            time.sleep(3)
            # Only what the CRD defaults: no operator wrote to it.
            untouched = _status(api_client, other)
            assert untouched["observedGeneration"] == 0
            assert not {"conditions", "desiredRevision", "kopf"} & untouched.keys()
            assert [
                f"{f['namespace']}/{f['name']}" for f in op.get("/api/v1/fleets")["fleets"]
            ] == [f"{namespace}/collectors"]
            apps: Any = k8s.AppsV1Api(api_client)
            assert apps.list_namespaced_controller_revision(other).items == []
    finally:
        release_fleets(api_client)
        core.delete_namespace(other)


def test_going_back_to_an_older_config_reuses_its_revision(
    operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    """The older config's ControllerRevision moves to the newest number, same bytes; the
    apiserver refuses any update of a revision's data, so this must not be a patch."""
    _create_fleet(api_client, namespace, {"app": "collector"}, CONFIG_V1)
    first = eventually(
        "the first revision",
        lambda: s.get("desiredRevision") if (s := _status(api_client, namespace)) else None,
    )
    co: Any = k8s.CustomObjectsApi(api_client)
    apps: Any = k8s.AppsV1Api(api_client)

    def set_config(text: str) -> None:
        co.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "collectorfleets",
            "collectors",
            {"spec": {"config": {"inline": text}}},
        )

    def revisions() -> dict[str, int]:
        listed = apps.list_namespaced_controller_revision(
            namespace, label_selector=f"{GROUP}/fleet=collectors"
        ).items
        return {r.metadata.name: r.revision for r in listed}

    set_config(CONFIG_V2)
    eventually("a second revision", lambda: len(revisions()) == 2)
    set_config(CONFIG_V1)
    eventually(
        "the first config's revision moved to number 3",
        lambda: revisions().get(first) == 3,
    )
    status = eventually(
        "status back on the first revision",
        lambda: (
            s
            if (s := _status(api_client, namespace)).get("desiredRevision") == first
            and s.get("observedGeneration") == 3
            else None
        ),
    )
    assert sorted(revisions().values()) == [2, 3]
    (data,) = [
        r.data["config"]
        for r in apps.list_namespaced_controller_revision(
            namespace, label_selector=f"{GROUP}/fleet=collectors"
        ).items
        if r.metadata.name == first
    ]
    assert data == CONFIG_V1
    assert status["desiredHash"] == single_file_hash(CONFIG_V1)
    log = Path(operator.record.log).read_text()
    assert "immutable" not in log


def test_a_spec_turning_invalid_stalls_the_fleet_and_keeps_its_agents_config(
    operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    """A selector Kubernetes would refuse (no webhook here to stop it): the fleet is
    Stalled for that generation, as Argo CD and Flux read it, and its agents keep the
    config they run; nothing is offered."""
    pods = _deploy(api_client, namespace, 1)
    _create_fleet(api_client, namespace, {"app": "collector"}, CONFIG_V1)
    agent = start_go_agent(
        operator.ws_url, "--heartbeat=1s", f"--attr=k8s.pod.uid={pods[0].metadata.uid}"
    )
    try:
        agent.wait_for("message", timeout=60, where=lambda e: "remote_config" in e)
        eventually("the fleet Ready", lambda: _ready(_status(api_client, namespace)) == "True")
        invalid = {"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}
        patch_fleet_spec(api_client, namespace, "collectors", {"selector": invalid})

        def stalled() -> dict[str, Any] | None:
            fleet = _fleet(api_client, namespace)
            status = fleet.get("status") or {}
            current = status.get("observedGeneration") == fleet["metadata"]["generation"]
            return fleet if current and _stalled(status) else None

        fleet = eventually("Stalled for the new generation", stalled)
        conditions = {c["type"]: c for c in fleet["status"]["conditions"]}
        assert conditions["Stalled"]["reason"] == "InvalidSpec"
        assert "needs at least one value" in conditions["Stalled"]["message"]
        assert conditions["Reconciling"]["status"] == "False"
        judge(fleet, "Degraded", "Failed", says="InvalidSpec")
        time.sleep(3)  # a hold, on purpose: three status ticks that must not undo it
        assert _stalled(_status(api_client, namespace))
        assert len(_seen(agent, "message", "remote_config")) == 1
    finally:
        agent.stop()


def test_a_rotated_or_deleted_token_closes_the_sessions_it_opened(
    crds: None, cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    """Revocation: sessions authenticated with a token end when it stops being the
    fleet's token (WebSocket closed with 1008, HTTP refused with 401) within one re-read
    of the Secret, and reconnecting with it is refused; the new token is admitted."""
    core: Any = k8s.CoreV1Api(api_client)
    secret = {"metadata": {"name": "agent-token"}, "stringData": {"token": "token-one"}}
    core.create_namespaced_secret(namespace, secret)
    pods = _deploy(api_client, namespace, 3)
    _create_fleet(
        api_client,
        namespace,
        {"app": "collector"},
        CONFIG_V1,
        authSecretRef={"name": "agent-token"},
    )

    def agent(url: str, token: str, pod: int) -> JsonlProcess:
        return start_go_agent(
            url,
            "--heartbeat=1s",
            f"--header=Authorization=Bearer {token}",
            f"--attr=k8s.pod.uid={pods[pod].metadata.uid}",
        )

    def configured(a: JsonlProcess) -> None:
        a.wait_for("message", timeout=60, where=lambda e: "remote_config" in e)

    def seen(a: JsonlProcess) -> list[dict[str, Any]]:
        with contextlib.suppress(TimeoutError):
            a.wait_for("(drain)", timeout=0.2)  # reads what the agent printed so far
        return a.seen

    def refused(a: JsonlProcess, after: int, what: str) -> None:
        """A failed (re)connection reported after the agent's `after`-th event."""
        eventually(
            what,
            lambda: any(e["event"] == "connect_failed" for e in seen(a)[after:]) or None,
            timeout=20,
        )

    with start_operator(cluster.kubeconfig, tmp_path, "--token-refresh-seconds=1") as op:
        ws_one, http_one = agent(op.ws_url, "token-one", 0), agent(op.http_url, "token-one", 1)
        agents = [ws_one, http_one]
        try:
            configured(ws_one)
            configured(http_one)

            def polls_answered() -> int:  # opamp-go calls OnConnect for every 200
                return sum(e["event"] == "connected" for e in seen(http_one))

            before = polls_answered()
            time.sleep(3)
            assert polls_answered() >= before + 2, "the HTTP agent polls every second"
            marks = {id(a): len(seen(a)) for a in agents}
            core.patch_namespaced_secret(
                "agent-token", namespace, {"stringData": {"token": "token-two"}}
            )
            refused(ws_one, marks[id(ws_one)], "the WebSocket on the old token to be closed")
            # HTTP: every poll is authenticated; the old token's get 401, not answered.
            answered = polls_answered()
            time.sleep(4)
            assert polls_answered() == answered
            ws_two = agent(op.ws_url, "token-two", 2)
            agents.append(ws_two)
            configured(ws_two)
            # the WebSocket; HTTP needs no session closed
            assert op.metric("opamp_errors_total", 'reason="revoked"') == 1

            # The Secret deleted: the token it held authenticates nobody any more.
            mark = len(seen(ws_two))
            core.delete_namespaced_secret("agent-token", namespace)
            refused(ws_two, mark, "the WebSocket on the deleted token to be closed")
            assert not any(e["event"] == "connected" for e in seen(ws_two)[mark:])
        finally:
            for a in agents:
                a.stop()
