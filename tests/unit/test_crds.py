"""The committed CRDs are exactly what the typed models generate, and the models read the
examples users write."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from opamp_operator.api.crd import render_all
from opamp_operator.api.models import CollectorFleet, CollectorFleetSpec, DriftPolicy
from opamp_operator.api.reference import render_reference

REPO = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    """What `opamp-operator crds --check` compares (its exit codes: the tools tier,
    tests/tools/test_crds_cli.py), in process."""
    for name, text in render_all().items():
        assert (REPO / "deploy/crds" / name).read_text() == text, name
    assert (REPO / "docs/reference.md").read_text() == render_reference()


def _walk(schema: object, path: str = "") -> list[str]:
    """Every place that breaks the structural-schema rules the apiserver enforces."""
    bad: list[str] = []
    if isinstance(schema, dict):
        for key in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            if key in schema and not path.endswith("properties"):
                bad.append(f"{path}.{key}")
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            # OpenAPI v3.0 (what CRDs speak) has booleans here; JSON Schema's numbers
            # are refused by the apiserver.
            if key in schema and not isinstance(schema[key], bool):
                bad.append(f"{path}.{key}")
        for key, value in schema.items():
            bad += _walk(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            bad += _walk(value, f"{path}[{i}]")
    return bad


def test_generated_schema_is_structural() -> None:
    for text in render_all().values():
        crd = yaml.safe_load(text)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert _walk(schema) == []


def test_models_read_a_user_manifest() -> None:
    fleet = CollectorFleet.model_validate(
        {
            "apiVersion": "opampoperator.io/v1alpha1",
            "kind": "CollectorFleet",
            "metadata": {"name": "gateways", "namespace": "observability"},
            "spec": {
                "selector": {"matchLabels": {"app": "otel-gateway"}},
                "config": {"configMapRef": {"name": "gateway-config"}},
                "driftPolicy": "Remediate",
            },
        }
    )
    assert fleet.spec.config.config_map_ref is not None
    assert fleet.spec.config.config_map_ref.key == "collector.yaml"
    assert fleet.spec.drift_policy == DriftPolicy.REMEDIATE
    assert fleet.spec.heartbeat_interval_seconds is None  # the operator's default


def test_models_refuse_unknown_spec_fields() -> None:
    with pytest.raises(ValidationError, match="configmapRef"):
        CollectorFleetSpec.model_validate(
            {"selector": {"matchLabels": {"a": "b"}}, "config": {"configmapRef": {"name": "x"}}}
        )


def test_the_reference_names_every_spec_field_with_its_rules() -> None:
    text = render_reference()
    for field in (
        "`spec.steps[].percent`",
        "`spec.steps[].pause.untilPromoted`",
        "`spec.gates.applyTimeoutSeconds`",
        "`spec.template.image`",
        "`status.failingAgents[].reason`",
    ):
        assert field in text
    assert "a step is exactly one of agents, percent and selector" in text
    assert "`status.kopf" not in text
