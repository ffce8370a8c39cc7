"""Every read the shell makes of the cluster, off the event loop, with one rule for a
missing object: `None`, never an exception the caller has to recognise."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import GROUP, VERSION, CollectorFleetSpec
from opamp_operator.fleet.conditions import FleetProblem

AUTH_PROBLEM = "AuthSecretInvalid"

T = TypeVar("T")


def epoch(timestamp: Any) -> float:
    """An RFC 3339 time as Kubernetes writes it, in epoch seconds; 0.0 when absent."""
    if isinstance(timestamp, datetime):
        return timestamp.timestamp()
    if not timestamp:
        return 0.0
    try:
        return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def get_or_none(read: Callable[..., T], *args: Any) -> T | None:
    """`read(*args)`, or None when the apiserver answers 404."""
    try:
        return read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def config_map(namespace: str, name: str) -> Any:
    return get_or_none(k8s.CoreV1Api().read_namespaced_config_map, name, namespace)


def secret(namespace: str, name: str) -> Any:
    return get_or_none(k8s.CoreV1Api().read_namespaced_secret, name, namespace)


def controller_revision(namespace: str, name: str) -> Any:
    return get_or_none(k8s.AppsV1Api().read_namespaced_controller_revision, name, namespace)


def custom_object(namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    """A CollectorFleet or ConfigRollout as the apiserver has it."""
    api: Any = k8s.CustomObjectsApi()
    found: dict[str, Any] | None = get_or_none(
        api.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
    )
    return found


def custom_objects(namespace: str, plural: str) -> list[dict[str, Any]] | None:
    """Every object of `plural` in the namespace; None when its CRD is not installed."""
    api: Any = k8s.CustomObjectsApi()
    listed: dict[str, Any] | None = get_or_none(
        api.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
    )
    return None if listed is None else list(listed.get("items", []))


def config_map_value(namespace: str, name: str, key: str) -> str | None:
    """One key of a ConfigMap; None when the ConfigMap or the key is missing."""
    found = config_map(namespace, name)
    value = (found.data or {}).get(key) if found is not None else None
    return None if value is None else str(value)


def fleet_config_text(namespace: str, spec: CollectorFleetSpec) -> str:
    """The Collector config a fleet names, inline or from its ConfigMap."""
    source = spec.config
    if source.inline is not None:
        return source.inline
    ref = source.config_map_ref
    if ref is None:
        raise FleetProblem("InvalidConfig", "spec.config has neither inline nor configMapRef")
    found = config_map(namespace, ref.name)
    if found is None:
        raise FleetProblem("InvalidConfig", f"ConfigMap {namespace}/{ref.name} not found")
    data = found.data or {}
    if ref.key not in data:
        raise FleetProblem(
            "InvalidConfig", f"ConfigMap {namespace}/{ref.name} has no key {ref.key!r}"
        )
    return str(data[ref.key])


def fleet_token_digest(namespace: str, spec: CollectorFleetSpec) -> bytes | None:
    """sha256 of the fleet's agent token. Only `get` on the one Secret named: the
    operator never lists Secrets."""
    ref = spec.auth_secret_ref
    if ref is None:
        return None
    where = f"Secret {namespace}/{ref.name}"
    try:
        found = secret(namespace, ref.name)
    except ApiException as exc:
        if exc.status == 403:
            raise FleetProblem(AUTH_PROBLEM, f"the operator may not read {where}") from None
        raise
    if found is None:
        raise FleetProblem(AUTH_PROBLEM, f"{where} not found")
    data = found.data or {}
    if ref.key not in data:
        raise FleetProblem(AUTH_PROBLEM, f"{where} has no key {ref.key!r}")
    token = base64.b64decode(data[ref.key]).decode(errors="replace").strip()
    if not token:
        raise FleetProblem(AUTH_PROBLEM, f"{where} key {ref.key!r} is empty")
    return hashlib.sha256(token.encode()).digest()
