"""Active/standby for two operator replicas, on top of kopf peering.

kopf pauses the handlers of every replica that sees a live peer of higher *or equal*
priority, so identical replicas would all pause: each replica draws a random priority
at start, and the highest live one is active. kopf only pauses handlers; the OpAMP
server would keep taking agents that the paused replica's empty state cannot serve.
So the operator reads the same peering object and, while standby, fails /readyz (the
Service sends agents to the active replica only) and turns OpAMP connections away.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.k8s.reads import get_or_none

log = logging.getLogger(__name__)
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"


@dataclass(frozen=True)
class Peer:
    identity: str
    priority: int
    deadline: datetime


def parse_peers(status: Mapping[str, Any]) -> list[Peer]:
    """The peers in a (Cluster)KopfPeering status, as kopf writes them: identity →
    {priority, lifetime, lastseen}."""
    peers = []
    for identity, info in status.items():
        if not isinstance(info, Mapping):
            continue
        lastseen = info.get("lastseen")
        try:
            seen = datetime.fromisoformat(str(lastseen)) if lastseen else None
        except ValueError:
            seen = None
        if seen is None:
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
        peers.append(Peer(identity, int(info.get("priority", 0)), seen + lifetime))
    return peers


def is_active(peers: list[Peer], identity: str, now: datetime) -> bool:
    """kopf's rule, seen from outside: active when this replica has announced itself and
    no other live peer has a priority as high or higher."""
    own = next((p for p in peers if p.identity == identity and p.deadline > now), None)
    if own is None:
        return False
    return not any(
        p.identity != identity and p.deadline > now and p.priority >= own.priority for p in peers
    )


def new_identity() -> str:
    return f"{socket.gethostname()}/{secrets.token_hex(4)}"


def random_priority() -> int:
    return secrets.randbelow(2**31 - 2) + 1


class PeeringWatch:
    """Polls the peering object(s) and reports active/standby transitions."""

    def __init__(
        self,
        name: str,
        identity: str,
        namespaces: tuple[str, ...],
        on_change: Callable[[bool], None],
        interval: float = 2.0,
    ) -> None:
        self.name = name
        self.identity = identity
        self.namespaces = namespaces
        self.on_change = on_change
        self.interval = interval
        self.active: bool | None = None

    def ensure(self) -> None:
        """Create the peering object(s) if missing: kopf only patches them."""
        api: Any = k8s.CustomObjectsApi()
        body: dict[str, Any] = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}"}
        try:
            if not self.namespaces:
                api.create_cluster_custom_object(
                    PEERING_GROUP,
                    PEERING_VERSION,
                    "clusterkopfpeerings",
                    {**body, "kind": "ClusterKopfPeering", "metadata": {"name": self.name}},
                )
            for ns in self.namespaces:
                try:
                    api.create_namespaced_custom_object(
                        PEERING_GROUP,
                        PEERING_VERSION,
                        ns,
                        "kopfpeerings",
                        {**body, "kind": "KopfPeering", "metadata": {"name": self.name}},
                    )
                except ApiException as exc:
                    if exc.status != 409:
                        raise
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _statuses(self) -> list[Mapping[str, Any]]:
        """The peering objects' statuses; none at all while any of them is missing."""
        api: Any = k8s.CustomObjectsApi()
        if not self.namespaces:
            found = [
                get_or_none(
                    api.get_cluster_custom_object,
                    PEERING_GROUP,
                    PEERING_VERSION,
                    "clusterkopfpeerings",
                    self.name,
                )
            ]
        else:
            found = [
                get_or_none(
                    api.get_namespaced_custom_object,
                    PEERING_GROUP,
                    PEERING_VERSION,
                    ns,
                    "kopfpeerings",
                    self.name,
                )
                for ns in self.namespaces
            ]
        if any(obj is None for obj in found):
            return []
        return [obj.get("status") or {} for obj in found if obj is not None]

    async def check(self) -> bool:
        statuses = await asyncio.to_thread(self._statuses)
        now = datetime.now(UTC)
        active = bool(statuses) and all(
            is_active(parse_peers(s), self.identity, now) for s in statuses
        )
        if active != self.active:
            log.info("peering %s: this replica is %s", self.name, "active" if active else "standby")
            self.active = active
            self.on_change(active)
        return active

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a flaky read must not end the watch; the next one decides
                log.exception("peering %s: reading the peering object failed", self.name)
            await asyncio.sleep(self.interval)
