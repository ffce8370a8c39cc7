"""Stand in for the kubelet of a template-mode pod: kwok runs no containers, so the test
runs the pod's container itself — the real opampsupervisor with the supervisor config
the operator rendered, the environment the kubelet would give that container, and the
pod's volumes as the kubelet would mount them (`PodVolumes`)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from world import binaries
from world.collector import Agent
from world.processes import StartupError, eventually, spawn

# The kubelet's token manager rewrites a projected token when 80% of its lifetime is gone
# (pkg/kubelet/token/token_manager.go, requiresRefresh), and at least once a day.
TOKEN_REFRESH_FRACTION = 0.8
TOKEN_MAX_AGE = 24 * 3600.0
# What a projected serviceAccountToken source without expirationSeconds gets.
DEFAULT_EXPIRATION = 3600
_FILE_REF = re.compile(r"\$\{file:([^}]+)\}")


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
            env[entry["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = core.read_namespaced_secret(ref["name"], pod["metadata"]["namespace"])
            env[entry["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
        else:
            raise ValueError(f"cannot resolve env {entry}")
    return env


def _field(pod: Mapping[str, Any], path: str) -> str:
    value: Any = pod
    for part in path.split("."):
        value = value[part]
    return str(value)


def atomic_write(directory: Path, payload: Mapping[str, bytes]) -> None:
    """Publish `payload` (file name -> content) in `directory` as the kubelet's AtomicWriter
    does (pkg/volume/util/atomic_writer.go): the content goes to a new timestamped
    directory, the `..data` symlink is swapped to it by a rename, and each visible file is
    a symlink `name -> ..data/name` made once. A reader of `directory/name` sees the old
    content or the new, never half of one; a watcher of `directory` sees `..data` change,
    never `name` itself."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    fresh.chmod(0o755)
    for name, content in payload.items():
        target = fresh / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o644)
    staged = directory / "..data_tmp"
    staged.unlink(missing_ok=True)
    os.symlink(fresh.name, staged)
    os.rename(staged, data)
    for name in payload:
        visible = directory / name.split("/", 1)[0]
        if not visible.is_symlink():
            os.symlink(f"..data/{name.split('/', 1)[0]}", visible)
    if old is not None and old != fresh.name:
        shutil.rmtree(directory / old, ignore_errors=True)


@dataclass
class _Token:
    """One serviceAccountToken source of a projected volume, and the token now on disk."""

    path: str
    audience: str | None
    expiration_seconds: int
    token: str = ""
    issued: float = 0.0
    expires: float = 0.0


@dataclass
class _Volume:
    name: str
    directory: Path
    payload: dict[str, bytes] = field(default_factory=dict)
    tokens: list[_Token] = field(default_factory=list)
    timer: threading.Timer | None = None


