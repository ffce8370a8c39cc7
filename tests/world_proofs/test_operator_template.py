"""Template mode on the local cluster: the operator renders the Collector workload, kwok
runs its pods, and the real opampsupervisor — started with the rendered config, the
environment the downward API gives one of those pods and its volumes as the kubelet
mounts them (world/template.py) — maps to that pod, applies the fleet's config and turns
the pod's agent-ready gate True. With agentAuth ServiceAccountToken the pod's projected
token (a real TokenRequest bound to the pod) is what maps it, over wss:// verified with
the CA from the fleet's ConfigMap."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from opamp_operator.api.models import AGENT_READY_CONDITION, GROUP, VERSION
from opamp_operator.k8s.reads import get_or_none
from opamp_operator.k8s.workload import (
    CONFIG_KEY,
    CONTAINER_SECURITY_CONTEXT,
    MANAGED_BY_LABEL,
    POD_SECURITY_CONTEXT,
    TOKEN_AUDIENCE,
    TOKEN_VOLUME,
    WORKLOAD_LABEL,
    config_map_name,
    workload_name,
)
from world.cluster import LocalCluster
from world.collector import Agent, base_collector_config, collector_config_with_health
from world.fleets import PLURAL, create_fleet, fleet_status
from world.operator import OperatorProcess, start_operator
from world.processes import eventually, free_port
from world.template import PodVolumes, container_env, start_pod_supervisor
from world.tls import make_pki, serve_tls_args

pytestmark = pytest.mark.world

FLEET = "collectors"
LABELS = {"app": "collector"}
IMAGE = "otel/opentelemetry-collector-opampsupervisor:0.149.0"
WAIT = 120.0
# opampsupervisor v0.149.0 reports a config APPLIED only once config_apply_timeout is over
# (world/collector.py), and every proof here that runs a supervisor waits for APPLIED: the
# operator's rendered 30 s would be 30 s of each. The fleets' supervisorConfig (merged over
# the rendered config, as a user's is) asks for the 10 s the other supervisor proofs give
# a Collector on this machine; none of these proofs is about that timeout.
SUPERVISOR_CONFIG = {"agent": {"config_apply_timeout": "10s"}}
# How long OperatorProcess.stop() takes: kopf gives its tasks 5 s to end (world/operator.py).
STOP_SECONDS = 5.0


class SharedOperator:
    """One operator for the module's tests that need a plain one (each test has its own
    namespace and fleet), started on first use. A test that runs operators of its own
    stops it first: two operators would both reconcile that test's fleet."""

    def __init__(self, cluster: LocalCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.running: OperatorProcess | None = None

    def get(self) -> OperatorProcess:
        """The operator, told that its template-mode agents reach it on its own port.

        Its gate startup grace (15 s by default: how long after a start a gated pod
        keeps its agent-ready condition while its agent may still be reconnecting) is 1 s:
        it starts before the tests' fleets, no agent is reconnecting to it, and the
        grace would only hold back a gate going False that a test waits for."""
        if self.running is None:
            port = free_port()
            endpoint = f"--agent-endpoint=ws://127.0.0.1:{port}/v1/opamp"
            grace = "--gate-startup-grace=1"
            op = start_operator(self.cluster.kubeconfig, self.workdir, endpoint, grace, port=port)
            assert op.port == port
            self.running = op
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop_in_background()
            self.running = None


@pytest.fixture(scope="module")
def shared_operator(
    crds: None, cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedOperator]:
    shared = SharedOperator(cluster, tmp_path_factory.mktemp("operator"))
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture
def operator(shared_operator: SharedOperator) -> OperatorProcess:
    return shared_operator.get()


def _create_fleet(
    api_client: Any, namespace: str, config: str, template: dict[str, Any], **spec: Any
) -> None:
    create_fleet(api_client, namespace, FLEET, LABELS, config, template=template, **spec)


def _patch_fleet(api_client: Any, namespace: str, ops: list[dict[str, Any]]) -> None:
    co: Any = k8s.CustomObjectsApi(api_client)
    co.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, FLEET, ops, _content_type="application/json-patch+json"
    )


