"""A fleet's config revisions as ControllerRevisions: what revisions.py plans, done."""

from __future__ import annotations

import json
from typing import Any

import kopf
from kubernetes import client as k8s

from opamp_operator.k8s import revisions
from opamp_operator.k8s.state import FleetRecord


def ensure(body: kopf.Body, record: FleetRecord) -> tuple[str, bool]:
    """Keep the fleet's config as a ControllerRevision; returns its name and whether it
    was created now. Blocks: run it in a thread."""
    if record.config_text is None:
        raise ValueError("a fleet without a valid config has no revision")
    apps: Any = k8s.AppsV1Api()
    selector = f"{revisions.FLEET_LABEL}={record.name}"
    listed = apps.list_namespaced_controller_revision(record.namespace, label_selector=selector)
    existing = [revisions.parse(r.to_dict()) for r in listed.items]
    plan = revisions.plan(
        record.name, existing, record.revision_hash, record.spec.revision_history_limit
    )
    version = record.spec.version
    stored = (
        version.model_dump_json(by_alias=True, exclude_none=True)
        if version is not None and record.package is not None
        else None
    )
    template = record.spec.template
    pods = json.dumps(template.as_json(), sort_keys=True) if template is not None else None
    obj = revisions.revision_object(body, plan.current, record.config_text, stored, pods)
    if plan.create:
        apps.create_namespaced_controller_revision(record.namespace, obj)
    elif any(r.name == plan.current.name and r.revision != plan.current.revision for r in existing):
        # Back to an older config: its object moves to the newest number. Not a patch: the
        # apiserver re-encodes `data` on any update and then refuses it as changed
        # ("data: field is immutable"). The bytes are the same, so delete and create.
        apps.delete_namespaced_controller_revision(plan.current.name, record.namespace)
        apps.create_namespaced_controller_revision(record.namespace, obj)
    for name in plan.prune:
        apps.delete_namespaced_controller_revision(name, record.namespace)
    return plan.current.name, plan.create
