"""The Helm chart on a cluster, as an operator's users install it: helm with a private
home, the chart's ServiceAccount as a kubeconfig (TokenRequest), and the clean-up that
`helm uninstall` leaves to the user (CRDs stay, by Helm's design)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import GROUP
from world import binaries
from world.cluster import LocalCluster
from world.fleets import release_fleets, remove_crd

CHART = binaries.REPO_ROOT / "deploy" / "helm" / "opamp-operator"
CRD_NAMES = (
    f"collectorfleets.{GROUP}",
    f"configrollouts.{GROUP}",
    "clusterkopfpeerings.kopf.dev",
    "kopfpeerings.kopf.dev",
)


def helm_environment(home: Path, kubeconfig: Path | None = None) -> dict[str, str]:
    """helm's environment: its cache, config and data under `home`, nothing of the user's."""
    env = {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return env


def run_helm(
    env: dict[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """helm with `env` (helm_environment); the caller judges the outcome."""
    return subprocess.run(
        [str(binaries.find("helm")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def helm(kubeconfig: Path, home: Path, *args: str, timeout: float = 180.0) -> str:
    """Run helm against `kubeconfig` with its home under `home`; a failure fails the test
    with helm's own message."""
    done = run_helm(helm_environment(home, kubeconfig), *args, timeout=timeout)
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def service_account_token(api_client: Any, name: str, namespace: str) -> str:
    """A one-hour token of a ServiceAccount (TokenRequest API), as its pod would get."""
    core: Any = k8s.CoreV1Api(api_client)
    request = core.create_namespaced_service_account_token(
        name,
        namespace,
        k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    token: str = request.status.token
    return token


def token_kubeconfig(cluster: LocalCluster, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates with `token` and nothing else."""
    ca = (cluster.pki_dir / "ca.crt").read_bytes()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority-data": base64.b64encode(ca).decode(),
                        },
                    }
                ],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": "local", "user": "operator"}}
                ],
                "current-context": "operator",
            }
        )
    )
    path.chmod(0o600)
    return path


def args_with_mounted_secrets(
    api_client: Any, pod: Any, container: Any, namespace: str, root: Path
) -> list[str]:
    """The container's args with every path on one of its Secret volumes made a path under
    `root`, where that Secret's keys are written as the kubelet would mount them: the chart's
    own arguments, run as a process here."""
    core: Any = k8s.CoreV1Api(api_client)
    secrets = {v.name: v.secret.secret_name for v in pod.volumes if v.secret is not None}
    args: list[str] = list(container.args)
    for mount in container.volume_mounts or ():
        if mount.name not in secrets:
            continue
        local = root / mount.name
        local.mkdir(parents=True, exist_ok=True)
        data = core.read_namespaced_secret(secrets[mount.name], namespace).data or {}
        for key, value in data.items():
            (local / key).write_bytes(base64.b64decode(value))
        prefix = mount.mount_path.rstrip("/") + "/"
        args = [a.replace(prefix, f"{local}/") if a.startswith(prefix) else a for a in args]
    return args


def remove_chart_crds(api_client: Any) -> None:
    """What `helm uninstall` leaves: the CRDs (fleets released of their finalizers first,
    as no operator is left to do it)."""
    release_fleets(api_client)
    remove_crd(api_client)
    ext: Any = k8s.ApiextensionsV1Api(api_client)
    for crd in CRD_NAMES[2:]:
        try:
            ext.delete_custom_resource_definition(crd)
        except ApiException as error:
            if error.status != 404:
                raise
