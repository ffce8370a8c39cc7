"""CustomResourceDefinitions generated from the typed models.

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references
inlined, `anyOf [X, null]` of optional fields reduced to X (absence is how a CRD says
optional), titles dropped, free-form objects marked `x-kubernetes-preserve-unknown-fields`,
and CEL rules added where one field excludes another.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from opamp_operator.api.models import (
    FLEETS_PLURAL,
    GROUP,
    ROLLOUTS_PLURAL,
    VERSION,
    CollectorFleetSpec,
    CollectorFleetStatus,
    ConfigRolloutSpec,
    ConfigRolloutStatus,
)

Schema = dict[str, Any]

# Extra validation the apiserver runs (CEL), keyed by the JSON path of an object schema.
_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    ("spec", "config"): [
        {
            "rule": "has(self.inline) != has(self.configMapRef)",
            "message": "set exactly one of config.inline and config.configMapRef",
        }
    ],
    ("spec", "selector"): [
        {
            "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0)"
            " || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
            "message": "selector must select something: an empty selector would claim every pod",
        }
    ],
    ("spec", "steps", "[]"): [
        {
            "rule": "[has(self.agents), has(self.percent), has(self.selector)]"
            ".filter(x, x).size() == 1",
            "message": "a step is exactly one of agents, percent and selector",
        },
        {
            # `minimum` alone lets a 0 through (seen on kube-apiserver 1.34).
            "rule": "!has(self.percent) || self.percent > 0.0",
            "message": "percent must be more than 0",
        },
    ],
    ("spec", "steps", "[]", "pause"): [
        {
            "rule": "has(self.seconds) != (has(self.untilPromoted) && self.untilPromoted)",
            "message": "a pause is either seconds or untilPromoted: true",
        }
    ],
    ("spec", "steps", "[]", "selector"): [
        {
            "rule": "(has(self.attributes) ? size(self.attributes) : 0)"
            " + (has(self.podLabels) ? size(self.podLabels) : 0) > 0",
            "message": "a step selector must name at least one attribute or pod label",
        }
    ],
}
# Schema keywords added at a path beyond what the models say.
_EXTRA: dict[tuple[str, ...], dict[str, Any]] = {
    ("status", "conditions"): {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
    # Objects a user may leave out whose fields have defaults: the apiserver then fills
    # them in, so `kubectl get -o yaml` shows the preflight settings in force.
    ("spec", "preflight"): {"default": {}},
    # A new object reads back with observedGeneration 0 until the operator writes its
    # status: Flux's kstatus then says InProgress, where an object without status would
    # be Current (healthy) before the operator has looked at it.
    ("status",): {"default": {"observedGeneration": 0}},
}


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline a $ref (keeping what stands beside it: default, description)."""
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].rsplit("/", 1)[1]])
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        return _resolve({**target, **siblings}, defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            return _resolve({**options[0], **merged}, defs)
    return schema


def structural(schema: Schema, defs: dict[str, Schema], path: tuple[str, ...] = ()) -> Schema:
    """A JSON Schema (pydantic's dialect) as a Kubernetes structural schema."""
    schema = _resolve(schema, defs)
    out: Schema = {}
    for key, value in schema.items():
        if key in ("title", "$defs") or (key == "default" and not _simple(value)):
            continue
        if key == "properties":
            out["properties"] = {
                name: structural(sub, defs, (*path, name)) for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = structural(value, defs, (*path, "[]"))
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is not False:
                out["additionalProperties"] = structural(value, defs, (*path, "{}"))
        elif key == "const":
            out["enum"] = [value]
        elif key == "description":
            out["description"] = " ".join(value.split())
        else:
            out[key] = value
    return _finish(out, path)


def _finish(out: Schema, path: tuple[str, ...]) -> Schema:
    """Free-form objects keep unknown fields; the rules and extras for this path join."""
    if out.get("type") == "object" and not ({"properties", "additionalProperties"} & out.keys()):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("required") == []:
        del out["required"]
    if path in _RULES:
        out["x-kubernetes-validations"] = _RULES[path]
    out.update(_EXTRA.get(path, {}))
    return out


def _simple(value: Any) -> bool:
    """Defaults the apiserver can apply: scalars (not objects, which pydantic fills in)."""
    return isinstance(value, (str, int, float, bool))


def _schema_of(model: type[BaseModel], path: tuple[str, ...]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), path)


def _ready_column() -> dict[str, str]:
    return {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    }


def _crd(
    kind: str,
    plural: str,
    *,
    short_names: list[str],
    description: str,
    spec_model: type[BaseModel],
    status_model: type[BaseModel],
    columns: list[dict[str, str]],
) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
                "shortNames": short_names,
                "categories": ["opamp"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        _ready_column(),
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _schema_of(spec_model, ("spec",)),
                                "status": _schema_of(status_model, ("status",)),
                            },
                        }
                    },
                }
            ],
        },
    }


def collector_fleet_crd() -> Schema:
    return _crd(
        "CollectorFleet",
        FLEETS_PLURAL,
        short_names=["cfleet", "cfl"],
        description="A fleet of Collectors managed over OpAMP.",
        spec_model=CollectorFleetSpec,
        status_model=CollectorFleetStatus,
        columns=[
            {"name": "Agents", "type": "integer", "jsonPath": ".status.agentsConnected"},
            {"name": "Healthy", "type": "integer", "jsonPath": ".status.healthy"},
            {"name": "Drifted", "type": "integer", "jsonPath": ".status.drifted"},
            {"name": "Version", "type": "string", "jsonPath": ".status.targetVersion"},
            {"name": "Outdated", "type": "integer", "jsonPath": ".status.agentsOutdated"},
        ],
    )


def config_rollout_crd() -> Schema:
    return _crd(
        "ConfigRollout",
        ROLLOUTS_PLURAL,
        short_names=["crollout", "cro"],
        description="How a CollectorFleet's config changes reach its agents: staged, gated "
        "on what the agents report, rolled back on failure.",
        spec_model=ConfigRolloutSpec,
        status_model=ConfigRolloutStatus,
        columns=[
            {"name": "Fleet", "type": "string", "jsonPath": ".spec.fleetRef.name"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Step", "type": "integer", "jsonPath": ".status.currentStep"},
            {"name": "Desired", "type": "string", "jsonPath": ".status.desiredRevision"},
            {"name": "Stable", "type": "string", "jsonPath": ".status.stableRevision"},
        ],
    )


def render_all() -> dict[str, str]:
    """File name → YAML text of every CRD, as committed under deploy/crds/."""
    header = (
        "# Generated by `opamp-operator crds` from src/opamp_operator/api/models.py. Do not edit.\n"
    )
    return {
        f"{crd['metadata']['name']}.yaml": header + yaml.safe_dump(crd, sort_keys=False, width=100)
        for crd in (collector_fleet_crd(), config_rollout_crd())
    }
