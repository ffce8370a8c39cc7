"""Least privilege for the people who write fleets, decided by the real cluster: the
apiserver calls the admission webhook `opamp-operator run --webhook-port …
--webhook-configuration …` serves, and the webhook asks SubjectAccessReviews for the
user who sent the request. Users are ServiceAccounts with TokenRequest tokens, each given
exactly the RBAC the test names, writing fleets with their own credentials.

The attacks tried: a fleet naming a Secret its author may not read, a template-mode fleet
from someone who may not create Deployments (or DaemonSets), a ServiceAccount its author
may not get, an update that swaps the Secret or the image; and what must keep working: an
update that changes none of these (a GitOps re-apply, a config change) by a user who holds
none of the grants. Last, the webhook with credentials that cannot ask the apiserver:
a fleet that needs a check is refused, not waved through.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from opamp_operator.api.models import GROUP, VERSION
from world import binaries
from world.chart import token_kubeconfig
from world.cluster import LocalCluster
from world.fleets import CONFIG_V1, CONFIG_V2, PLURAL
from world.operator import OperatorProcess, start_operator
from world.processes import eventually, free_port
from world.users import (
    grant,
    grant_role,
    revoke_cluster_grant,
    user,
    user_api_client,
    username,
)

pytestmark = pytest.mark.world

LABELS = {"app": "collector"}
FLEET_WRITER = [
    {
        "apiGroups": [GROUP],
        "resources": [PLURAL],
        "verbs": ["get", "list", "watch", "create", "update", "patch"],
    }
]
IMAGE = "registry.example/collector:1"


def _read_secret(name: str) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [name]}
    ]


def _fleet(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CollectorFleet",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": LABELS}, "config": {"inline": CONFIG_V1}, **spec},
    }


def _create(api: Any, namespace: str, body: dict[str, Any]) -> None:
    co: Any = k8s.CustomObjectsApi(api)
    co.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def _refusal(call: Any, *args: Any) -> tuple[int, str]:
    """The status and message with which the apiserver refused `call(*args)`."""
    with pytest.raises(k8s.ApiException) as refused:
        call(*args)
    message: str = json.loads(str(refused.value.body))["message"]
    return refused.value.status, message


def _admitted(call: Any, *args: Any) -> bool | None:
    """True once `call(*args)` is admitted; None (try again) while it is refused 403, as
    it is until a new grant reaches the apiserver's authorizer and the webhook's cache
    of refusals (2 s) lets it go."""
    try:
        call(*args)
    except k8s.ApiException as exc:
        if exc.status == 403:
            return None
        raise
    return True


@contextlib.contextmanager
def _webhook_operator(
    api_client: Any, kubeconfig: Path, workdir: Path, name: str
) -> Iterator[OperatorProcess]:
    """The operator serving the webhook, with kopf keeping configuration `name`
    (a domain) pointed at it; the configuration removed afterwards."""
    admission: Any = k8s.AdmissionregistrationV1Api(api_client)
    configuration = f"{name}.{GROUP}"
    port = free_port()
    try:
        with start_operator(
            kubeconfig,
            workdir,
            f"--webhook-port={port}",
            "--webhook-host=127.0.0.1",
            f"--webhook-configuration={configuration}",
        ) as op:
            eventually(
                "kopf to point the webhook configuration at the operator",
                lambda: any(
                    c.metadata.name == configuration and c.webhooks
                    for c in admission.list_validating_webhook_configuration().items
                ),
            )
            yield op
    finally:
        with contextlib.suppress(k8s.ApiException):
            admission.delete_validating_webhook_configuration(configuration)
        with contextlib.suppress(k8s.ApiException):
            admission.delete_mutating_webhook_configuration(configuration)


@pytest.fixture(scope="module")
def operator(
    crds: None, cluster: LocalCluster, api_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator, with the cluster's admin credentials, for the module: each test
    writes fleets in a namespace of its own."""
    workdir = tmp_path_factory.mktemp("operator")
    with _webhook_operator(api_client, cluster.kubeconfig, workdir, "fleet-authors") as op:
        yield op


@pytest.fixture
def objects(api_client: Any, namespace: str) -> None:
    """What fleets in the namespace refer to: two Secrets and a ServiceAccount."""
    core: Any = k8s.CoreV1Api(api_client)
    for secret in ("agent-token", "other-token"):
        core.create_namespaced_secret(
            namespace, {"metadata": {"name": secret}, "stringData": {"token": secret}}
        )
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "collector"}})


