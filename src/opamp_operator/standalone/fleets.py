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
    rollout:                      # optional: stage its changes (needs serve --state-dir)
      steps:                      # a ConfigRollout's spec, without fleetRef
        - agents: 1
          pause: {untilPromoted: true}
        - percent: 100
      promote: "1"                # control tokens: a new value acts once (as the
      abort: ""                   # ConfigRollout's annotations do); "" does nothing
      retry: ""
```

The first fleet whose selector matches an agent's identifying or non-identifying
attributes gives that agent its config. A fleet with `certificateNames` only matches
agents whose client certificate verified (`--client-ca-file`, `--client-auth`) and
carries one of those names (subject CN or a DNS/URI/email SAN): an identity the agent
cannot claim by reporting attributes. A file that does not parse, or a fleet whose
config is not a YAML mapping, or a heartbeatIntervalSeconds that is not a whole number
of seconds from 0 to 3600, is rejected with a message and the previous fleets stay in
force: one bad edit never takes configs away from running agents.

A fleet with a `rollout` is staged as a ConfigRollout stages a CollectorFleet
(standalone/rollouts.py): while its agents outside the rollout's members are held on the
stable revision, `config_for` and `package_for` give them that revision's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from opamp_operator.api.models import FleetVersion, RolloutPolicySpec
from opamp_operator.fleet import rollout as planner
from opamp_operator.fleet.rollout_agents import DesiredRevision, config_components
from opamp_operator.fleet.versions import revision_hash
from opamp_operator.fleet.views import AgentView, agent_view
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.identity import AgentIdentity
from opamp_operator.opamp.packages import PackageOffer
from opamp_operator.opamp.session import MAX_HEARTBEAT_SECONDS, AgentRecord

log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=BaseModel)


class FleetFileError(ValueError):
    """The fleets file is wrong; the message names the fleet and the problem."""


CONTROL_TOKEN_LENGTH = 253
"""As a Kubernetes annotation value a ConfigRollout's control token would be, bounded."""


class ServeRollout(RolloutPolicySpec):
    """A fleet's `rollout`: a ConfigRollout's spec, and its control tokens, which a
    ConfigRollout keeps in annotations."""

    promote: str = Field("", max_length=CONTROL_TOKEN_LENGTH)
    abort: str = Field("", max_length=CONTROL_TOKEN_LENGTH)
    retry: str = Field("", max_length=CONTROL_TOKEN_LENGTH)

    @property
    def controls(self) -> planner.Controls:
        return planner.Controls(self.promote, self.abort, self.retry)


@dataclass(frozen=True)
class Held:
    """What a fleet's rollout holds the agents outside its membership to: the stable
    revision's config and package. Every fleet with a rollout has one, Succeeded too:
    its membership is of the revision it planned, not of one the file has since."""

    membership: planner.Membership
    config: RemoteConfig
    package: PackageOffer | None


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
    rollout: ServeRollout | None = None
    """`rollout`: how changes of this fleet are staged; None: offered to all at once."""
    version: str | None = None
    """`version` as FleetVersion JSON, kept with a stable revision (None: no version)."""

    @cached_property
    def revision_hash(self) -> str:
        """The fleet's revision: config and package (fleet.versions.revision_hash)."""
        return revision_hash(self.config.hash.hex(), self.package)

    @property
    def revision(self) -> str:
        """The revision's name, as a ControllerRevision's: fleet name and hash."""
        return f"{self.name}-{self.revision_hash[:10]}"

    @cached_property
    def components(self) -> dict[str, frozenset[str]]:
        """The component types its config defines, for a rollout's preflight: parsed
        once per fleets file load, not at every plan."""
        return config_components(self.config.files[""].body.decode(errors="replace"))

    @property
    def desired(self) -> DesiredRevision:
        return DesiredRevision(self.config.hash.hex(), self.revision_hash, self.package)

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
    version = _checked(FleetVersion, raw.get("version"), name, "version")
    return Fleet(
        str(name),
        {str(k): str(v) for k, v in selector.items()},
        RemoteConfig.single(body),
        frozenset(names),
        heartbeat,
        version.expected if version is not None else "",
        version.offer() if version is not None else None,
        _checked(ServeRollout, raw.get("rollout"), name, "rollout"),
        version.model_dump_json(by_alias=True, exclude_none=True) if version else None,
    )


def _checked(model: type[_M], raw: Any, name: object, key: str) -> _M | None:
    """A fleet's `key`, checked by the CRD's own model (spec.version, a ConfigRollout's
    spec)."""
    if raw is None:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or key}: {e['msg']}" for e in exc.errors()
        )
        raise FleetFileError(f"fleet {name!r}: {key}: {problems}") from None


def parse_fleets(text: str, base: Path, staged: bool = True) -> list[Fleet]:
    """`staged`: whether fleets may have a `rollout` (serve has a --state-dir)."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise FleetFileError(f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("fleets", []), list):
        raise FleetFileError("expected a mapping with a list under 'fleets'")
    fleets = [_fleet(raw, i, base) for i, raw in enumerate(doc.get("fleets") or [])]
    for fleet in fleets:
        steps = fleet.rollout.steps if fleet.rollout is not None else []
        if any(step.selector is not None and step.selector.pod_labels for step in steps):
            raise FleetFileError(
                f"fleet {fleet.name!r}: rollout: a step's selector.podLabels selects "
                "nobody under serve (there are no pods): select by attributes"
            )
    unstaged = [f.name for f in fleets if f.rollout is not None and not staged]
    if unstaged:
        raise FleetFileError(
            f"fleet {unstaged[0]!r}: a rollout needs serve --state-dir, where the stable "
            "revision and the rollout's progress outlive a restart"
        )
    names = [f.name for f in fleets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FleetFileError(f"fleet names must be unique: {', '.join(duplicates)}")
    return fleets


class FileFleets:
    """A DesiredConfigSource backed by a fleets file; `reload()` picks up edits."""

    def __init__(self, path: Path, staged: bool = False) -> None:
        """`staged`: fleets may have a `rollout` (serve was given a --state-dir)."""
        self.path = path
        self.staged = staged
        self.fleets: list[Fleet] = []
        self._stamp: tuple[float, int] | None = None
        self.last_error: str | None = None
        self.held: dict[str, Held] = {}
        """Fleet name -> what its rollout holds non-members to (standalone/rollouts.py)."""
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
            fleets = parse_fleets(self.path.read_text(), self.path.parent, self.staged)
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

    def place(self, agent: AgentRecord) -> tuple[Fleet, AgentView] | None:
        """The first fleet that selects the agent, with the agent's view (kept on its
        record until what it shows changes: turning its attributes into text on every
        heartbeat was a fifth of a 10,000-agent server's CPU)."""
        view = agent_view(agent)
        fleet = next((f for f in self.fleets if f.matches(view.attributes, view.identity)), None)
        return (fleet, view) if fleet is not None else None

    def fleet_for(self, agent: AgentRecord) -> Fleet | None:
        placed = self.place(agent)
        return placed[0] if placed is not None else None

    def _holding(self, agent: AgentRecord) -> tuple[Fleet, Held | None] | None:
        """The agent's fleet, and what its rollout holds the agent to unless the agent
        is one of the rollout's members."""
        placed = self.place(agent)
        if placed is None:
            return None
        fleet, view = placed
        held = self.held.get(fleet.name)
        if held is not None and held.membership.runs(
            fleet.revision_hash, view.instance_uid, view.attributes, {}
        ):
            held = None
        return fleet, held

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        found = self._holding(agent)
        if found is None:
            return None
        fleet, held = found
        return held.config if held is not None else fleet.config

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        """The interval of the agent's fleet; None (no fleet, or none named) leaves it to
        `--heartbeat-seconds`."""
        fleet = self.fleet_for(agent)
        return fleet.heartbeat_seconds if fleet is not None else None

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        """The package of the agent's fleet (or of the stable revision its rollout holds
        it to), offered if the agent accepts packages."""
        found = self._holding(agent)
        if found is None:
            return None
        fleet, held = found
        return held.package if held is not None else fleet.package
