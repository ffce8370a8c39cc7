"""The manifests in examples/ are what the models accept, their Collector configs pass the
operator's own validation, and their rollout policies turn into planner policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opamp_operator.api.models import CollectorFleet, ConfigRollout
from opamp_operator.api.policy import to_policy
from opamp_operator.fleet.validation import validate_config
from opamp_operator.standalone.fleets import parse_fleets

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


def test_there_are_examples_of_both_kinds() -> None:
    kinds = {doc["kind"] for _, doc in _documents()}
    assert {"CollectorFleet", "ConfigRollout"} <= kinds


@pytest.mark.parametrize(("name", "doc"), _documents(), ids=[n for n, _ in _documents()])
def test_example_is_valid(name: str, doc: dict[str, Any]) -> None:
    configs = {
        d["metadata"]["name"]: d["data"] for _, d in _documents() if d["kind"] == "ConfigMap"
    }
    if doc["kind"] == "CollectorFleet":
        fleet = CollectorFleet.model_validate(doc)
        source = fleet.spec.config
        if source.inline is not None:
            text = source.inline
        else:
            assert source.config_map_ref is not None
            text = configs[source.config_map_ref.name][source.config_map_ref.key]
        assert validate_config(text) == [], name
    elif doc["kind"] == "ConfigRollout":
        rollout = ConfigRollout.model_validate(doc)
        policy = to_policy(rollout.spec)
        assert len(policy.steps) == len(rollout.spec.steps)
        fleets = {d["metadata"]["name"] for _, d in _documents() if d["kind"] == "CollectorFleet"}
        assert rollout.spec.fleet_ref.name in fleets, "an example rollout of a missing fleet"
    else:
        assert doc["kind"] == "ConfigMap"


def test_the_serve_example_is_a_staged_fleets_file() -> None:
    path = EXAMPLES / "serve" / "fleets.yaml"
    (fleet,) = parse_fleets(path.read_text(), path.parent)
    assert fleet.rollout is not None
    assert len(to_policy(fleet.rollout).steps) == 3
    assert fleet.package is not None
    assert validate_config(fleet.config.files[""].body.decode()) == []
