"""Config revisions of a fleet, kept as apps/v1 ControllerRevisions owned by the fleet.

A revision is a config, with the package the fleet names if it names one and the pod
template it renders in template mode (its hash is FleetRecord.revision_hash). Every
distinct revision a fleet has offered is kept byte for byte (bounded by
`revisionHistoryLimit`), so a rollback offers exactly what agents ran before and renders
the pods they ran in. This module
plans which revision objects to create and which to prune; the handlers do the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opamp_operator.api.models import API_VERSION, GROUP

FLEET_LABEL = f"{GROUP}/fleet"
HASH_ANNOTATION = f"{GROUP}/config-hash"


@dataclass(frozen=True)
class Revision:
    name: str
    revision: int
    config_hash: str


@dataclass(frozen=True)
class RevisionPlan:
    current: Revision
    create: bool
    prune: tuple[str, ...]


def revision_name(fleet: str, config_hash: str) -> str:
    """Stable per content: the same config always maps to the same object."""
    return f"{fleet}-{config_hash[:10]}"


def plan(fleet: str, existing: Sequence[Revision], config_hash: str, limit: int) -> RevisionPlan:
    """The revision for `config_hash` (reused, or next number) and what to prune.

    Returning to an older config reuses its object and moves it to the newest number, so
    the history is ordered by last use and pruning drops the least recently used.
    """
    top = max((r.revision for r in existing), default=0)
    same = next((r for r in existing if r.config_hash == config_hash), None)
    if same is not None and same.revision == top:
        current, create = same, False
    else:
        number = top + 1
        current = Revision(revision_name(fleet, config_hash), number, config_hash)
        create = same is None
    kept = sorted(
        [r for r in existing if r.config_hash != config_hash],
        key=lambda r: r.revision,
        reverse=True,
    )
    prune = tuple(r.name for r in kept[max(limit - 1, 0) :])
    return RevisionPlan(current, create, prune)


def revision_object(
    fleet: Mapping[str, Any],
    revision: Revision,
    config: str,
    version: str | None = None,
    template: str | None = None,
) -> dict[str, Any]:
    """The ControllerRevision: the config's bytes, with a package the fleet's
    spec.version as JSON (`version`), in template mode its spec.template as JSON
    (`template`), so a rollback offers the stable package and renders the stable pods."""
    meta = fleet["metadata"]
    data = {"config": config}
    if version is not None:
        data["version"] = version
    if template is not None:
        data["template"] = template
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": revision.name,
            "namespace": meta["namespace"],
            "labels": {FLEET_LABEL: meta["name"]},
            "annotations": {HASH_ANNOTATION: revision.config_hash},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "CollectorFleet",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": data,
        "revision": revision.revision,
    }


def parse(obj: Mapping[str, Any]) -> Revision:
    meta = obj["metadata"]
    return Revision(
        meta["name"], int(obj["revision"]), meta.get("annotations", {}).get(HASH_ANNOTATION, "")
    )
