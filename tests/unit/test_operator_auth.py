"""The operator's OpAMP authenticator: fleet tokens identify fleets, verified client
certificates add their names, ServiceAccount sessions end with their pod; nothing else
passes. (TokenReview itself is proved against the real apiserver in the world tier.)"""

from __future__ import annotations

import hashlib

import pytest

from opamp_operator.api.models import CollectorFleetSpec
from opamp_operator.fleet.mapping import FleetSelector
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.server.api import Unauthenticated
from opamp_operator.server.app import Credentials
from opamp_operator.server.tls import ClientCertificate


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


async def test_a_token_names_its_fleet(state: OperatorState) -> None:
    assert await state.authenticate(Credentials("Bearer tok-a")) == AgentIdentity(fleet="obs/a")
    assert await state.authenticate(Credentials("bearer  tok-b ")) == AgentIdentity(fleet="obs/b")
    assert await state.authenticate(Credentials(None)) is None


async def test_a_verified_certificate_adds_its_names(state: OperatorState) -> None:
    cert = ClientCertificate("agent-1", ("fleet-a",), ("agent-1.obs.svc",))
    assert await state.authenticate(Credentials(None, cert)) == AgentIdentity(
        certificate=("agent-1", "agent-1.obs.svc")
    )
    both = await state.authenticate(Credentials("Bearer tok-a", cert))
    assert both == AgentIdentity(fleet="obs/a", certificate=("agent-1", "agent-1.obs.svc"))


async def test_a_jwt_is_refused_unasked_without_a_reviewer(state: OperatorState) -> None:
    with pytest.raises(Unauthenticated, match="not the token of any CollectorFleet"):
        await state.authenticate(Credentials("Bearer eyJh.eyJz.c2ln"))


async def test_a_serviceaccount_session_ends_when_its_pod_is_deleted(
    state: OperatorState,
) -> None:
    """Revalidating an open WebSocket: its token may have rotated on disk since, so the
    session stands for its pod until the pod is deleted."""
    session = AgentIdentity(service_account="obs/sa", pod="obs/p", pod_uid="uid-p")
    credentials = Credentials("Bearer eyJh.eyJz.c2ln")
    assert await state.authenticate(credentials, session) == session
    closed: list[bool] = []
    state.credentials_changed = lambda: closed.append(True)
    state.pod_deleted("uid-p")
    assert closed == [True]
    with pytest.raises(Unauthenticated, match="pod obs/p was deleted"):
        await state.authenticate(credentials, session)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Basic dXNlcjpwdw==", "must be 'Bearer <token>'"),
        ("Bearer ", "must be 'Bearer <token>'"),
        ("tok-a", "must be 'Bearer <token>'"),
        ("Bearer tok-c", "not the token of any CollectorFleet"),
    ],
)
async def test_anything_else_is_refused(state: OperatorState, header: str, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        await state.authenticate(Credentials(header))


async def test_a_shared_token_goes_to_the_oldest_fleet(state: OperatorState) -> None:
    newer = _fleet("c", 9.0, "tok-a")
    state.fleets[newer.key] = newer
    assert await state.authenticate(Credentials("Bearer tok-a")) == AgentIdentity(fleet="obs/a")