class PodVolumes:
    """The volumes of the pod's container, materialized under `root` as the kubelet
    would: emptyDir; configMap and secret items; projected sources, a serviceAccountToken
    among them — a TokenRequest for the pod's ServiceAccount bound to the pod itself, for
    the source's audience and expirationSeconds — and downwardAPI fieldRefs. Every
    volume but an emptyDir is written by `atomic_write`. Projected tokens are requested
    again and rewritten at 80% of their lifetime (`rotate_tokens` does it now)."""

    def __init__(self, pod: Mapping[str, Any], api_client: Any, root: Path) -> None:
        self.pod = pod
        self.core: Any = k8s.CoreV1Api(api_client)
        self.root = root
        (container,) = pod["spec"]["containers"]
        self.mounts: dict[str, str] = {}
        for mount in container.get("volumeMounts", []):
            if mount.get("subPath"):
                raise ValueError(f"subPath mounts are not stood in for: {mount}")
            self.mounts[mount["mountPath"].rstrip("/") or "/"] = mount["name"]
        specs = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        self._specs = {name: specs[name] for name in self.mounts.values()}
        self._volumes: dict[str, _Volume] = {}
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    def __enter__(self) -> PodVolumes:
        return self.mount()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def mount(self) -> PodVolumes:
        for name, spec in self._specs.items():
            volume = _Volume(name, self.root / "volumes" / name)
            self._volumes[name] = volume
            if "emptyDir" in spec:
                volume.directory.mkdir(parents=True, exist_ok=True)
                continue
            self._fill(volume, spec)
            with self._lock:
                self._issue(volume)
                atomic_write(volume.directory, volume.payload)
                self._schedule(volume)
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for volume in self._volumes.values():
                if volume.timer is not None:
                    volume.timer.cancel()

    def directory(self, name: str) -> Path:
        return self._volumes[name].directory

    def maps(self, container_path: str) -> bool:
        return self._mount_of(container_path) is not None

    def local(self, container_path: str) -> Path:
        """Where a path of the container is on this machine."""
        found = self._mount_of(container_path)
        if found is None:
            raise ValueError(f"{container_path} is on no volume of the container")
        mount_path, name = found
        rest = container_path[len(mount_path) :].lstrip("/")
        return self._volumes[name].directory / rest if rest else self._volumes[name].directory

    def _mount_of(self, path: str) -> tuple[str, str] | None:
        under = [
            (mount_path, name)
            for mount_path, name in self.mounts.items()
            if path == mount_path or path.startswith(mount_path.rstrip("/") + "/")
        ]
        return max(under, key=lambda m: len(m[0]), default=None)

    def tokens(self) -> dict[str, str]:
        """`<volume>/<path>` -> the projected token now on disk there."""
        with self._lock:
            return {f"{v.name}/{t.path}": t.token for v in self._volumes.values() for t in v.tokens}

    def rotate_tokens(self) -> dict[str, str]:
        """Request new tokens for every projected serviceAccountToken and write them, as
        the kubelet does at 80% of a token's lifetime; returns `tokens()`."""
        with self._lock:
            for volume in self._volumes.values():
                if volume.tokens:
                    self._issue(volume, force=True)
                    atomic_write(volume.directory, volume.payload)
                    self._schedule(volume)
        return self.tokens()

    def _fill(self, volume: _Volume, spec: Mapping[str, Any]) -> None:
        if "configMap" in spec:
            volume.payload = self._config_map(spec["configMap"])
        elif "secret" in spec:
            volume.payload = self._secret(spec["secret"])
        elif "projected" in spec:
            for source in spec["projected"]["sources"]:
                if "serviceAccountToken" in source:
                    sat = source["serviceAccountToken"]
                    volume.tokens.append(
                        _Token(
                            sat["path"],
                            sat.get("audience"),
                            int(sat.get("expirationSeconds") or DEFAULT_EXPIRATION),
                        )
                    )
                elif "configMap" in source:
                    volume.payload |= self._config_map(source["configMap"])
                elif "secret" in source:
                    volume.payload |= self._secret(source["secret"])
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"]["items"]:
                        value = _field(self.pod, item["fieldRef"]["fieldPath"])
                        volume.payload[item["path"]] = value.encode()
                else:
                    raise ValueError(f"projected source not stood in for: {source}")
        else:
            raise ValueError(f"volume not stood in for: {spec}")

    def _config_map(self, ref: Mapping[str, Any]) -> dict[str, bytes]:
        def read() -> Any:
            found = self._read(self.core.read_namespaced_config_map, ref["name"])
            return found or (ref.get("optional") and "optional")

        found = eventually(f"ConfigMap {ref['name']} to mount", read, timeout=30)
        data = {} if found == "optional" else dict(found.data or {})
        return _items(ref, {k: v.encode() for k, v in data.items()})

    def _secret(self, ref: Mapping[str, Any]) -> dict[str, bytes]:
        name = ref.get("secretName") or ref["name"]
        found = eventually(
            f"Secret {name} to mount",
            lambda: self._read(self.core.read_namespaced_secret, name),
            timeout=30,
        )
        data = {k: base64.b64decode(v) for k, v in (found.data or {}).items()}
        return _items(ref, data)

    def _read(self, read: Any, name: str) -> Any:
        try:
            return read(name, self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _issue(self, volume: _Volume, force: bool = False) -> None:
        """TokenRequest for each token source, bound to the pod (what the kubelet asks)."""
        account = self.pod["spec"].get("serviceAccountName") or "default"
        for token in volume.tokens:
            if token.token and not force:
                continue
            spec = k8s.V1TokenRequestSpec(
                audiences=[token.audience] if token.audience else [],
                expiration_seconds=token.expiration_seconds,
                bound_object_ref=k8s.V1BoundObjectReference(
                    kind="Pod",
                    api_version="v1",
                    name=self.pod["metadata"]["name"],
                    uid=self.pod["metadata"]["uid"],
                ),
            )
            issued = self.core.create_namespaced_service_account_token(
                account, self.namespace, k8s.AuthenticationV1TokenRequest(spec=spec)
            )
            token.token = issued.status.token
            token.issued = time.time()
            token.expires = issued.status.expiration_timestamp.timestamp()
            volume.payload[token.path] = token.token.encode()

    def _schedule(self, volume: _Volume) -> None:
        if not volume.tokens or self._stopped:
            return
        if volume.timer is not None:
            volume.timer.cancel()
        due = min(_refresh_due(t) for t in volume.tokens)
        timer = threading.Timer(max(due - time.time(), 0.0), self._refresh, [volume])
        timer.daemon = True
        volume.timer = timer
        timer.start()

    def _refresh(self, volume: _Volume) -> None:
        with self._lock:
            if self._stopped:
                return
            self._issue(volume, force=True)
            atomic_write(volume.directory, volume.payload)
            self._schedule(volume)


def _refresh_due(token: _Token) -> float:
    """When the kubelet requests a new token: 80% into its lifetime, or a day after it was
    issued, whichever comes first."""
    lifetime = token.expires - token.issued
    return min(token.issued + TOKEN_MAX_AGE, token.issued + TOKEN_REFRESH_FRACTION * lifetime)


def _items(ref: Mapping[str, Any], data: Mapping[str, bytes]) -> dict[str, bytes]:
    """A configMap / secret source's `items` (key -> path), or every key."""
    items = ref.get("items")
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items}