def _running_pods(api_client: Any, namespace: str) -> list[Any]:
    core: Any = k8s.CoreV1Api(api_client)
    pods = core.list_namespaced_pod(namespace, label_selector="app=collector").items
    return sorted(
        (
            p
            for p in pods
            if p.status.phase == "Running"
            and p.status.pod_ip
            and p.metadata.deletion_timestamp is None
        ),
        key=lambda p: p.metadata.name,
    )


def _n_running(api_client: Any, namespace: str, n: int) -> list[Any]:
    return eventually(
        f"{n} Running pods of the fleet",
        lambda: p if len(p := _running_pods(api_client, namespace)) == n else None,
        timeout=WAIT,
    )


def _gate(pod: Any) -> str | None:
    return next(
        (c.status for c in pod.status.conditions or [] if c.type == AGENT_READY_CONDITION), None
    )


def _gone(read: Callable[[str, str], Any], name: str, namespace: str) -> bool:
    return get_or_none(read, name, namespace) is None


def _workload_events(api_client: Any, namespace: str, *expected: str) -> set[str]:
    """Wait for the fleet's Workload events to include `expected`; returns all of them."""
    core: Any = k8s.CoreV1Api(api_client)

    def messages() -> set[str] | None:
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={FLEET},reason=Workload"
        ).items
        seen = {e.message for e in events}
        return seen if set(expected) <= seen else None

    return eventually(f"Workload events {expected}", messages, timeout=WAIT)


def _controlled_by_the_fleet(obj: Any, api_client: Any, namespace: str) -> None:
    co: Any = k8s.CustomObjectsApi(api_client)
    fleet = co.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, FLEET)
    (owner,) = obj.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == (
        "CollectorFleet",
        FLEET,
        fleet["metadata"]["uid"],
    )
    assert owner.controller is True


def _assert_restricted(pod_spec: dict[str, Any]) -> None:
    """The restricted defaults, as the API stored them on a pod (the stand-in kubelet does
    not enforce them: kwok runs no containers)."""
    assert pod_spec["securityContext"] == POD_SECURITY_CONTEXT
    (container,) = pod_spec["containers"]
    assert container["securityContext"] == CONTAINER_SECURITY_CONTEXT
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert [volumes[m["name"]].get("emptyDir") for m in writable] == [{}]


