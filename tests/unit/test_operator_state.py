"""Which agents the operator's fleet counts judge for drift."""

from __future__ import annotations

import hashlib

from opamp_operator.api.models import CollectorFleetSpec
from opamp_operator.fleet.mapping import FleetSelector
from opamp_operator.fleet.views import AgentView
from opamp_operator.k8s.state import FleetRecord, OperatorState
from opamp_operator.opamp.configs import RemoteConfig

DESIRED = "exporters: {debug: {verbosity: detailed}}\n"
EDITED = "exporters: {debug: {verbosity: basic}}\n"


def _record() -> FleetRecord:
    spec = CollectorFleetSpec.model_validate(
        {"selector": {"matchLabels": {"app": "x"}}, "config": {"inline": DESIRED}}
    )
    record = FleetRecord("obs", "f", "uid", 1, FleetSelector("obs", "f", 0.0), spec)
    record.config_text = DESIRED
    record.config = RemoteConfig.single(DESIRED.encode())
    return record


def _view(uid: str, status: str | None, effective: str = "", config_hash: str = "") -> AgentView:
    return AgentView(
        instance_uid=uid,
        attributes={},
        remote_config_status=status,
        remote_config_hash=config_hash,
        effective_config=effective,
        # The verdict cache keys on this hash, as the core computes it for real agents.
        effective_config_hash=hashlib.sha256(effective.encode()).hexdigest() if effective else "",
    )


async def test_drift_counts_judge_applied_and_status_less_agents_only() -> None:
    record = _record()
    views = [
        _view("fresh", "UNSET"),  # connected, applied nothing yet: pending
        _view("unset-edited", "UNSET", EDITED),  # takes no remote config, runs its own
        _view("applied", "APPLIED", DESIRED, record.desired_hash),
        _view("applied-edited", "APPLIED", EDITED, record.desired_hash),
        _view("failed", "FAILED", EDITED, record.desired_hash),  # counted as failed
        # Applied the fleet's previous config, the new one is on its way: pending.
        _view("applied-older", "APPLIED", EDITED, "0" * 64),
        _view("silent", None),  # reports nothing at all: unknown
    ]
    state = OperatorState(views={v.instance_uid: v for v in views})
    verdicts = await state.drift_of(record, [v.instance_uid for v in views])
    assert verdicts == {
        "unset-edited": True,
        "applied": False,
        "applied-edited": True,
        "silent": None,
    }
