"""Every status the operator can write, judged as Flux (kstatus) and Argo CD (the shipped
health scripts, in gopher-lua) judge it — built by the same functions the shell calls, so
a state the live proofs (test_gitops_health.py) do not reach is judged too.

Each case also starts from the status before it: a writer that left a condition of an
earlier state behind (Reconciling=True beside Stalled=True) would be judged by kstatus
as something other than what the operator means.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import kopf
import pytest

from opamp_operator.api.models import GROUP, VERSION
from opamp_operator.fleet.conditions import TYPES, Why
from opamp_operator.fleet.health import FleetHealth
from opamp_operator.fleet.rollout import (
    Decision,
    Membership,
    PauseReason,
    Phase,
    Preflight,
    Progress,
)
from opamp_operator.fleet.rollout_status import problem_status, rollout_status
from opamp_operator.fleet.status import FleetFacts, fleet_status
from opamp_operator.fleet.versions import UP_TO_DATE
from opamp_operator.k8s.fleets import FleetReconciler
from opamp_operator.k8s.state import OperatorState
from samples import FACTS, HASH, T0, T1, healthy_fleet
from world.gitops import SPIRIT, argocd_health, kstatus

pytestmark = pytest.mark.world

HEALTHY = healthy_fleet(3)
APPLYING = dataclasses.replace(HEALTHY, config_applying=2, config_applied=1)

# name -> (health, facts, Argo CD's verdict, kstatus's verdict, text Argo CD must show)
FLEET_CASES: dict[str, tuple[FleetHealth, FleetFacts, str, str, str]] = {
    "ready": (HEALTHY, FACTS, "Healthy", "Current", "AgentsReady"),
    "applying": (APPLYING, FACTS, "Progressing", "InProgress", "ApplyingConfig"),
    "generation-changed": (
        HEALTHY,
        dataclasses.replace(FACTS, generation=3),
        "Progressing",
        "InProgress",
        "generation 3",
    ),
    "pods-without-agent": (
        dataclasses.replace(HEALTHY, pods_selected=4, pods_without_agent=1),
        FACTS,
        "Progressing",
        "InProgress",
        "PodsWithoutAgent",
    ),
    # kstatus has no "reconciled but degraded": a fleet whose agents are unhealthy or
    # refused the config is InProgress to Flux (it waits) and Degraded to Argo CD.
    "config-failed": (
        dataclasses.replace(HEALTHY, config_failed=1, config_applied=2),
        FACTS,
        "Degraded",
        "InProgress",
        "ConfigFailed",
    ),
    "unhealthy": (
        dataclasses.replace(HEALTHY, unhealthy=1, healthy=2),
        FACTS,
        "Degraded",
        "InProgress",
        "AgentsUnhealthy",
    ),
}
for _reason in ("InvalidConfig", "AuthSecretInvalid", "TemplateInvalid", "RolloutRolledBack"):
    FLEET_CASES[_reason] = (
        APPLYING,
        dataclasses.replace(FACTS, blocker=Why(_reason, f"{_reason} in this proof")),
        "Degraded",
        "Failed",
        _reason,
    )


def fleet_object(status: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CollectorFleet",
        "metadata": {"name": "f", "namespace": "obs", "generation": generation},
        "status": status,
    }


def judge_case(obj: dict[str, Any], argo: str, flux: str, says: str) -> None:
    argo_status, argo_message = argocd_health(obj)
    flux_status, flux_message = kstatus(obj)
    seen = f"argo={argo_status} ({argo_message}) kstatus={flux_status} ({flux_message})"
    assert (argo_status, flux_status) == (argo, flux), seen
    assert says in argo_message, seen
    if argo_status != "Degraded" or flux_status == "Failed":
        assert SPIRIT[argo_status] == flux_status, seen


@pytest.mark.parametrize("before", sorted(FLEET_CASES))
@pytest.mark.parametrize("name", sorted(FLEET_CASES))
def test_every_fleet_status_after_every_other(name: str, before: str) -> None:
    earlier_health, earlier_facts, *_ = FLEET_CASES[before]
    old = fleet_status(earlier_health, earlier_facts, {}, T0)
    health, facts, argo, flux, says = FLEET_CASES[name]
    status = fleet_status(health, facts, old, T1)
    # kstatus' three, then the fleet's own version condition (which neither tool reads)
    assert [c["type"] for c in status["conditions"]] == [*TYPES, UP_TO_DATE]
    judge_case(fleet_object(status, facts.generation), argo, flux, says)


@pytest.mark.parametrize("before", sorted(FLEET_CASES))
def test_an_invalid_spec_is_stalled_for_its_generation(before: str) -> None:
    """What reconcile writes for a spec the model refuses, after any earlier status: the
    new generation observed, Stalled, nothing of the earlier state left to contradict it."""
    earlier_health, earlier_facts, *_ = FLEET_CASES[before]
    old = fleet_status(earlier_health, earlier_facts, {}, T0)
    raw = fleet_object(old, generation=3)
    raw["spec"] = {"selector": {}, "config": {"inline": "a: 1"}, "unknownField": True}
    patch = kopf.Patch()
    body = kopf.Body(cast(kopf.RawBody, raw))
    reconciler = FleetReconciler(OperatorState(), cast(Any, None), None, "opamp-operator")
    reconciler.refuse_spec(body, patch, Why("InvalidSpec", "invalid spec: unknownField"))
    written = {**old, **dict(patch["status"])}
    judge_case(fleet_object(written, generation=3), "Degraded", "Failed", "InvalidSpec")


def _decision(phase: Phase, blocked: bool = False) -> Decision:
    progress = Progress(
        phase=phase,
        pause_reason=PauseReason.STEP if phase is Phase.PAUSED else None,
        message=f"{phase.value} in this proof",
        desired_revision="f-cdcdcdcd",
        desired_hash="cd" * 32,
        stable_revision="f-abababab",
        stable_hash=HASH,
    )
    preflight = Preflight(True, {"exporters/kafka": 2}, 0, 2) if blocked else None
    return Decision(progress, Membership("cd" * 32), (), preflight, 3, 0, ())


# name -> (status builder, Argo CD's verdict, kstatus's verdict, text Argo CD must show)
ROLLOUT_CASES: dict[str, tuple[Any, str, str, str]] = {
    "Succeeded": (_decision(Phase.SUCCEEDED), "Healthy", "Current", "Succeeded"),
    "Pending": (_decision(Phase.PENDING), "Progressing", "InProgress", "Pending"),
    "Progressing": (_decision(Phase.PROGRESSING), "Progressing", "InProgress", "Progressing"),
    # kstatus has no Suspended: a paused rollout is still in progress to Flux.
    "Paused": (_decision(Phase.PAUSED), "Suspended", "InProgress", "Paused"),
    "Failed": (_decision(Phase.FAILED), "Degraded", "Failed", "Failed"),
    "RolledBack": (_decision(Phase.ROLLED_BACK), "Degraded", "Failed", "RolledBack"),
    "Aborted": (_decision(Phase.ABORTED), "Degraded", "Failed", "Aborted"),
    "PreflightFailed": (
        _decision(Phase.PROGRESSING, blocked=True),
        "Degraded",
        "Failed",
        "PreflightFailed",
    ),
}
for _reason in ("InvalidSpec", "FleetNotFound", "Conflict", "FleetNotReady"):
    ROLLOUT_CASES[_reason] = (
        Why(_reason, f"{_reason} in this proof"),
        "Degraded",
        "Failed",
        _reason,
    )


def _rollout_status(case: Any, old: dict[str, Any]) -> dict[str, Any]:
    if isinstance(case, Why):
        return {**old, **problem_status(case, 2, old, T1)}
    return {**old, **rollout_status(case, 2, old, T1)}


@pytest.mark.parametrize("before", sorted(ROLLOUT_CASES))
@pytest.mark.parametrize("name", sorted(ROLLOUT_CASES))
def test_every_rollout_status_after_every_other(name: str, before: str) -> None:
    old = _rollout_status(ROLLOUT_CASES[before][0], {})
    case, argo, flux, says = ROLLOUT_CASES[name]
    status = {k: v for k, v in _rollout_status(case, old).items() if v is not None}
    ours = [c["type"] for c in status["conditions"]]
    assert ours == list(TYPES)
    obj = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ConfigRollout",
        "metadata": {"name": "r", "namespace": "obs", "generation": 2},
        "status": status,
    }
    if isinstance(case, Why) and before in ("Failed", "RolledBack", "Aborted"):
        # A problem only rewrites the conditions: the phase read before still names the
        # stop, and Argo CD says so first; both tools still call it failed.
        says = before
    judge_case(obj, argo, flux, says)