def test_template_deployment_runs_supervised_collectors_mapped_to_their_pods(
    operator: OperatorProcess, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    apps: Any = k8s.AppsV1Api(api_client)
    core: Any = k8s.CoreV1Api(api_client)
    health_port = free_port()
    collector = base_collector_config(health_port)
    # The Collector inherits the container's environment from the supervisor.
    collector["extensions"]["health_check"]["path"] = "/${env:K8S_POD_UID}"
    config = yaml.safe_dump(collector, sort_keys=False)
    _create_fleet(
        api_client,
        namespace,
        config,
        {"image": IMAGE, "replicas": 2, "supervisorConfig": SUPERVISOR_CONFIG},
    )

    deployment = eventually(
        "the rendered Deployment",
        lambda: get_or_none(apps.read_namespaced_deployment, workload_name(FLEET), namespace),
        timeout=WAIT,
    )
    _controlled_by_the_fleet(deployment, api_client, namespace)
    assert deployment.spec.replicas == 2
    assert deployment.spec.template.spec.containers[0].image == IMAGE
    pods = _n_running(api_client, namespace, 2)
    for pod in pods:
        assert [g.condition_type for g in pod.spec.readiness_gates] == [AGENT_READY_CONDITION]
        _assert_restricted(api_client.sanitize_for_serialization(pod)["spec"])
        assert pod.metadata.labels[MANAGED_BY_LABEL] == "opamp-operator"
        assert pod.metadata.labels[WORKLOAD_LABEL] == FLEET
    cm = core.read_namespaced_config_map(config_map_name(FLEET), namespace)
    _controlled_by_the_fleet(cm, api_client, namespace)
    created = _workload_events(
        api_client,
        namespace,
        f"created ConfigMap {config_map_name(FLEET)}",
        f"created Deployment {workload_name(FLEET)}",
    )
    assert len(created) == 2
    supervisor_yaml = cm.data[CONFIG_KEY]
    assert yaml.safe_load(supervisor_yaml)["server"]["endpoint"] == operator.ws_url

    # Be the kubelet of the first pod: its container, its downward API values.
    target = pods[0]
    pod_json = api_client.sanitize_for_serialization(target)
    env = container_env(pod_json, api_client)
    assert env["K8S_POD_UID"] == target.metadata.uid
    health_url = f"http://127.0.0.1:{health_port}/{target.metadata.uid}"
    with start_pod_supervisor(
        supervisor_yaml, pod_json, env, tmp_path / "pod-0", health_url=health_url
    ) as supervisor:
        agents_url = f"/api/v1/fleets/{namespace}/{FLEET}/agents"
        agent = eventually(
            "the supervised Collector mapped to its pod, config applied",
            lambda: next(
                (
                    a
                    for a in operator.get(agents_url)["agents"]
                    if a["pod"] == f"{namespace}/{target.metadata.name}"
                    and a["remoteConfigStatus"] == "APPLIED"
                ),
                None,
            ),
            timeout=WAIT,
        )
        assert agent["rule"] == "k8s.pod.uid"
        assert agent["config"] == "Applied"
        assert agent["attributes"]["k8s.pod.uid"] == target.metadata.uid
        assert agent["attributes"]["k8s.namespace.name"] == namespace
        assert agent["attributes"]["k8s.node.name"] == target.spec.node_name
        # The Collector runs the fleet's config: its health_check extension answers, on
        # the path the pod's uid made.
        supervisor.wait_healthy(timeout=WAIT)

        gates = eventually(
            "the agent-ready gate True on the supervised pod, False on the other",
            lambda: (
                g
                if (g := {p.metadata.name: _gate(p) for p in _running_pods(api_client, namespace)})
                == {target.metadata.name: "True", pods[1].metadata.name: "False"}
                else None
            ),
            timeout=WAIT,
        )
        assert len(gates) == 2

        _patch_fleet(
            api_client,
            namespace,
            [{"op": "replace", "path": "/spec/template/replicas", "value": 3}],
        )
        eventually(
            "the Deployment scaled to 3",
            lambda: (
                apps.read_namespaced_deployment(workload_name(FLEET), namespace).spec.replicas == 3
            ),
            timeout=WAIT,
        )
        _workload_events(api_client, namespace, f"updated Deployment {workload_name(FLEET)}")
        scaled = _n_running(api_client, namespace, 3)
        # Only replicas changed: the pods were not rolled, the agent keeps its pod.
        assert target.metadata.uid in {p.metadata.uid for p in scaled}

    _patch_fleet(api_client, namespace, [{"op": "remove", "path": "/spec/template"}])
    eventually(
        "the Deployment and the ConfigMap deleted",
        lambda: (
            _gone(apps.read_namespaced_deployment, workload_name(FLEET), namespace)
            and _gone(core.read_namespaced_config_map, config_map_name(FLEET), namespace)
        ),
        timeout=WAIT,
    )
    _workload_events(
        api_client,
        namespace,
        f"deleted Deployment {workload_name(FLEET)}",
        f"deleted ConfigMap {config_map_name(FLEET)}",
    )
    eventually(
        "the pods gone",
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=collector").items,
        timeout=WAIT,
    )


def test_template_daemon_set_gives_one_pod_per_node_and_goes_with_the_fleet(
    operator: OperatorProcess, api_client: Any, namespace: str, cluster: LocalCluster
) -> None:
    apps: Any = k8s.AppsV1Api(api_client)
    core: Any = k8s.CoreV1Api(api_client)
    co: Any = k8s.CustomObjectsApi(api_client)
    config, _ = collector_config_with_health()
    _create_fleet(api_client, namespace, config, {"image": IMAGE, "replicas": 1})
    _n_running(api_client, namespace, 1)

    _patch_fleet(
        api_client,
        namespace,
        [{"op": "replace", "path": "/spec/template/kind", "value": "DaemonSet"}],
    )
    daemon_set = eventually(
        "the rendered DaemonSet",
        lambda: get_or_none(apps.read_namespaced_daemon_set, workload_name(FLEET), namespace),
        timeout=WAIT,
    )
    _controlled_by_the_fleet(daemon_set, api_client, namespace)
    eventually(
        "the Deployment replaced by the DaemonSet",
        lambda: _gone(apps.read_namespaced_deployment, workload_name(FLEET), namespace),
        timeout=WAIT,
    )
    nodes = len(cluster.node_names)
    pods = eventually(
        "one Running DaemonSet pod per kwok node",
        lambda: (
            p
            if len(p := _running_pods(api_client, namespace)) == nodes
            and all(x.metadata.owner_references[0].kind == "DaemonSet" for x in p)
            else None
        ),
        timeout=WAIT,
    )
    assert sorted(p.spec.node_name for p in pods) == sorted(cluster.node_names)
    # The DaemonSet keeps its history in ControllerRevisions labelled like its pods; none
    # of them may pass for one of the fleet's config revisions.
    listed = apps.list_namespaced_controller_revision(
        namespace, label_selector=f"{GROUP}/fleet={FLEET}"
    ).items
    assert [r.data["config"] for r in listed] == [config]

    co.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, FLEET)
    eventually(
        "the DaemonSet and the ConfigMap garbage-collected with the fleet",
        lambda: (
            _gone(apps.read_namespaced_daemon_set, workload_name(FLEET), namespace)
            and _gone(core.read_namespaced_config_map, config_map_name(FLEET), namespace)
        ),
        timeout=WAIT,
    )


