"""A rollout policy as the planner's plain data (fleet/rollout.py): one translation for a
ConfigRollout's spec under `run` and a fleets file's `rollout` under `serve`."""

from __future__ import annotations

import dataclasses

from opamp_operator.api.models import FleetVersion, RolloutGates, RolloutPolicySpec, RolloutStep
from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.versions import Offer


def _gates(base: planner.Gates, override: RolloutGates | None) -> planner.Gates:
    """`base` with the fields the spec sets (same names in the model and the planner)."""
    if override is None:
        return base
    return dataclasses.replace(base, **override.model_dump(exclude_none=True))


def _step(step: RolloutStep, defaults: planner.Gates) -> planner.Step:
    pause, selector = step.pause, step.selector
    return planner.Step(
        agents=step.agents,
        percent=step.percent,
        attributes=dict(selector.attributes) if selector else {},
        pod_labels=dict(selector.pod_labels) if selector else {},
        pause_seconds=float(pause.seconds) if pause and pause.seconds else None,
        pause_until_promoted=bool(pause and pause.until_promoted),
        gates=_gates(defaults, step.gates),
    )


def to_policy(spec: RolloutPolicySpec) -> planner.Policy:
    """The spec as the planner's plain data."""
    defaults = _gates(planner.Gates(), spec.gates)
    return planner.Policy(
        steps=tuple(_step(step, defaults) for step in spec.steps),
        gates=defaults,
        on_failure=planner.OnFailure(spec.on_failure),
        paused=spec.paused,
        preflight=spec.preflight.enabled,
        block_on_unreported=spec.preflight.block_on_unreported,
    )


def stored_package(version: str | None) -> Offer | None:
    """The package a revision stored (as FleetVersion JSON), or None."""
    if version is None:
        return None
    return FleetVersion.model_validate_json(version).offer()
