"""Packages offered by the sans-I/O core (OpAMP PackagesAvailable): only to agents that
accept packages, once per WebSocket connection and in every HTTP reply until the agent
reports the offer's aggregate hash, never again after an install that failed, never an
empty offer; what agents report of them is bounded; and a fleets file names a package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from opamp_operator.fleet.versions import package_offer
from opamp_operator.fleet.views import agent_view
from opamp_operator.opamp import attributes
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.packages import PackageOffer, PackageState
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import SERVER_CAPABILITIES, STATUS_BYTES, AgentRecord, ServerCore
from opamp_operator.standalone.fleets import FleetFileError, parse_fleets

UID = bytes(range(1, 17))
SHA = "0f" * 32
OFFER = package_offer("0.150.0", "", "https://dl.example/otelcol-0.150.0.tgz", SHA)
CAPS = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_AcceptsPackages
    | pb.AgentCapabilities_ReportsPackageStatuses
)


@dataclass
class Packages:
    offer: PackageOffer | None = OFFER

    def config_for(self, agent: AgentRecord) -> RemoteConfig | None:
        return None

    def heartbeat_for(self, agent: AgentRecord) -> int | None:
        return None

    def package_for(self, agent: AgentRecord) -> PackageOffer | None:
        return self.offer


def hello(caps: int = CAPS, seq: int = 0) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=seq, capabilities=caps)
    msg.agent_description.identifying_attributes.extend(
        attributes.from_dict({"service.name": "otelcol", "service.version": "0.149.0"})
    )
    return msg


def statuses(
    seq: int, all_hash: bytes, state: pb.PackageStatusEnum, error: str = ""
) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=seq)
    msg.package_statuses.server_provided_all_packages_hash = all_hash
    status = msg.package_statuses.packages[""]
    status.name = ""
    status.agent_has_version = "0.149.0"
    status.server_offered_version = "0.150.0"
    status.server_offered_hash = OFFER.package_hash
    status.status = state
    status.error_message = error
    return msg


def test_the_server_says_it_offers_packages() -> None:
    assert SERVER_CAPABILITIES & pb.ServerCapabilities_OffersPackages
    assert SERVER_CAPABILITIES & pb.ServerCapabilities_AcceptsPackagesStatus


def test_offered_once_per_websocket_connection_and_again_after_a_reconnect() -> None:
    core = ServerCore(desired=Packages())
    conn = core.open(0.0)
    first = core.receive(hello(), 0.0, conn).message
    assert first.packages_available == OFFER.to_proto()
    assert first.capabilities & pb.ServerCapabilities_OffersPackages
    assert not core.receive(
        pb.AgentToServer(instance_uid=UID, sequence_num=1), 1.0, conn
    ).message.HasField("packages_available")
    core.close(conn, 2.0)
    conn = core.open(3.0)
    again = core.receive(hello(seq=2), 3.0, conn).message
    assert again.HasField("packages_available")


def test_over_http_the_offer_repeats_until_reported_and_stops_after_a_failure() -> None:
    core = ServerCore(desired=Packages())
    assert core.receive(hello(), 0.0).message.HasField("packages_available")
    beat = pb.AgentToServer(instance_uid=UID, sequence_num=1)
    assert core.receive(beat, 1.0).message.HasField("packages_available")  # reply may be lost
    failed = statuses(2, OFFER.all_packages_hash, pb.PackageStatusEnum_InstallFailed, "bad hash")
    assert not core.receive(failed, 2.0).message.HasField("packages_available")  # no install loop
    view = agent_view(core.agents[UID])
    report = view.packages[""]
    assert (report.state, report.error, view.packages_hash) == (
        PackageState.INSTALL_FAILED,
        "bad hash",
        OFFER.all_packages_hash.hex(),
    )
    # A new offer (another version) is made although the last one failed.
    newer = package_offer("0.150.1", "", "https://dl.example/otelcol-0.150.1.tgz", SHA)
    core.desired = Packages(newer)
    core.desired_changed()
    assert core.receive(pb.AgentToServer(instance_uid=UID, sequence_num=3), 3.0).message.HasField(
        "packages_available"
    )


def test_agents_that_take_no_packages_and_fleets_that_name_none_are_offered_nothing() -> None:
    core = ServerCore(desired=Packages())
    reply = core.receive(hello(caps=pb.AgentCapabilities_ReportsStatus), 0.0)
    assert not reply.message.HasField("packages_available")
    core = ServerCore(desired=Packages(None))
    assert not core.receive(hello(), 0.0).message.HasField("packages_available")


def test_package_statuses_past_the_cap_keep_only_their_top_level_fields() -> None:
    core = ServerCore(desired=Packages())
    core.receive(hello(), 0.0)
    big = statuses(1, OFFER.all_packages_hash, pb.PackageStatusEnum_Installed)
    for i in range(2000):
        big.package_statuses.packages[f"addon-{i}"].error_message = "x" * 64
    assert big.package_statuses.ByteSize() > STATUS_BYTES
    reply = core.receive(big, 1.0)
    assert reply.trimmed == ["package_statuses"]
    kept = core.agents[UID].package_statuses
    assert kept is not None
    assert kept.ByteSize() < 1024
    assert kept.server_provided_all_packages_hash == OFFER.all_packages_hash
    health = pb.AgentToServer(instance_uid=UID, sequence_num=2)
    health.health.healthy = False
    health.health.last_error = "e" * 100_000
    assert core.receive(health, 2.0).trimmed == ["health"]
    assert core.agents[UID].health == pb.ComponentHealth(healthy=False, last_error="e" * 1024)


def test_a_fleets_file_names_a_package_checked_as_the_crd_checks_it(tmp_path: Path) -> None:
    text = f"""
fleets:
  - name: vms
    selector: {{}}
    config: "receivers: {{}}"
    version:
      expected: 0.150.0
      package:
        url: https://dl.example/otelcol-0.150.0.tgz
        sha256: "{SHA}"
"""
    (fleet,) = parse_fleets(text, tmp_path)
    assert fleet.target_version == "0.150.0"
    assert fleet.package == OFFER
    with pytest.raises(
        FleetFileError, match=r"fleet 'vms': version: package.sha256: String should match"
    ):
        parse_fleets(text.replace(SHA, "abc"), tmp_path)
    with pytest.raises(FleetFileError, match=r"fleet 'vms': version: expected: Field required"):
        parse_fleets(text.replace("expected: 0.150.0", "wanted: 0.150.0"), tmp_path)
