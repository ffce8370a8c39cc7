"""`serve`'s fleets file: which fleet an agent gets, by attributes and by certificate."""

from __future__ import annotations

from pathlib import Path

import pytest

from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import AgentRecord, Transport
from opamp_operator.standalone.fleets import FileFleets, Fleet, FleetFileError, parse_fleets

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


def test_an_agent_s_fleet_is_found_again_when_its_description_identity_or_the_file_change(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fleets.yaml"
    path.write_text(FILE)
    fleets = FileFleets(path)
    agent = AgentRecord(bytes(range(16)), Transport.WEBSOCKET, 0.0, 0.0)
    agent.description = pb.AgentDescription()
    attribute = agent.description.identifying_attributes.add(key="deployment.environment")
    attribute.value.string_value = "prod"
    assert _name(fleets.fleet_for(agent)) == "prod"
    assert _name(fleets.fleet_for(agent)) == "prod"  # the kept answer
    agent.identity = AgentIdentity(certificate=("dc-a.example",))
    assert _name(fleets.fleet_for(agent)) == "dc-a"
    agent.identity = None
    assert _name(fleets.fleet_for(agent)) == "prod"
    path.write_text(FILE.replace("deployment.environment: prod", "deployment.environment: dev"))
    assert fleets.reload()
    assert fleets.fleet_for(agent) is None
    agent.description = pb.AgentDescription()  # a new report: nothing selects it
    assert fleets.fleet_for(agent) is None


def _name(fleet: Fleet | None) -> str | None:
    return fleet.name if fleet is not None else None
