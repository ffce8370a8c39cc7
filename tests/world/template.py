"""Stand in for the kubelet of a template-mode pod: kwok runs no containers, so the test
runs the pod's container itself — the real opampsupervisor with the supervisor config
the operator rendered, and the environment the kubelet would give that container."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from world import binaries
from world.collector import Agent
from world.processes import StartupError, spawn


def container_env(pod: Mapping[str, Any], api_client: Any) -> dict[str, str]:
    """The environment of the pod's container, resolved as the kubelet resolves it: values,
    downward API fieldRefs against the pod (API JSON, camelCase) and secretKeyRefs."""
    core: Any = k8s.CoreV1Api(api_client)
    (container,) = pod["spec"]["containers"]
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "fieldRef" in source:
            value: Any = pod
            for part in source["fieldRef"]["fieldPath"].split("."):
                value = value[part]
            env[entry["name"]] = str(value)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = core.read_namespaced_secret(ref["name"], pod["metadata"]["namespace"])
            env[entry["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
        else:
            raise ValueError(f"cannot resolve env {entry}")
    return env


def start_pod_supervisor(
    supervisor_yaml: str,
    pod: Mapping[str, Any],
    env: Mapping[str, str],
    workdir: Path,
    *,
    health_url: str | None = None,
    restarts: int = 3,
    timeout: float = 120.0,
) -> Agent:
    """opampsupervisor with the rendered config, changed only where the image's paths do
    not exist here: the Collector executable (otelcol-opamp from the test world) and the
    storage directory (the emptyDir). Everything else, the endpoint and the ${env:...}
    references included, is as rendered and expanded by the supervisor itself from `env`
    (see container_env).

    A container that exits before it connects is restarted, as the kubelet restarts it
    (restartPolicy Always): under load opampsupervisor v0.149.0 can lose the output of
    `<collector> featuregate` (its one-shot runner waits on the process before reading
    its pipes) and then bootstraps the Collector with `nop` components, which the test
    world's Collector does not include, so that start fails.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(supervisor_yaml)
    config["agent"]["executable"] = str(binaries.find("otelcol-opamp"))
    config["storage"]["directory"] = str(workdir / "storage")
    path = workdir / "supervisor.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    name = f"supervisor-{pod['metadata']['name']}"
    log = workdir / f"{name}.log"
    for _ in range(restarts + 1):
        offset = log.stat().st_size if log.exists() else 0
        record, proc = spawn(
            name,
            [binaries.find("opampsupervisor"), "--config", path],
            workdir,
            env=dict(env),
        )
        if _connects(proc, log, offset, timeout):
            return Agent(record, proc, workdir, health_url)
    raise StartupError(
        f"{name} exited {restarts + 1} times before connecting; log {log}:\n"
        + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    )


def _connects(proc: subprocess.Popen[bytes], log: Path, offset: int, timeout: float) -> bool:
    """True once the supervisor says it connected to the OpAMP server, False if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(offset)
            if b"Connected to the server" in f.read():
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    raise StartupError(f"no connection from the supervisor within {timeout}s; log {log}")