def test_template_pods_present_the_fleet_token_from_its_secret(
    operator: OperatorProcess, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    core: Any = k8s.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "agent-token"}, "stringData": {"token": "t0ken-42"}}
    )
    config, health_port = collector_config_with_health()
    _create_fleet(
        api_client,
        namespace,
        config,
        {"image": IMAGE, "replicas": 1, "supervisorConfig": SUPERVISOR_CONFIG},
        authSecretRef={"name": "agent-token"},
    )
    (pod,) = _n_running(api_client, namespace, 1)
    supervisor_yaml = eventually(
        "the rendered supervisor config",
        lambda: get_or_none(core.read_namespaced_config_map, config_map_name(FLEET), namespace),
        timeout=WAIT,
    ).data[CONFIG_KEY]
    pod_json = api_client.sanitize_for_serialization(pod)
    env = container_env(pod_json, api_client)
    assert "t0ken-42" in env.values()
    assert "t0ken-42" not in supervisor_yaml
    with start_pod_supervisor(
        supervisor_yaml,
        pod_json,
        env,
        tmp_path / "pod-0",
        health_url=f"http://127.0.0.1:{health_port}/",
    ) as supervisor:
        # The fleet requires its token: only an agent that sent it gets the fleet's config.
        agents_url = f"/api/v1/fleets/{namespace}/{FLEET}/agents"
        eventually(
            "the agent with the fleet's token mapped to its pod, config applied",
            lambda: any(
                a["pod"] == f"{namespace}/{pod.metadata.name}"
                and a["remoteConfigStatus"] == "APPLIED"
                for a in operator.get(agents_url)["agents"]
            ),
            timeout=WAIT,
        )
        supervisor.wait_healthy(timeout=WAIT)
        eventually(
            "the agent-ready gate True",
            lambda: [_gate(p) for p in _running_pods(api_client, namespace)] == ["True"],
            timeout=WAIT,
        )


def test_a_template_that_cannot_be_rendered_is_not_ready_with_the_reason(
    operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    config, _ = collector_config_with_health()
    # The selector asks for a label the rendered pods would not carry.
    co: Any = k8s.CustomObjectsApi(api_client)
    co.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CollectorFleet",
            "metadata": {"name": FLEET},
            "spec": {
                "selector": {
                    "matchLabels": LABELS,
                    "matchExpressions": [{"key": "tier", "operator": "Exists"}],
                },
                "config": {"inline": config},
                "template": {"image": IMAGE},
            },
        },
    )

    def not_ready() -> str | None:
        fleet = co.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, FLEET)
        for cond in (fleet.get("status") or {}).get("conditions", []):
            if cond["type"] == "Ready" and cond["status"] == "False":
                return str(cond["message"])
        return None

    message = eventually("Ready=False naming the template", not_ready, timeout=WAIT)
    assert message.startswith("spec.template: ")
    assert "tier" in message
    apps: Any = k8s.AppsV1Api(api_client)
    assert get_or_none(apps.read_namespaced_deployment, workload_name(FLEET), namespace) is None


