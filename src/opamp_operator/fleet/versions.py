"""The version a fleet's agents should run, against what they report: who is outdated,
where the offered package's install is, the condition that says so, and the package
offer itself.

Pure functions over agent views. A fleet without a target version reports its agents'
versions (status `versions`) and nothing more.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opamp_operator.fleet.views import AgentView
from opamp_operator.opamp.packages import IN_PROGRESS, PackageOffer, PackageReport, PackageState

UP_TO_DATE = "AgentsUpToDate"
"""The condition every fleet's status carries: True when every live agent reports the
target version, False (reason Outdated) when some do not, Unknown without a target."""


Offer = PackageOffer
"""The offer type, for layers that may name the fleet layer but not the OpAMP one."""


def package_offer(
    version: str, name: str, url: str, sha256_hex: str, signature_b64: str | None = None
) -> PackageOffer:
    """The offer for a fleet's package; ValueError when the hash or signature is not
    what the schema says (hex SHA-256, base64)."""
    try:
        content_hash = bytes.fromhex(sha256_hex)
        signature = base64.b64decode(signature_b64, validate=True) if signature_b64 else b""
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"package {name or '(top-level)'}: {exc}") from None
    return PackageOffer(name, version, url, content_hash, signature)


def revision_hash(config_hash: str, package: PackageOffer | None, template: str = "") -> str:
    """What identifies a fleet revision (hex): its config's hash alone, or, when it names
    a package or renders its pods (`template`: fleet.pod_rollout.template_hash), a hash
    of all of them, so a version change is a revision as a config change is, and a config
    and a version changed together are one revision."""
    if package is None and not template:
        return config_hash
    packages = package.all_packages_hash.hex() if package is not None else ""
    both = f"{config_hash}\0{packages}" + (f"\0{template}" if template else "")
    return hashlib.sha256(b"opamp-operator revision\0" + both.encode()).hexdigest()


def outdated(agents: Iterable[AgentView], target: str) -> list[AgentView]:
    """Agents reporting a service.version other than `target` (or none); none without
    a target."""
    if not target:
        return []
    return [a for a in agents if a.service_version != target]


def version_status(agent: AgentView, target: str) -> tuple[str, str]:
    """(status, error) of an agent in a new pod as a staged template change's gates read
    it, once it applied the revision's config: APPLIED when it reports the target
    version (or the fleet names none), else still APPLYING, and why."""
    if not target or agent.service_version == target:
        return "APPLIED", ""
    return "APPLYING", f"reports version {agent.service_version or '(none)'}, not {target}"


@dataclass(frozen=True)
class PackageProgress:
    """Where the agents offered a package are with it: counts for status."""

    installing: int = 0
    failed: int = 0


def package_of(agent: AgentView, offer: PackageOffer) -> PackageReport | None:
    """The agent's report on the offered package, once it is about this very offer (its
    aggregate hash); a report on an older offer says nothing about this one."""
    if agent.packages_hash != offer.all_packages_hash.hex():
        return None
    return agent.packages.get(offer.name)


def package_progress(agents: Iterable[AgentView], offer: PackageOffer | None) -> PackageProgress:
    if offer is None:
        return PackageProgress()
    installing = failed = 0
    for agent in agents:
        report = package_of(agent, offer)
        if report is None:
            continue
        if report.state is PackageState.INSTALL_FAILED:
            failed += 1
        elif report.state in IN_PROGRESS:
            installing += 1
    return PackageProgress(installing, failed)


def package_problem(agent: AgentView, offer: PackageOffer | None) -> str | None:
    """Why the agent did not install the offered package, if it says it failed."""
    if offer is None:
        return None
    report = package_of(agent, offer)
    if report is None or report.state is not PackageState.INSTALL_FAILED:
        return None
    return f"package {offer.version} failed to install: {report.error or 'no error message'}"


def version_condition(
    target: str, live: int, outdated_count: int, versions: Iterable[tuple[str, int]]
) -> dict[str, Any]:
    """The AgentsUpToDate condition (without lastTransitionTime: conditions.merge sets
    it). `versions`: the status' histogram, (version, live agents), most first."""
    if not target:
        return {
            "type": UP_TO_DATE,
            "status": "Unknown",
            "reason": "NoTargetVersion",
            "message": "spec.version is not set: agents' versions are reported, not judged",
        }
    if outdated_count:
        others = ", ".join(f"{v} ({n})" for v, n in versions if v != target)
        return {
            "type": UP_TO_DATE,
            "status": "False",
            "reason": "Outdated",
            "message": f"{outdated_count} of {live} agents run another version than "
            f"{target}: {others}",
        }
    return {
        "type": UP_TO_DATE,
        "status": "True",
        "reason": "AllOnTarget",
        "message": f"{live} agents run {target}",
    }
