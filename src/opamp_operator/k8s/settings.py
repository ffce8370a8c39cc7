"""The operator's tunables and their defaults, each owned here once."""

from __future__ import annotations

from dataclasses import dataclass, field

from opamp_operator.fleet.remediation import RemediationSettings


@dataclass(frozen=True)
class HandlerSettings:
    status_interval: float = 5.0
    # The OpAMP URL template-mode Collectors are given (the operator's Service).
    agent_endpoint: str | None = None
    remediation: RemediationSettings = field(default_factory=RemediationSettings)
    # How often a fleet's token Secret is read again (rotation).
    token_refresh_seconds: float = 30.0
    # Serve the validating admission webhook (run.py configures kopf's server).
    webhook: bool = False
    # How often each ConfigRollout's planner runs (gate verdicts, step changes).
    rollout_interval: float = 2.0
    # After a start, how long a rollout only holds its persisted progress while agents
    # reconnect, before planning again.
    rollout_startup_grace: float = 15.0
