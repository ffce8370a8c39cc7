"""Fleets defined in a file, for `opamp-operator serve` on VMs, bare metal and demos.

```yaml
fleets:
  - name: gateways
    selector:                     # every key must equal the agent's attribute
      service.name: otelcol-contrib
      deployment.environment: prod
    config: |                     # the Collector config offered to matching agents
      receivers: ...
  - name: datacenter-a
    certificateNames: [dc-a.collectors.example.com]  # only agents proving this name
    selector: {}
    config: |
      receivers: ...
  - name: everyone-else
    selector: {}                  # matches any agent
    configFile: default.yaml      # relative to this file
    heartbeatIntervalSeconds: 10  # offered to its agents (0: none); default --heartbeat-seconds
    version:                      # what its agents should run (as CollectorFleet spec.version)
      expected: 0.149.0           # the service.version they should report
      package:                    # offered to agents that accept packages (optional)
        url: https://downloads.example.com/otelcol_0.149.0_linux_amd64.tar.gz
        sha256: 3f2c...           # SHA-256 of the file, hex; the agent verifies it
```

The first fleet whose selector matches an agent's identifying or non-identifying
attributes gives that agent its config. A fleet with `certificateNames` only matches
agents whose client certificate verified (`--client-ca-file`, `--client-auth`) and
carries one of those names (subject CN or a DNS/URI/email SAN): an identity the agent
cannot claim by reporting attributes. A file that does not parse, or a fleet whose
config is not a YAML mapping, or a heartbeatIntervalSeconds that is not a whole number
of seconds from 0 to 3600, is rejected with a message and the previous fleets stay in
force: one bad edit never takes configs away from running agents.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from opamp_operator.api.models import FleetVersion
from opamp_operator.fleet.views import agent_view
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.session import MAX_HEARTBEAT_SECONDS, AgentRecord

log = logging.getLogger(__name__)


class FleetFileError(ValueError):
    """The fleets file is wrong; the message names the fleet and the problem."""


@dataclass(frozen=True)
class Fleet:
    name: str
    selector: Mapping[str, str]
    config: RemoteConfig
    certificate_names: frozenset[str] = frozenset()
    heartbeat_seconds: int | None = None
    """Offered to its agents (0: none); None: `serve --heartbeat-seconds`."""
    target_version: str = ""
    """`version.expected`: the service.version its agents should report."""
    package: PackageOffer | None = None
    """`version.package`: offered to its agents that accept packages."""

    def matches(self, attributes: Mapping[str, str], identity: AgentIdentity) -> bool:
        if self.certificate_names and not self.certificate_names & set(identity.certificate):
            return False
        return all(attributes.get(k) == v for k, v in self.selector.items())


def _fleet(raw: Any, index: int, base: Path) -> Fleet:
    if not isinstance(raw, dict):
        raise FleetFileError(f"fleets[{index}] must be a mapping")
    name = raw.get("name") or f"fleets[{index}]"
    selector = raw.get("selector") or {}
    if not isinstance(selector, dict):
        raise FleetFileError(f"fleet {name!r}: selector must be a mapping of attribute: value")
    names = raw.get("certificateNames") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise FleetFileError(f"fleet {name!r}: certificateNames must be a list of names")
    heartbeat = raw.get("heartbeatIntervalSeconds")
    if heartbeat is not None and (
        not isinstance(heartbeat, int)
        or isinstance(heartbeat, bool)
        or not 0 <= heartbeat <= MAX_HEARTBEAT_SECONDS
    ):
        raise FleetFileError(
            f"fleet {name!r}: heartbeatIntervalSeconds must be a whole number of seconds "
            f"from 0 to {MAX_HEARTBEAT_SECONDS}"
        )
    if ("config" in raw) == ("configFile" in raw):
        raise FleetFileError(f"fleet {name!r}: give exactly one of config or configFile")
    if "config" in raw:
        body = str(raw["config"]).encode()
    else:
        path = base / str(raw["configFile"])
        try:
            body = path.read_bytes()
        except OSError as exc:
            raise FleetFileError(f"fleet {name!r}: cannot read configFile {path}: {exc}") from None
    try:
        parsed = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise FleetFileError(f"fleet {name!r}: config is not valid YAML: {exc}") from None
    if not isinstance(parsed, dict):
        raise FleetFileError(f"fleet {name!r}: a Collector config must be a YAML mapping")
    version = _version(raw.get("version"), name)
    return Fleet(
        str(name),
        {str(k): str(v) for k, v in selector.items()},
        RemoteConfig.single(body),
        frozenset(names),
        heartbeat,
        version.expected if version is not None else "",
        version.offer() if version is not None else None,
    )


def _version(raw: Any, name: object) -> FleetVersion | None:
    """A fleet's `version`, checked by the CRD's own model (spec.version)."""
    if raw is None:
        return None
    try:
        return FleetVersion.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'version'}: {e['msg']}" for e in exc.errors()
        )
        raise FleetFileError(f"fleet {name!r}: version: {problems}") from None


def parse_fleets(text: str, base: Path) -> list[Fleet]:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise FleetFileError(f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("fleets", []), list):
        raise FleetFileError("expected a mapping with a list under 'fleets'")
    fleets = [_fleet(raw, i, base) for i, raw in enumerate(doc.get("fleets") or [])]
    names = [f.name for f in fleets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FleetFileError(f"fleet names must be unique: {', '.join(duplicates)}")
    return fleets


class FileFleets:
    """A DesiredConfigSource backed by a fleets file; `reload()` picks up edits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fleets: list[Fleet] = []
        self._stamp: tuple[float, int] | None = None
        self.last_error: str | None = None
        self.reload()
        if self.last_error is not None:
            raise FleetFileError(f"{path}: {self.last_error}")

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime, st.st_size)

    def reload(self) -> bool:
        """Re-read the file if it changed; True when the fleets in force changed."""
        stamp = self._file_stamp()
        if stamp is not None and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            fleets = parse_fleets(self.path.read_text(), self.path.parent)
        except (FleetFileError, OSError, UnicodeDecodeError) as exc:
            self.last_error = str(exc)
            log.error("fleets file %s rejected, keeping the previous fleets: %s", self.path, exc)
            return False
        self.last_error = None
        changed = fleets != self.fleets
        self.fleets = fleets
        if changed:
            log.info("fleets file %s loaded: %s", self.path, ", ".join(f.name for f in fleets))
        return changed

    def fleet_for(self, agent: AgentRecord) -> Fleet | None:
        """The first fleet that selects the agent, by the agent's view (kept on its
        record until what it shows changes: turning its attributes into text on every
        heartbeat was a fifth of a 10,000-agent server's CPU)."""
        view = agent_view(agent)
        return next((f for f in self.fleets if f.matches(view.attributes, view.identity)), None)

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        fleet = self.fleet_for(agent)
        return fleet.config if fleet is not None else None

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        """The interval of the agent's fleet; None (no fleet, or none named) leaves it to
        `--heartbeat-seconds`."""
        fleet = self.fleet_for(agent)
        return fleet.heartbeat_seconds if fleet is not None else None

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        """The package of the agent's fleet, offered if the agent accepts packages."""
        fleet = self.fleet_for(agent)
        return fleet.package if fleet is not None else None
