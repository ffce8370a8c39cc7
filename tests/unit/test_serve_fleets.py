"""`serve`'s fleets file: which fleet an agent gets, by attributes and by certificate."""

from __future__ import annotations

from pathlib import Path

import pytest

from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.standalone.fleets import FleetFileError, parse_fleets

FILE = """
fleets:
  - name: dc-a
    certificateNames: [dc-a.example]
    selector: {}
    config: "receivers: {}"
  - name: prod
    selector: {deployment.environment: prod}
    config: "receivers: {}"
"""


def test_a_certificate_fleet_needs_a_verified_name_attributes_cannot_claim() -> None:
    dc_a, prod = parse_fleets(FILE, Path("."))
    assert dc_a.certificate_names == frozenset({"dc-a.example"})
    proved = AgentIdentity(certificate=("collector-7", "dc-a.example"))
    assert dc_a.matches({}, proved)
    assert not dc_a.matches({}, AgentIdentity())
    assert not dc_a.matches({"dc-a.example": "x"}, AgentIdentity(certificate=("other",)))
    assert prod.matches({"deployment.environment": "prod"}, AgentIdentity())


@pytest.mark.parametrize("names", ["dc-a", [""], [1], {"a": "b"}])
def test_certificate_names_must_be_a_list_of_names(names: object) -> None:
    text = FILE.replace("[dc-a.example]", repr(names) if not isinstance(names, str) else names)
    with pytest.raises(FleetFileError, match="certificateNames must be a list of names"):
        parse_fleets(text, Path("."))
