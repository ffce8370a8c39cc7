"""An agent as a rollout's gates read it: the status of the desired revision (config and
package together) and the planner's `RolloutAgent`, for the ConfigRollout shell under
`run` and the fleets file's rollouts under `serve`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from opamp_operator.fleet.rollout import RolloutAgent
from opamp_operator.fleet.validation import ConfigSyntaxError, load_yaml, used_component_types
from opamp_operator.fleet.versions import package_of, package_problem
from opamp_operator.fleet.views import AgentView
from opamp_operator.opamp.packages import PackageOffer, PackageState


@dataclass(frozen=True)
class DesiredRevision:
    """What a fleet's desired revision asks of its agents."""

    config_hash: str
    """The config's hash (hex): what an agent echoes once it applied it."""
    revision_hash: str
    """The revision's (fleet.versions.revision_hash)."""
    package: PackageOffer | None = None


def revision_status(view: AgentView, desired: DesiredRevision) -> tuple[str | None, str, str]:
    """(status, hash, error) of the agent for the fleet's desired revision, as the
    planner's gates read a config status: the config's remote config status, and with a
    package offered to an agent that accepts packages, the package's too — APPLIED once
    both are (installed, and service.version the package's), FAILED when either failed,
    APPLYING while either is on its way. The hash is the revision's when the status is
    about it, else what the agent reports (not about the desired revision)."""
    config_status = (
        view.remote_config_status
        if view.remote_config_hash.lower() == desired.config_hash.lower()
        else None
    )
    package = desired.package
    if package is None or not view.accepts_packages:
        if desired.revision_hash == desired.config_hash:
            return view.remote_config_status, view.remote_config_hash, view.remote_config_error
        hash_ = desired.revision_hash if config_status is not None else view.remote_config_hash
        return config_status, hash_, view.remote_config_error
    report = package_of(view, package)
    package_status: str | None = None
    if report is not None and report.state is PackageState.INSTALL_FAILED:
        package_status = "FAILED"
    elif report is not None and report.state is PackageState.INSTALLED:
        package_status = "APPLIED" if view.service_version == package.version else "APPLYING"
    elif report is not None and report.state is not None:
        package_status = "APPLYING"
    parts = {config_status, package_status}
    if "FAILED" in parts:
        failed = package_problem(view, package)
        error = view.remote_config_error if config_status == "FAILED" else failed or ""
        return "FAILED", desired.revision_hash, error
    if parts == {"APPLIED"}:
        return "APPLIED", desired.revision_hash, ""
    if parts & {"APPLIED", "APPLYING"}:
        return "APPLYING", desired.revision_hash, ""
    return None, view.remote_config_hash, ""


@dataclass(frozen=True)
class Placement:
    """What the gates know of an agent beyond its own reports."""

    pod: str = ""
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    drifted: bool | None = None
    verified: bool = True


def rollout_agent(
    view: AgentView, status: tuple[str | None, str, str], placement: Placement = Placement()
) -> RolloutAgent:
    """The planner's view of a live agent whose desired-revision `status` is given
    (`revision_status`, or a staged template's `version_status`)."""
    config_status, config_hash, config_error = status
    return RolloutAgent(
        uid=view.instance_uid,
        pod=placement.pod,
        attributes=view.attributes,
        pod_labels=placement.pod_labels,
        accepts_remote_config=view.accepts_remote_config,
        healthy=view.healthy,
        health_error=view.health_error,
        config_status=config_status,
        config_hash=config_hash,
        config_error=config_error,
        drifted=placement.drifted,
        components=view.components,
        connected_at=view.connected_at,
        verified=placement.verified,
    )


def config_components(text: str | None) -> dict[str, frozenset[str]]:
    """The component types a config defines, per plural kind (for preflight)."""
    if text is None:
        return {}
    try:
        config = load_yaml(text)
    except ConfigSyntaxError:
        return {}
    return {kind: frozenset(types) for kind, types in used_component_types(config).items()}
