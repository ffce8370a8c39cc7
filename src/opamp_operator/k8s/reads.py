"""Every read the shell makes of the cluster, off the event loop, with one rule for a
missing object: `None`, never an exception the caller has to recognise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import GROUP, VERSION

T = TypeVar("T")


def get_or_none(read: Callable[..., T], *args: Any) -> T | None:
    """`read(*args)`, or None when the apiserver answers 404."""
    try:
        return read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def aget_or_none(read: Callable[..., T], *args: Any) -> T | None:
    """`get_or_none` in a worker thread: the kubernetes client blocks."""
    return await asyncio.to_thread(get_or_none, read, *args)


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