# A fleet writer: ServiceAccount `name`, allowed to write fleets and nothing else; its
# kubeconfig and an ApiClient authenticating as it.
Author = Callable[[str], tuple[Path, Any]]


@pytest.fixture
def author(
    api_client: Any, cluster: LocalCluster, namespace: str, tmp_path: Path
) -> Iterator[Author]:
    clients: list[Any] = []

    def make(name: str) -> tuple[Path, Any]:
        token = user(api_client, namespace, name)
        grant(api_client, namespace, name, FLEET_WRITER)
        kubeconfig = token_kubeconfig(cluster, token, tmp_path / f"{name}.kubeconfig")
        clients.append(user_api_client(kubeconfig))
        return kubeconfig, clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.mark.usefixtures("operator", "objects")
def test_a_fleet_naming_a_secret_needs_an_author_who_may_read_it(
    api_client: Any, author: Author, namespace: str, tmp_path: Path
) -> None:
    kubeconfig, alice = author("alice")
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(yaml.safe_dump(_fleet("tokens", authSecretRef={"name": "agent-token"})))
    kubectl = [str(binaries.find("kubectl")), f"--kubeconfig={kubeconfig}", "-n", namespace]
    kubectl += ["apply", "-f"]

    applied = subprocess.run([*kubectl, str(manifest)], capture_output=True, text=True, check=False)
    assert applied.returncode != 0
    assert applied.stderr.startswith("Error from server: error when creating")
    assert (
        f"denied the request: {username(namespace, 'alice')} cannot get secrets agent-token "
        f"in namespace {namespace}: spec.authSecretRef names a Secret you may not read"
    ) in applied.stderr
    co: Any = k8s.CustomObjectsApi(api_client)
    assert co.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []

    grant_role(api_client, namespace, "alice", "read-agent-token", _read_secret("agent-token"))

    def apply() -> bool | None:
        done = subprocess.run(
            [*kubectl, str(manifest)], capture_output=True, text=True, check=False
        )
        return True if done.returncode == 0 else None

    eventually("alice's fleet to be admitted once she may read the Secret", apply)
    stored = co.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tokens")
    assert stored["spec"]["authSecretRef"] == {"name": "agent-token", "key": "token"}

    # The grant names one Secret: another one is still refused.
    status, message = _refusal(
        _create, alice, namespace, _fleet("other", authSecretRef={"name": "other-token"})
    )
    assert status == 403
    assert f"cannot get secrets other-token in namespace {namespace}" in message


