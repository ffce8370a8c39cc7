"""The operator's OpAMP authenticator: fleet tokens identify fleets, nothing else passes."""

from __future__ import annotations

import hashlib

import pytest

from opamp_operator.api.models import CollectorFleetSpec
from opamp_operator.fleet.mapping import FleetSelector
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.server.app import Credentials, UnauthorizedError


def _fleet(name: str, created: float, token: str | None) -> FleetRecord:
    spec = CollectorFleetSpec.model_validate(
        {"selector": {"matchLabels": {"app": name}}, "config": {"inline": "receivers: {}"}}
    )
    record = FleetRecord("obs", name, f"uid-{name}", 1, FleetSelector("obs", name, created), spec)
    record.token_digest = hashlib.sha256(token.encode()).digest() if token else None
    return record


@pytest.fixture
def state() -> OperatorState:
    fleets = [_fleet("a", 1.0, "tok-a"), _fleet("b", 2.0, "tok-b"), _fleet("open", 0.0, None)]
    return OperatorState(fleets={f.key: f for f in fleets})


def test_a_token_names_its_fleet(state: OperatorState) -> None:
    assert state.authenticate(Credentials("Bearer tok-a")) == "obs/a"
    assert state.authenticate(Credentials("bearer  tok-b ")) == "obs/b"
    assert state.authenticate(Credentials(None)) is None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Basic dXNlcjpwdw==", "must be 'Bearer <fleet token>'"),
        ("Bearer ", "must be 'Bearer <fleet token>'"),
        ("tok-a", "must be 'Bearer <fleet token>'"),
        ("Bearer tok-c", "not the token of any CollectorFleet"),
    ],
)
def test_anything_else_is_refused(state: OperatorState, header: str, message: str) -> None:
    with pytest.raises(UnauthorizedError, match=message):
        state.authenticate(Credentials(header))


def test_a_shared_token_goes_to_the_oldest_fleet(state: OperatorState) -> None:
    newer = _fleet("c", 9.0, "tok-a")
    state.fleets[newer.key] = newer
    assert state.authenticate(Credentials("Bearer tok-a")) == "obs/a"