def _in_pod(value: Any, volumes: PodVolumes, key: str = "") -> Any:
    """The supervisor config with every path on one of the pod's volumes made a path on
    this machine: `${file:...}` references and `*_file` settings."""
    if isinstance(value, dict):
        return {k: _in_pod(v, volumes, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_pod(v, volumes, key) for v in value]
    if not isinstance(value, str):
        return value
    if key.endswith("_file") and volumes.maps(value):
        return str(volumes.local(value))

    def local(found: re.Match[str]) -> str:
        path = found.group(1)
        return f"${{file:{volumes.local(path)}}}" if volumes.maps(path) else found.group(0)

    return _FILE_REF.sub(local, value)


def start_pod_supervisor(
    supervisor_yaml: str,
    pod: Mapping[str, Any],
    env: Mapping[str, str],
    workdir: Path,
    *,
    health_url: str | None = None,
    restarts: int = 3,
    timeout: float = 120.0,
    volumes: PodVolumes | None = None,
    collector: str = "otelcol-opamp",
    agent_args: Sequence[str] = (),
) -> Agent:
    """opampsupervisor with the rendered config, changed only where the image's paths do
    not exist here: the Collector executable (`collector`, a binary of the test world:
    what the pod's image holds, otelcol-opamp unless told otherwise) and the
    paths on the pod's volumes — the storage directory (the emptyDir), and with `volumes`
    (mounted) every `${file:...}` and `*_file` path on them, the projected token and the
    CA among them. Everything else, the endpoint and the ${env:...} references included,
    is as rendered and expanded by the supervisor itself from `env` (see container_env).
    `agent_args` are added to the config's `agent.args` (flags for the Collector, its
    bootstrap run included).
    Starting it again with the same `workdir` and `volumes` is a container restart: the
    emptyDir, and so the agent's instance UID, is kept.

    A container that exits before it connects is restarted, as the kubelet restarts it
    (restartPolicy Always): under load opampsupervisor v0.149.0 can lose the output of
    `<collector> featuregate` (its one-shot runner waits on the process before reading
    its pipes) and then bootstraps the Collector with `nop` components, which the test
    world's Collector does not include, so that start fails.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(supervisor_yaml)
    storage = config["storage"]["directory"]
    if volumes is not None:
        config = _in_pod(config, volumes)
    config["agent"]["executable"] = str(binaries.find(collector))
    if agent_args:
        config["agent"]["args"] = [*config["agent"].get("args", []), *agent_args]
    config["storage"]["directory"] = str(
        volumes.local(storage)
        if volumes is not None and volumes.maps(storage)
        else workdir / "storage"
    )
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
