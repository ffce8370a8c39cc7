"""The committed CRDs are exactly what the typed models generate, and the models read the
examples users write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from opamp_operator.api.crd import render_all
from opamp_operator.api.models import CollectorFleet, CollectorFleetSpec, DriftPolicy
from opamp_operator.api.reference import render_reference

REPO = Path(__file__).resolve().parents[2]


def _crds_check(out: Path, reference: Path) -> subprocess.CompletedProcess[str]:
    """`opamp-operator crds --check`, as CI runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "opamp_operator.cli",
            "crds",
            "--check",
            f"--out={out}",
            f"--reference={reference}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_committed_crds_match_the_models() -> None:
    result = _crds_check(REPO / "deploy/crds", REPO / "docs/reference.md")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    for name, text in render_all().items():
        (tmp_path / name).write_text(text.replace("Healthy", "Happy"))
    reference = tmp_path / "reference.md"
    reference.write_text(render_reference())
    result = _crds_check(tmp_path, reference)
    assert result.returncode == 1
    assert "stale CRDs" in result.stderr


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
    assert fleet.spec.heartbeat_interval_seconds == 30


def test_models_refuse_unknown_spec_fields() -> None:
    with pytest.raises(ValidationError, match="configmapRef"):
        CollectorFleetSpec.model_validate(
            {"selector": {"matchLabels": {"a": "b"}}, "config": {"configmapRef": {"name": "x"}}}
        )


def test_a_stale_reference_fails_the_check(tmp_path: Path) -> None:
    for name, text in render_all().items():
        (tmp_path / name).write_text(text)
    reference = tmp_path / "reference.md"
    reference.write_text(render_reference().replace("maxFailed", "maxFails"))
    result = _crds_check(tmp_path, reference)
    assert result.returncode == 1
    assert "reference.md" in result.stderr


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