def _reviews(op: OperatorProcess, result: str = "authenticated") -> float:
    return op.metric("opamp_agent_token_reviews_total", f'result="{result}"')


def _refused_connects(op: OperatorProcess) -> float:
    return op.metric("opamp_errors_total", 'reason="unauthorized"')


def test_template_pods_present_their_projected_token_over_wss_verified_with_the_ca(
    shared_operator: SharedOperator,
    cluster: LocalCluster,
    api_client: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The pods' agents hold their pods by their projected ServiceAccount tokens alone.

    What the supervisor does with a rotated token, shown step by step: opampsupervisor
    v0.149.0 expands `${file:...}` in its server headers once, when it loads its config,
    so (1) a token the kubelet rewrites leaves the open connection as it is, (2) a
    reconnect still sends the token read at start, accepted while that one is valid, and
    (3) once it is not, reconnects are refused until the container restarts and reads
    the current one. (3) is what expirationSeconds bounds, hence its long default.
    """
    apps: Any = k8s.AppsV1Api(api_client)
    core: Any = k8s.CoreV1Api(api_client)
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    args = (f"--agent-endpoint=wss://127.0.0.1:{port}/v1/opamp", *serve_tls_args(pki.server))

    def operator() -> OperatorProcess:
        return start_operator(cluster.kubeconfig, tmp_path / "operator", *args, port=port)

    shared_operator.stop()  # this test's operators alone reconcile its fleet

    # What the fleet's author provides in its namespace: the CA that signed the operator's
    # agent certificate (public), and the ServiceAccount the fleet admits.
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "opamp-ca"}, "data": {"ca.crt": pki.ca_file.read_text()}}
    )
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "collector"}})
    config, health_port = collector_config_with_health()
    op = operator()
    supervisor = None
    try:
        _create_fleet(
            api_client,
            namespace,
            config,
            {
                "image": IMAGE,
                "serviceAccountName": "collector",
                # The shortest lifetime the apiserver issues.
                "serviceAccountToken": {"expirationSeconds": 600},
                "caConfigMapRef": {"name": "opamp-ca"},
                "supervisorConfig": SUPERVISOR_CONFIG,
            },
            agentAuth={"mode": "ServiceAccountToken", "serviceAccounts": ["collector"]},
        )
        (pod,) = _n_running(api_client, namespace, 1)
        pod_json = api_client.sanitize_for_serialization(pod)
        _assert_restricted(pod_json["spec"])
        volumes_of = {v["name"]: v for v in pod_json["spec"]["volumes"]}
        (source,) = volumes_of[TOKEN_VOLUME]["projected"]["sources"]
        assert source["serviceAccountToken"] == {
            "audience": TOKEN_AUDIENCE,
            "expirationSeconds": 600,
            "path": "token",
        }
        assert pod_json["spec"]["serviceAccountName"] == "collector"
        deployment = apps.read_namespaced_deployment(workload_name(FLEET), namespace)
        assert deployment.spec.template.spec.security_context.run_as_non_root is True
        supervisor_yaml = core.read_namespaced_config_map(config_map_name(FLEET), namespace).data[
            CONFIG_KEY
        ]
        server = yaml.safe_load(supervisor_yaml)["server"]
        assert server["endpoint"] == f"wss://127.0.0.1:{port}/v1/opamp"
        assert server["tls"]["ca_file"].endswith("/ca.crt")
        assert server["headers"]["Authorization"][0].startswith("Bearer ${file:")

        env = container_env(pod_json, api_client)
        agents_url = f"/api/v1/fleets/{namespace}/{FLEET}/agents"
        where = f"{namespace}/{pod.metadata.name}"
        health_url = f"http://127.0.0.1:{health_port}/"

        def held(by: OperatorProcess) -> dict[str, Any] | None:
            try:
                agents = by.get(agents_url)["agents"]
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # a restarted operator that has not read the fleet yet
                    return None
                raise
            return next(
                (
                    a
                    for a in agents
                    if a["pod"] == where and a["connected"] and a["remoteConfigStatus"] == "APPLIED"
                ),
                None,
            )

        def verified(by: OperatorProcess) -> dict[str, Any]:
            agent = eventually("the agent holding its pod", lambda: held(by), timeout=WAIT)
            assert agent["rule"] == "credential"  # its token named the pod, nothing else did
            status = eventually(
                "the fleet's status counting it",
                lambda: (
                    s
                    if (s := fleet_status(api_client, namespace, FLEET)).get("agentsMapped") == 1
                    and s.get("agentsConnected") == 1
                    else None
                ),
                timeout=WAIT,
            )
            assert status["agentsUnauthenticated"] == 0
            assert status["agentsUnverified"] == 0
            return agent

        with PodVolumes(pod_json, api_client, tmp_path / "pod-0") as volumes:

            def container() -> Agent:
                """The pod's container (again: a restart keeps the emptyDir, so its uid)."""
                return start_pod_supervisor(
                    supervisor_yaml,
                    pod_json,
                    env,
                    tmp_path / "pod-0",
                    health_url=health_url,
                    volumes=volumes,
                )

            supervisor = container()
            agent = verified(op)
            supervisor.wait_healthy(timeout=WAIT)
            eventually(
                "the agent-ready gate True",
                lambda: [_gate(p) for p in _running_pods(api_client, namespace)] == ["True"],
                timeout=WAIT,
            )
            assert _reviews(op) == 1
            assert _refused_connects(op) == 0

            # (1) The kubelet rewrites the token: the connection is kept, nothing refused,
            # nothing new reviewed (heartbeats carry no token; nothing re-read it).
            started_with = volumes.tokens()[f"{TOKEN_VOLUME}/token"]
            assert volumes.rotate_tokens()[f"{TOKEN_VOLUME}/token"] != started_with
            time.sleep(5)
            assert held(op) is not None
            assert (_reviews(op), _refused_connects(op)) == (1, 0)

            # (2) A reconnect (the operator restarted) while the start token is valid.
            op.stop()
            op = operator()
            again = verified(op)
            # The start token's last review: this operator keeps its answer until the
            # token expires, and the agent stays connected, so none follows (asserted).
            last_reviewed = time.monotonic()
            assert again["instanceUid"] == agent["instanceUid"]
            assert (_reviews(op), _refused_connects(op)) == (1, 0)

            # (3) The start token stops passing TokenReview — its ServiceAccount replaced,
            # which fails the token as expiry does — and the kubelet writes a token of the
            # new ServiceAccount. A reconnect sends the start token: refused, again and
            # again, though the current token is on disk.
            core.delete_namespaced_service_account("collector", namespace)
            eventually(
                "the ServiceAccount gone",
                lambda: _gone(core.read_namespaced_service_account, "collector", namespace),
            )
            core.create_namespaced_service_account(namespace, {"metadata": {"name": "collector"}})
            volumes.rotate_tokens()
            # kube-apiserver remembers a token that authenticated for 10 s
            # (TokenSuccessCacheTTL): the next operator may ask only once the start token's
            # last review has aged out. Stopping this one takes about STOP_SECONDS, spent
            # in that wait rather than after it.
            aged_out = last_reviewed + 11.0
            time.sleep(max(0.0, aged_out - STOP_SECONDS - time.monotonic()))
            op.stop()
            time.sleep(max(0.0, aged_out - time.monotonic()))
            op = operator()
            eventually(
                "the supervisor's reconnects refused",
                lambda: _refused_connects(op) >= 2 and _reviews(op, "refused") >= 1,
                timeout=WAIT,
            )
            assert held(op) is None
            assert _reviews(op) == 0

            # The container restarts: the supervisor reads the current token and holds
            # its pod again (same instance UID: the emptyDir outlives the container).
            supervisor.stop()
            supervisor = container()
            restarted = verified(op)
            assert restarted["instanceUid"] == agent["instanceUid"]
            assert _reviews(op) == 1
    finally:
        if supervisor is not None:
            supervisor.stop()
        op.stop_in_background()
