"""The operator's tunables and their defaults, each owned here once.

`opamp-operator run` takes its flag defaults and help from these dataclasses (and from
CoreSettings, Listen and Limits for the OpAMP server), and the Helm chart's values are
checked against them (tests/unit/test_settings.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from opamp_operator.fleet.remediation import RemediationSettings
from opamp_operator.fleet.rollout_status import RolloutTiming


@dataclass(frozen=True)
class HandlerSettings:
    """What the kopf handlers do and how often."""

    status_interval: float = 5.0
    """Seconds between a fleet's status writes (only when something changed)."""
    agent_endpoint: str | None = None
    """The OpAMP URL template-mode Collectors are given (the operator's Service)."""
    agent_ca_file: Path | None = None
    """The CA (PEM) template-mode Collectors verify a wss:// agent_endpoint with, put into
    each template fleet's ConfigMap unless the fleet names its own (caConfigMapRef)."""
    remediation: RemediationSettings = field(default_factory=RemediationSettings)
    """Drift policy Remediate: waits and attempts (fleet/remediation.py)."""
    token_refresh_seconds: float = 30.0
    """How often a fleet's token Secret is read again (rotation)."""
    webhook: bool = False
    """Serve the validating admission webhook (run.py configures kopf's server)."""
    rollout_interval: float = RolloutTiming.interval
    """Seconds between runs of each ConfigRollout's planner (gate verdicts, step changes)."""
    rollout_startup_grace: float = RolloutTiming.startup_grace
    """After a start, how long a rollout only holds its persisted progress while agents
    reconnect, before planning again."""
    gate_startup_grace: float = 15.0
    """After a start (or a standby taking over), how long a gated pod whose agent has not
    connected to this process yet keeps its agent-ready condition, rather than going
    False (NoAgent) before its agent had the time to reconnect (fleet/readiness.py)."""


@dataclass(frozen=True)
class PeeringSettings:
    """kopf peering: replicas sharing a peering name run active/standby."""

    name: str | None = None
    """The kopf peering object's name; None runs alone (no peering)."""
    priority: int | None = None
    """This replica's priority; None draws a random one per start, so replicas differ."""
    lifetime: int = 60
    """Seconds a silent replica is still presumed alive before its standby takes over."""


@dataclass(frozen=True)
class AccessSettings:
    """How the API listener asks Kubernetes who a user is and what they may read
    (k8s/access.py), and how long it remembers the answers."""

    audiences: tuple[str, ...] = ()
    """Audiences a user's token must carry; empty: the apiserver's own."""
    authn_ttl_seconds: float = 60.0
    """How long a token that passed a TokenReview is trusted without another."""
    allowed_ttl_seconds: float = 60.0
    """How long an allowed SubjectAccessReview is remembered (a revoked grant ends
    within this)."""
    denied_ttl_seconds: float = 10.0
    """How long a refusal is remembered (a new grant starts working within this)."""
    cache_size: int = 10_000
    """Users and (user, permission) answers remembered at most, each."""


@dataclass(frozen=True)
class AgentTokenSettings:
    """How agents' ServiceAccount tokens are checked (k8s/access.py AgentTokenReviewer)."""

    audiences: tuple[str, ...] = ("opamp-operator",)
    """The audience agents' projected tokens must be issued for: a token made for the
    apiserver (or anything else) is refused, so no other service can replay it here."""
    max_ttl_seconds: float = 600.0
    """A TokenReview's answer is kept until the token expires, at most this long."""
    concurrency: int = 8
    """TokenReviews in flight at once; a connect storm queues behind them."""
    cache_size: int = 100_000
    """Tokens remembered at most (one per agent)."""
