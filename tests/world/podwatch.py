"""Every change to some pods, seen as it happens: a list, then a watch resumed at its
resourceVersion (listed again when it is too old), in a thread until closed. Proofs that
something never happened in between (a gate never False, two operator pods never at
once) need every event, not polls."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

_WATCH: Any = k8s_watch.Watch  # untyped

LISTED = "LISTED"
"""The event type given to the pods the first list (and each re-list) finds."""


class PodWatch:
    """Calls `on_event(type, pod)` for each pod of `namespace` matching `selector`:
    LISTED for what a list finds, then the watch's ADDED, MODIFIED and DELETED."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        on_event: Callable[[str, Any], None],
        selector: str = "",
    ) -> None:
        self.core: Any = k8s.CoreV1Api(api_client)
        self.namespace = namespace
        self.selector = selector
        self.on_event = on_event
        self.listed = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # noqa: BLE001 - handed to close(), which raises it
            self.error = exc

    def _follow(self) -> None:
        version = None
        while not self._stop.is_set():
            if version is None:
                listing = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.selector
                )
                for pod in listing.items:
                    self.on_event(LISTED, pod)
                version = listing.metadata.resource_version
                self.listed.set()
            try:
                for event in _WATCH().stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=version,
                    timeout_seconds=2,
                ):
                    version = event["object"].metadata.resource_version
                    self.on_event(event["type"], event["object"])
            except k8s.ApiException as exc:
                if exc.status != 410:
                    raise
                version = None  # too old: list again

    def close(self) -> None:
        """Stop within one watch timeout; raise what stopped the watch early, if anything."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None:
            raise self.error
