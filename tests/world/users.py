"""Real users of the test cluster: ServiceAccounts with tokens from the TokenRequest API,
given exactly the RBAC a test names, and kubeconfigs that authenticate as them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from world.chart import service_account_token

FLEET_READER_RULES = [
    {"apiGroups": ["opampoperator.io"], "resources": ["collectorfleets"], "verbs": ["get", "list"]}
]


def user(api_client: Any, namespace: str, name: str) -> str:
    """A ServiceAccount `name` in `namespace` with no grants; returns a token of it. Its
    username is system:serviceaccount:<namespace>:<name>."""
    core: Any = k8s.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    return service_account_token(api_client, name, namespace)


def grant(
    api_client: Any,
    namespace: str,
    name: str,
    rules: list[dict[str, Any]],
    *,
    cluster: bool = False,
) -> None:
    """Give ServiceAccount `namespace/name` `rules`, in `namespace` or cluster-wide."""
    rbac: Any = k8s.RbacAuthorizationV1Api(api_client)
    role_name = f"{namespace}-{name}"
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    if cluster:
        rbac.create_cluster_role({"metadata": {"name": role_name}, "rules": rules})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": role_name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role_name,
                },
                "subjects": [subject],
            }
        )
        return
    rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [subject],
        },
    )


def revoke_cluster_grant(api_client: Any, namespace: str, name: str) -> None:
    rbac: Any = k8s.RbacAuthorizationV1Api(api_client)
    role_name = f"{namespace}-{name}"
    rbac.delete_cluster_role_binding(role_name)
    rbac.delete_cluster_role(role_name)


def username(namespace: str, name: str) -> str:
    """How the apiserver names ServiceAccount `namespace/name` (in reviews, messages)."""
    return f"system:serviceaccount:{namespace}:{name}"


def grant_role(
    api_client: Any, namespace: str, name: str, role: str, rules: list[dict[str, Any]]
) -> None:
    """One more Role `role` in `namespace` with `rules`, bound to ServiceAccount
    `namespace/name`: grants add up, one per call (`grant` gives a user one Role)."""
    rbac: Any = k8s.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )


def user_api_client(kubeconfig: Path) -> Any:
    """A kubernetes ApiClient that authenticates as the kubeconfig's user (close it)."""
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
