"""The Helm chart on the local cluster: `helm install` works, its CRDs are served, and the
operator running with nothing but the chart's ServiceAccount token reconciles fleets and
rollouts without a single 403 (reading the cluster's client CA for its API at start
included) — while that same token cannot read Secrets or touch objects beyond what the
chart grants.

kwok plays the kubelet, so the operator's own pod "runs" without its image; the operator
that does the work is a local process using the ServiceAccount's token (TokenRequest API).
The local apiserver cannot reach Services (no kube-proxy), so the installs the operator
runs against have the webhook off; one install keeps it on to prove the apiserver accepts
the Secret and ValidatingWebhookConfiguration the chart makes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import AGENT_READY_CONDITION, GROUP, VERSION
from opamp_operator.k8s.reads import get_or_none
from world.chart import (
    CHART,
    CRD_NAMES,
    helm,
    remove_chart_crds,
    service_account_token,
    token_kubeconfig,
)
from world.cluster import LocalCluster
from world.fleets import (
    CONFIG_V1,
    CONFIG_V2,
    CONFIG_V3,
    PLURAL,
    ROLLOUTS,
    PodAgents,
    condition,
    create_deployment,
    create_fleet,
    create_rollout,
    fleet_status,
    pod_condition,
    release_fleets,
    rollout_status,
    running_pods,
    set_fleet_config,
    single_file_hash,
    workload_report,
)
from world.operator import start_operator
from world.processes import eventually

pytestmark = pytest.mark.world

TOKEN_SECRET = "agent-token"
TOKEN = "chart-rbac-s3cret"
LABELS = {"app": "collector"}
# What an authorization failure looks like in the operator's log (kopf and the client).
# (?<!,): not the milliseconds of a log timestamp such as 15:07:40,403.
DENIED = re.compile(r"(?<!,)\b403\b|forbidden|Not enough permissions", re.IGNORECASE)


def _denials(log: str) -> list[str]:
    """Authorization failures in an operator log. Events posted into a namespace another
    test is deleting are refused too (NamespaceTerminating), which is not RBAC."""
    return [
        line
        for line in log.splitlines()
        if DENIED.search(line) and "because it is being terminated" not in line
    ]


def _new_namespace(core: Any, prefix: str) -> str:
    name: str = core.create_namespace(
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(generate_name=f"{prefix}-"))
    ).metadata.name
    return name


@dataclass(frozen=True)
class Release:
    """One `helm install` of the chart and the namespaces around it."""

    name: str
    namespace: str
    listed: tuple[str, ...]  # watchNamespaces
    outside: str  # a namespace a namespaced install does not watch
    values: tuple[str, ...]
    cluster_wide: bool = False  # clusterWide=true

    @property
    def service_account(self) -> str:
        return f"{self.name}-opamp-operator"

    @property
    def watched(self) -> tuple[str, ...]:
        """What the operator watches: the listed namespaces, else the release namespace
        (the chart's default); empty for a cluster-wide install."""
        if self.cluster_wide:
            return ()
        return self.listed or (self.namespace,)


def _install(cluster: LocalCluster, api_client: Any, home: Path, release: Release) -> str:
    """`helm install --wait`; returns the rendered manifest helm stored for the release."""
    sets = [f"--set={v}" for v in release.values]
    sets += [f"--set=watchNamespaces[{i}]={ns}" for i, ns in enumerate(release.listed)]
    if release.cluster_wide:
        sets.append("--set=clusterWide=true")
    try:
        helm(
            cluster.kubeconfig,
            home,
            "install",
            release.name,
            str(CHART),
            f"--namespace={release.namespace}",
            *sets,
            "--wait",
            "--timeout=90s",
        )
    except AssertionError as failed:
        # Seen once in a full CI run, never alone: what was helm still waiting for?
        report = workload_report(api_client, cluster, release.namespace)
        raise AssertionError(f"{failed}\n{report}") from failed
    return helm(
        cluster.kubeconfig,
        home,
        "get",
        "manifest",
        release.name,
        f"--namespace={release.namespace}",
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster of this module's own, running OwnerReferencesPermissionEnforcement as
    OpenShift does: setting blockOwnerDeletion on an owned object (ControllerRevisions,
    template objects) needs update on the owner's finalizers, which the chart must grant.
    The shared cluster does not run it: its admission RESTMapper trails the CRDs other
    modules install and remove (403 "cannot find RESTMapping" until its periodic reset),
    and two full CI runs had Deployments stall while it was on there."""
    local = LocalCluster(
        workdir=tmp_path_factory.mktemp("cluster"),
        admission_plugins=("NodeRestriction", "OwnerReferencesPermissionEnforcement"),
    ).start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def api_client(cluster: LocalCluster) -> Iterator[Any]:
    api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm")


@pytest.fixture(scope="module")
def installs(
    cluster: LocalCluster, api_client: Any, helm_home: Path
) -> Iterator[dict[str, tuple[Release, str]]]:
    """A namespaced install watching two namespaces, one with the chart's default scope
    (its release namespace) and a cluster-wide one (asked for: clusterWide=true) with the
    webhook on; all uninstalled (and the CRDs removed) at the end."""
    core: Any = k8s.CoreV1Api(api_client)
    made: list[str] = []

    def ns(prefix: str) -> str:
        made.append(_new_namespace(core, prefix))
        return made[-1]

    namespaced = Release(
        name="scoped",
        namespace=ns("chart-scoped"),
        listed=(ns("chart-watched-a"), ns("chart-watched-b")),
        outside=ns("chart-outside"),
        values=(
            "webhook.enabled=false",
            "image.pullPolicy=Never",
            f"tokenSecrets.resourceNames[0]={TOKEN_SECRET}",
        ),
    )
    default = Release(
        name="own",
        namespace=ns("chart-own"),
        listed=(),
        outside=namespaced.outside,
        values=("webhook.enabled=false", "image.pullPolicy=Never"),
    )
    clusterwide = Release(
        name="wide",
        namespace=ns("chart-wide"),
        listed=(),
        outside=namespaced.outside,
        values=("image.pullPolicy=Never",),
        cluster_wide=True,
    )
    releases = {"namespaced": namespaced, "default": default, "clusterwide": clusterwide}
    done: list[Release] = []
    try:
        # The three installs run at once (helm --wait mostly waits): they share nothing
        # helm could race on — each has its own namespace and release-named cluster
        # objects, and helm skips a CRD another install created first (AlreadyExists).
        with ThreadPoolExecutor(max_workers=len(releases)) as pool:
            running = {
                key: pool.submit(_install, cluster, api_client, helm_home, release)
                for key, release in releases.items()
            }
        done.extend(releases[key] for key, future in running.items() if not future.exception())
        found = {key: (releases[key], future.result()) for key, future in running.items()}
        yield found
    finally:
        for release in done:
            helm(
                cluster.kubeconfig,
                helm_home,
                "uninstall",
                release.name,
                f"--namespace={release.namespace}",
                "--wait",
            )
        for name in made:
            core.delete_namespace(name)
        remove_chart_crds(api_client)


@pytest.fixture
def as_operator(
    cluster: LocalCluster, api_client: Any, tmp_path: Path
) -> Iterator[Callable[[Release], tuple[Path, Any]]]:
    """A kubeconfig and an API client that are the chart's ServiceAccount, nothing more."""
    clients: list[Any] = []

    def make(release: Release) -> tuple[Path, Any]:
        token = service_account_token(api_client, release.service_account, release.namespace)
        path = token_kubeconfig(cluster, token, tmp_path / f"{release.name}.kubeconfig")
        client = k8s_config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
        clients.append(client)
        return path, client

    yield make
    for client in clients:
        client.close()


def _denied(call: Callable[[], object]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == 403, caught.value
    return caught.value


def _objects(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def _chart_namespaces(manifest: str) -> list[str]:
    """The `--namespace` values of the installed Deployment's args: what the chart tells
    its operator to watch (empty: every namespace)."""
    [deployment] = [o for o in _objects(manifest) if o["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]


def test_helm_install_is_deployed_and_its_crds_are_served(
    installs: dict[str, tuple[Release, str]],
    api_client: Any,
    cluster: LocalCluster,
    helm_home: Path,
) -> None:
    ext: Any = k8s.ApiextensionsV1Api(api_client)
    for name in CRD_NAMES:
        crd = ext.read_custom_resource_definition(name)
        assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions), (
            name
        )
    apps: Any = k8s.AppsV1Api(api_client)
    for release, manifest in installs.values():
        status = helm(
            cluster.kubeconfig, helm_home, "status", release.name, f"-n={release.namespace}"
        )
        assert "STATUS: deployed" in status
        notes = helm(
            cluster.kubeconfig, helm_home, "get", "notes", release.name, f"-n={release.namespace}"
        )
        # TLS by default, with the CA Helm made: the endpoint and where its CA is.
        assert f"wss://{release.name}-opamp-operator.{release.namespace}.svc:4320/v1/opamp" in notes
        assert f"get secret {release.name}-opamp-operator-opamp-tls" in notes
        scope = ", ".join(release.watched) if release.watched else "every namespace"
        assert scope in notes
        deployment = apps.read_namespaced_deployment(
            f"{release.name}-opamp-operator", release.namespace
        )
        assert deployment.status.ready_replicas == 1
        kinds = {o["kind"] for o in _objects(manifest)}
        assert {"Deployment", "ServiceAccount", "ClusterRole", "Service"} <= kinds
    for release, manifest in installs.values():
        assert _chart_namespaces(manifest) == list(release.watched)
        roles = [o for o in _objects(manifest) if o["kind"] in {"Role", "RoleBinding"}]
        # A Role and its binding per watched namespace (the release namespace by default,
        # none cluster-wide), and the binding to the built-in reader of the cluster's
        # client CA in kube-system (for the API listener).
        assert sorted((o["kind"], o["metadata"]["namespace"]) for o in roles) == sorted(
            [("RoleBinding", "kube-system")]
            + [(kind, ns) for kind in ("Role", "RoleBinding") for ns in release.watched]
        )
    _, scoped_manifest = installs["namespaced"]
    rbac: Any = k8s.RbacAuthorizationV1Api(api_client)
    for release, _ in installs.values():
        reader = rbac.read_namespaced_role_binding(
            f"{release.service_account}-auth-reader", "kube-system"
        )
        assert reader.role_ref.name == "extension-apiserver-authentication-reader"
        rbac.read_cluster_role(f"{release.service_account}-metrics-reader")
    assert "ValidatingWebhookConfiguration" not in {o["kind"] for o in _objects(scoped_manifest)}
    wide, wide_manifest = installs["clusterwide"]
    reg: Any = k8s.AdmissionregistrationV1Api(api_client)
    hook = reg.read_validating_webhook_configuration(f"{wide.name}-opamp-operator")
    admin: Any = k8s.CoreV1Api(api_client)
    secret = admin.read_namespaced_secret(f"{wide.name}-opamp-operator-webhook-tls", wide.namespace)
    assert hook.webhooks[0].client_config.ca_bundle == secret.data["ca.crt"]
    assert hook.webhooks[0].failure_policy == "Ignore"
    assert "ValidatingWebhookConfiguration" in {o["kind"] for o in _objects(wide_manifest)}


@pytest.mark.parametrize("mode", ["namespaced", "default", "clusterwide"])
def test_the_operator_with_the_charts_identity_reconciles_without_a_403(
    mode: str,
    *,
    installs: dict[str, tuple[Release, str]],
    as_operator: Callable[[Release], tuple[Path, Any]],
    api_client: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    release, manifest = installs[mode]
    kubeconfig, _ = as_operator(release)
    if release.watched:
        namespace = release.watched[-1]  # the release namespace itself by default
    core: Any = k8s.CoreV1Api(api_client)
    # A token names its fleet: each mode's fleet has its own.
    token = f"{TOKEN}-{mode}"
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": TOKEN_SECRET}, "stringData": {"token": token}}
    )
    labels = {**LABELS, "mode": mode}
    create_deployment(
        api_client,
        namespace,
        f"collector-{mode}",
        labels,
        replicas=3,
        readiness_gates=(AGENT_READY_CONDITION,),
    )
    pods: list[Any] = eventually(
        "3 Running pods",
        lambda: p if len(p := running_pods(api_client, namespace, labels)) == 3 else None,
    )
    # Watching what the chart's Deployment watches.
    args = [f"--namespace={ns}" for ns in _chart_namespaces(manifest)]
    op = start_operator(kubeconfig, tmp_path, "--rollout-interval=1", *args)
    agents = PodAgents(api_client, namespace, labels, op.ws_url)
    try:
        create_fleet(
            api_client,
            namespace,
            "collectors",
            LABELS,
            CONFIG_V1,
            authSecretRef={"name": TOKEN_SECRET},
        )
        for pod in pods:
            agents.start_agent(pod, f"--header=Authorization=Bearer {token}")
        status = eventually(
            "the fleet to apply its config on 3 agents",
            lambda: (
                s
                if (s := fleet_status(api_client, namespace, "collectors")).get("configApplied")
                == 3
                and condition(s, "Ready") == "True"
                else None
            ),
        )
        assert status["desiredHash"] == single_file_hash(CONFIG_V1)
        assert status.get("agentsUnauthenticated", 0) == 0
        names = [pod.metadata.name for pod in pods]
        eventually(
            "the agent-ready gate True on every pod",
            lambda: all(
                pod_condition(api_client, namespace, n, AGENT_READY_CONDITION) == "True"
                for n in names
            ),
        )
        create_rollout(
            api_client,
            namespace,
            "collectors",
            "collectors",
            steps=[{"agents": 1}, {"percent": 100}],
        )
        eventually(
            "the rollout of the first config to succeed",
            lambda: rollout_status(api_client, namespace, "collectors").get("phase") == "Succeeded",
        )
        set_fleet_config(api_client, namespace, "collectors", CONFIG_V2)
        done = eventually(
            "the rollout of the new config to succeed",
            lambda: (
                s
                if (s := rollout_status(api_client, namespace, "collectors")).get("phase")
                == "Succeeded"
                and s.get("desiredHash") == single_file_hash(CONFIG_V2)
                else None
            ),
            timeout=90,
        )
        assert done["stableHash"] == single_file_hash(CONFIG_V2)
        eventually(
            "every agent on the new config",
            lambda: (
                fleet_status(api_client, namespace, "collectors").get("configApplied") == 3
                and fleet_status(api_client, namespace, "collectors").get("desiredHash")
                == single_file_hash(CONFIG_V2)
            ),
        )
        apps: Any = k8s.AppsV1Api(api_client)
        assert len(apps.list_namespaced_controller_revision(namespace).items) == 2
        # Back to the first config: its revision is reused under a new number, recreated
        # (a ControllerRevision's data is immutable), so delete and create, never patch.
        set_fleet_config(api_client, namespace, "collectors", CONFIG_V1)
        eventually(
            "the rollout back to the first config to succeed",
            lambda: (
                (s := rollout_status(api_client, namespace, "collectors")).get("phase")
                == "Succeeded"
                and s.get("stableHash") == single_file_hash(CONFIG_V1)
            ),
            timeout=90,
        )
        numbers = {
            single_file_hash(CONFIG_V1) in (r.metadata.annotations or {}).values(): r.revision
            for r in apps.list_namespaced_controller_revision(namespace).items
        }
        assert numbers == {True: 3, False: 2}
        # A third config with a history of one: the two older revisions are pruned.
        k8s.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "collectors",
            {"spec": {"config": {"inline": CONFIG_V3}, "revisionHistoryLimit": 1}},
        )
        [kept] = eventually(
            "one ControllerRevision left, the third config's",
            lambda: (
                items
                if len(items := apps.list_namespaced_controller_revision(namespace).items) == 1
                and single_file_hash(CONFIG_V3) in (items[0].metadata.annotations or {}).values()
                else None
            ),
        )
        assert kept.revision == 4
        eventually(
            "the rollout of the third config to succeed",
            lambda: (
                (s := rollout_status(api_client, namespace, "collectors")).get("phase")
                == "Succeeded"
                and s.get("stableHash") == single_file_hash(CONFIG_V3)
            ),
            timeout=90,
        )
        events = core.list_namespaced_event(namespace).items
        assert any(e.reason == "ConfigRevision" for e in events)
    except AssertionError as failed:
        raise AssertionError(
            f"{failed}\nfleet status: {fleet_status(api_client, namespace, 'collectors')}\n"
            f"operator log ({op.record.log}):\n{op.record.log_tail(40)}"
        ) from failed
    finally:
        agents.stop()
        op.stop()
        release_fleets(api_client)
    log = Path(op.record.log).read_text()
    denied = _denials(log)
    assert not denied, "\n".join(denied[:20])
    assert "fleet " in log
    assert "reconciled" in log


@pytest.mark.parametrize("mode", ["namespaced", "default"])
def test_the_namespaced_identity_cannot_read_secrets_or_leave_its_namespaces(
    mode: str,
    installs: dict[str, tuple[Release, str]],
    as_operator: Callable[[Release], tuple[Path, Any]],
    api_client: Any,
) -> None:
    """Listed namespaces, or by default the release namespace alone: nothing outside."""
    release, _ = installs[mode]
    _, client = as_operator(release)
    core: Any = k8s.CoreV1Api(client)
    apps: Any = k8s.AppsV1Api(client)
    co: Any = k8s.CustomObjectsApi(client)
    admin: Any = k8s.CoreV1Api(api_client)
    watched = release.watched[0]
    for ns in (watched, release.outside):  # `outside` is shared by the modes
        for name in (TOKEN_SECRET, "other"):
            with contextlib.suppress(ApiException):  # 409: made for the other mode
                admin.create_namespaced_secret(
                    ns, {"metadata": {"name": name}, "stringData": {"token": "x"}}
                )
    pod = {"metadata": {"name": "intruder"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    workload = {
        "metadata": {"name": "intruder"},
        "spec": {
            "selector": {"matchLabels": {"app": "intruder"}},
            "template": {
                "metadata": {"labels": {"app": "intruder"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }

    assert core.read_namespaced_secret(TOKEN_SECRET, watched).metadata.name == TOKEN_SECRET
    assert len(core.list_namespaced_pod(watched).items) >= 0
    _denied(lambda: core.list_namespaced_secret(watched))
    _denied(core.list_secret_for_all_namespaces)
    if any(v.startswith("tokenSecrets.resourceNames") for v in release.values):
        _denied(lambda: core.read_namespaced_secret("other", watched))
    else:  # the default: any Secret name, `get` only, in its own namespace
        assert core.read_namespaced_secret("other", watched).metadata.name == "other"
    _denied(lambda: core.read_namespaced_secret(TOKEN_SECRET, release.outside))
    _denied(lambda: core.read_namespaced_secret("other", release.outside))
    # Template mode writes workloads where it watches, nowhere else.
    _denied(lambda: apps.create_namespaced_deployment(release.outside, workload))
    _denied(lambda: apps.create_namespaced_daemon_set(release.outside, workload))
    _denied(lambda: core.create_namespaced_pod(watched, pod))
    _denied(lambda: core.delete_collection_namespaced_pod(watched))
    _denied(lambda: core.list_namespaced_pod(release.outside))
    _denied(core.list_pod_for_all_namespaces)
    _denied(lambda: core.list_namespaced_config_map(release.outside))
    _denied(lambda: apps.list_namespaced_controller_revision(release.outside))
    _denied(lambda: co.list_namespaced_custom_object(GROUP, VERSION, release.outside, PLURAL))
    _denied(lambda: co.list_namespaced_custom_object(GROUP, VERSION, release.outside, ROLLOUTS))
    _denied(lambda: co.list_cluster_custom_object(GROUP, VERSION, PLURAL))
    _denied(lambda: core.create_namespace({"metadata": {"name": "made-by-operator"}}))
    _denied(lambda: core.list_namespaced_service_account(watched))
    # The API listener's questions, and in kube-system the client CA and nothing else.
    _reviews_and_client_ca(client)
    _denied(lambda: core.list_namespaced_config_map("kube-system"))
    _denied(lambda: core.read_namespaced_config_map("kube-root-ca.crt", "kube-system"))
    _denied(lambda: core.list_namespaced_secret("kube-system"))


def _reviews_and_client_ca(client: Any) -> None:
    """What the API listener asks with the operator's identity is allowed: a TokenReview,
    a SubjectAccessReview, the cluster's client CA (kube-system)."""
    auth: Any = k8s.AuthenticationV1Api(client)
    review = auth.create_token_review({"spec": {"token": "not-a-token"}})
    assert review.status.authenticated is not True
    authz: Any = k8s.AuthorizationV1Api(client)
    access = authz.create_subject_access_review(
        {
            "spec": {
                "user": "nobody",
                "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
            }
        }
    )
    assert access.status.allowed is False
    core: Any = k8s.CoreV1Api(client)
    ca = core.read_namespaced_config_map("extension-apiserver-authentication", "kube-system")
    assert "client-ca-file" in ca.data


def test_the_clusterwide_identity_still_cannot_list_or_write_what_it_does_not_need(
    installs: dict[str, tuple[Release, str]],
    as_operator: Callable[[Release], tuple[Path, Any]],
    api_client: Any,
) -> None:
    release, _ = installs["clusterwide"]
    _, client = as_operator(release)
    core: Any = k8s.CoreV1Api(client)
    rbac: Any = k8s.RbacAuthorizationV1Api(client)
    reg: Any = k8s.AdmissionregistrationV1Api(client)
    ns = release.outside
    pod = {"metadata": {"name": "intruder"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}

    assert isinstance(core.list_pod_for_all_namespaces().items, list)
    _reviews_and_client_ca(client)
    _denied(core.list_secret_for_all_namespaces)
    _denied(lambda: core.list_namespaced_secret(ns))
    _denied(lambda: core.create_namespaced_pod(ns, pod))
    _denied(lambda: core.delete_collection_namespaced_pod(ns))
    _denied(lambda: core.patch_namespaced_secret(TOKEN_SECRET, ns, {"data": {}}))
    _denied(rbac.list_cluster_role)
    _denied(reg.list_validating_webhook_configuration)
    _denied(core.list_node)


def _exists(read: Callable[[str, str], object], name: str, namespace: str) -> bool:
    return get_or_none(read, name, namespace) is not None


def test_template_mode_with_the_charts_identity_renders_swaps_and_removes_its_workload(
    installs: dict[str, tuple[Release, str]],
    as_operator: Callable[[Release], tuple[Path, Any]],
    api_client: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    """What template mode writes (ConfigMap, Deployment, DaemonSet: get, create by
    server-side apply, patch, delete) is granted, and nothing more is asked for."""
    release, _ = installs["clusterwide"]
    kubeconfig, _ = as_operator(release)
    apps: Any = k8s.AppsV1Api(api_client)
    core: Any = k8s.CoreV1Api(api_client)
    co: Any = k8s.CustomObjectsApi(api_client)
    op = start_operator(kubeconfig, tmp_path, "--agent-endpoint=ws://127.0.0.1:1/v1/opamp")
    try:
        create_fleet(
            api_client,
            namespace,
            "rendered",
            {"app": "rendered"},
            CONFIG_V1,
            template={"image": "otelcol-supervisor:0.149.0", "replicas": 1},
        )
        eventually(
            "the rendered Deployment and supervisor ConfigMap",
            lambda: (
                _exists(apps.read_namespaced_deployment, "rendered-collector", namespace)
                and _exists(core.read_namespaced_config_map, "rendered-supervisor", namespace)
            ),
        )
        co.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "rendered",
            {"spec": {"template": {"kind": "DaemonSet"}}},
        )
        eventually(
            "the Deployment swapped for a DaemonSet",
            lambda: (
                _exists(apps.read_namespaced_daemon_set, "rendered-collector", namespace)
                and not _exists(apps.read_namespaced_deployment, "rendered-collector", namespace)
            ),
        )
        co.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "rendered", {"spec": {"template": None}}
        )
        eventually(
            "the DaemonSet and ConfigMap removed with the template",
            lambda: (
                not _exists(apps.read_namespaced_daemon_set, "rendered-collector", namespace)
                and not _exists(core.read_namespaced_config_map, "rendered-supervisor", namespace)
            ),
        )
    finally:
        op.stop()
        release_fleets(api_client)
    denied = _denials(Path(op.record.log).read_text())
    assert not denied, "\n".join(denied[:20])