@pytest.mark.usefixtures("operator", "objects")
def test_a_template_mode_fleet_needs_an_author_who_may_create_the_workload(
    author: Author, api_client: Any, namespace: str
) -> None:
    _, bob = author("bob")
    me = username(namespace, "bob")

    status, message = _refusal(_create, bob, namespace, _fleet("plain", template={"image": IMAGE}))
    assert status == 403
    assert message.endswith(
        f"denied the request: {me} cannot create deployments.apps in namespace {namespace}: "
        "spec.template has the operator create a Deployment for you"
    )

    deployments = [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create"]}]
    grant_role(api_client, namespace, "bob", "create-deployments", deployments)
    eventually(
        "bob's template-mode fleet to be admitted once he may create Deployments",
        lambda: _admitted(_create, bob, namespace, _fleet("plain", template={"image": IMAGE})),
    )

    # Deployments, not any workload: the kind is what is asked for.
    daemons = _fleet("daemons", template={"image": IMAGE, "kind": "DaemonSet"})
    status, message = _refusal(_create, bob, namespace, daemons)
    assert status == 403
    assert f"{me} cannot create daemonsets.apps in namespace {namespace}" in message

    # A ServiceAccount he may not get, even though he may create the Deployment.
    as_collector = _fleet(
        "as-collector", template={"image": IMAGE, "serviceAccountName": "collector"}
    )
    status, message = _refusal(_create, bob, namespace, as_collector)
    assert status == 403
    assert message.endswith(
        f"{me} cannot get serviceaccounts collector in namespace {namespace}: "
        "spec.template.serviceAccountName names a ServiceAccount you may not get"
    )
    accounts = [
        {
            "apiGroups": [""],
            "resources": ["serviceaccounts"],
            "verbs": ["get"],
            "resourceNames": ["collector"],
        }
    ]
    grant_role(api_client, namespace, "bob", "get-collector-account", accounts)
    eventually(
        "bob's fleet running as `collector` to be admitted once he may get it",
        lambda: _admitted(_create, bob, namespace, as_collector),
    )


@pytest.mark.usefixtures("operator", "objects")
def test_updates_are_checked_for_what_they_change_and_nothing_else(
    api_client: Any, author: Author, namespace: str
) -> None:
    """carol may write fleets and nothing more; the admin wrote this one, naming a Secret
    and a workload she could not have named herself."""
    template = {"image": IMAGE, "serviceAccountName": "collector"}
    _create(
        api_client,
        namespace,
        _fleet("shared", authSecretRef={"name": "agent-token"}, template=template),
    )
    _, carol = author("carol")
    co: Any = k8s.CustomObjectsApi(carol)

    def patch(spec: dict[str, Any]) -> None:
        co.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "shared", {"spec": spec}
        )

    # A config change: admitted.
    patch({"config": {"inline": CONFIG_V2}})

    # A GitOps re-apply: the whole object written back, spec unchanged, a label added
    # (again on a 409: the operator writes the fleet too).
    def reapply() -> bool | None:
        current = co.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "shared")
        current["metadata"].setdefault("labels", {})["team"] = "observability"
        try:
            co.replace_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "shared", current
            )
        except k8s.ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return True

    eventually("carol's re-apply to be stored", reapply, timeout=20)
    stored = co.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "shared")
    assert stored["spec"]["config"]["inline"] == CONFIG_V2
    assert stored["metadata"]["labels"] == {"team": "observability"}

    # Another Secret: checked (and in template mode, the workload it goes into).
    status, message = _refusal(patch, {"authSecretRef": {"name": "other-token"}})
    assert status == 403
    assert f"{username(namespace, 'carol')} cannot get secrets other-token" in message
    assert "cannot create deployments.apps" in message

    # Another image, running as `collector`: checked.
    status, message = _refusal(patch, {"template": {"image": "attacker.example/miner:1"}})
    assert status == 403
    assert f"cannot create deployments.apps in namespace {namespace}" in message
    assert f"cannot get serviceaccounts collector in namespace {namespace}" in message

    after = co.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "shared")
    assert after["spec"]["authSecretRef"]["name"] == "agent-token"
    assert after["spec"]["template"]["image"] == IMAGE
    assert after["metadata"]["generation"] == stored["metadata"]["generation"]


def test_a_review_the_apiserver_does_not_answer_refuses_the_fleet(
    crds: None, api_client: Any, cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """An operator whose credentials may do everything it needs but ask
    SubjectAccessReviews: every review fails (403 from the apiserver). Fail closed: a fleet
    naming a Secret is refused, saying it could not be checked; one naming nothing is
    still admitted. (The module's operator, if running, admits both: the admin may.)"""
    everything_but_reviews = [
        {
            "apiGroups": [
                "",
                "apps",
                GROUP,
                "apiextensions.k8s.io",
                "admissionregistration.k8s.io",
                "authentication.k8s.io",
                "coordination.k8s.io",
                "events.k8s.io",
                "kopf.dev",
            ],
            "resources": ["*"],
            "verbs": ["*"],
        }
    ]
    token = user(api_client, namespace, "operator")
    grant(api_client, namespace, "operator", everything_but_reviews, cluster=True)
    kubeconfig = token_kubeconfig(cluster, token, tmp_path / "operator.kubeconfig")
    core: Any = k8s.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "agent-token"}, "stringData": {"token": "t"}}
    )
    try:
        with _webhook_operator(api_client, kubeconfig, tmp_path / "op", f"closed-{namespace}"):
            named = _fleet("tokens", authSecretRef={"name": "agent-token"})
            status, message = _refusal(_create, api_client, namespace, named)
            assert status == 503
            assert "could not check that" in message
            assert (
                f"may get secrets agent-token in namespace {namespace} "
                "(the apiserver answered 403 Forbidden)"
            ) in message
            assert "refused until it can be checked" in message
            _create(api_client, namespace, _fleet("plain"))
    finally:
        revoke_cluster_grant(api_client, namespace, "operator")
