"""The simulator's package logic without I/O: what an agent that accepts packages declares
and reports, how it reacts to PackagesAvailable (the spec's download procedure), how a
finished download installs or fails a package, and how the fleet counts it."""

from __future__ import annotations

import hashlib

import pytest

from opamp_operator.cli import build_parser
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.simulator.command import settings_from_args
from opamp_operator.simulator.protocol import (
    CAPABILITIES,
    DOWNLOADING,
    INSTALL_FAILED,
    INSTALLED,
    PACKAGE_CAPABILITIES,
    AgentCore,
    AgentOptions,
    PackageInstalled,
    PackageInstallFailed,
    PackageOffer,
    PackagesOffered,
    Part,
)
from opamp_operator.simulator.settings import SimulationSettings
from opamp_operator.simulator.stats import SimulationStats

UID = bytes(range(16))
FILE = b"a collector binary"
OTHER_FILE = b"another collector binary"


def _core(**options: object) -> AgentCore:
    opts = AgentOptions(accept_packages=True, service_version="1.0.0", **options)  # type: ignore[arg-type]
    core = AgentCore(3, opts, instance_uid=UID, started_unix_nano=1)
    core.connected()
    core.next_message(0.0)
    core.handle(pb.ServerToAgent(instance_uid=UID), 0.0)
    return core


def _available(
    packages: dict[str, tuple[str, bytes]], *, kind: int = pb.PackageType_TopLevel
) -> pb.ServerToAgent:
    """PackagesAvailable of name -> (version, file), with hashes as a server makes them."""
    msg = pb.ServerToAgent(instance_uid=UID)
    available = msg.packages_available
    overall = hashlib.sha256()
    for name, (version, body) in sorted(packages.items()):
        pkg = available.packages[name]
        pkg.type = kind  # type: ignore[assignment]
        pkg.version = version
        pkg.file.download_url = f"http://files.test/{name or 'top'}-{version}"
        pkg.file.content_hash = hashlib.sha256(body).digest()
        pkg.file.headers.headers.add(key="Authorization", value="Bearer t")
        pkg.hash = hashlib.sha256(f"{name}|{version}".encode() + body).digest()
        overall.update(name.encode() + pkg.hash)
    available.all_packages_hash = overall.digest()
    return msg


def _attrs(msg: pb.AgentToServer) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in msg.agent_description.identifying_attributes}


def _offered(core: AgentCore, msg: pb.ServerToAgent) -> tuple[PackageOffer, ...]:
    events = core.handle(msg, 1.0).events
    offered = [e for e in events if isinstance(e, PackagesOffered)]
    return offered[0].downloads if offered else ()


def _sha(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def test_an_agent_that_accepts_packages_declares_it_and_reports_empty_statuses_first() -> None:
    core = AgentCore(0, AgentOptions(accept_packages=True), instance_uid=UID)
    core.connected()
    first = core.next_message(0.0)
    assert first.capabilities == CAPABILITIES | PACKAGE_CAPABILITIES
    assert first.HasField("package_statuses")
    assert first.package_statuses == pb.PackageStatuses()
    assert "service.version" not in _attrs(first), "no version unless one is set"
    assert core.disconnect_message(1.0).capabilities == first.capabilities


def test_an_agent_that_does_not_accept_packages_ignores_an_offer() -> None:
    core = AgentCore(0, AgentOptions(), instance_uid=UID)
    core.connected()
    first = core.next_message(0.0)
    assert first.capabilities == CAPABILITIES
    assert not first.HasField("package_statuses")
    events = core.handle(_available({"": ("2.0.0", FILE)}), 1.0).events
    assert not [e for e in events if isinstance(e, PackagesOffered)]
    assert not core.wants_to_send


def test_an_offer_is_downloading_until_the_file_arrives_then_installed_and_run() -> None:
    core = _core()
    msg = _available({"": ("2.0.0", FILE)})
    [offer] = _offered(core, msg)
    assert offer == PackageOffer(
        name="",
        type=pb.PackageType_TopLevel,
        version="2.0.0",
        hash=msg.packages_available.packages[""].hash,
        url="http://files.test/top-2.0.0",
        content_hash=_sha(FILE),
        headers=(("Authorization", "Bearer t"),),
    )
    assert core.pending == Part.PACKAGE_STATUSES
    report = core.next_message(1.0)
    statuses = report.package_statuses
    all_hash = msg.packages_available.all_packages_hash
    assert statuses.server_provided_all_packages_hash == all_hash
    assert statuses.packages[""] == pb.PackageStatus(
        name="",
        server_offered_version="2.0.0",
        server_offered_hash=offer.hash,
        status=DOWNLOADING,
    )

    assert core.package_fetched(offer, _sha(FILE)) == [PackageInstalled(offer)]
    assert core.pending == Part.PACKAGE_STATUSES | Part.DESCRIPTION
    report = core.next_message(2.0)
    assert report.package_statuses.packages[""] == pb.PackageStatus(
        name="",
        agent_has_version="2.0.0",
        agent_has_hash=offer.hash,
        server_offered_version="2.0.0",
        server_offered_hash=offer.hash,
        status=INSTALLED,
    )
    assert _attrs(report)["service.version"] == "2.0.0"
    assert report.instance_uid == UID
    assert core.version == "2.0.0"
    assert core.packages_hash == all_hash

    # the same offer again (a server that repeats itself): nothing to do (spec step 1)
    assert _offered(core, msg) == ()
    assert not core.wants_to_send


def test_a_file_whose_hash_is_not_the_content_hash_is_install_failed() -> None:
    core = _core()
    [offer] = _offered(core, _available({"": ("2.0.0", FILE)}))
    [failed] = core.package_fetched(offer, _sha(OTHER_FILE))
    assert isinstance(failed, PackageInstallFailed)
    assert failed.error == (
        f"content hash mismatch: the file from {offer.url} has sha256 {_sha(OTHER_FILE).hex()}, "
        f"the offer's content_hash is {_sha(FILE).hex()}"
    )
    status = core.next_message(1.0).package_statuses.packages[""]
    assert (status.status, status.error_message) == (INSTALL_FAILED, failed.error)
    assert (status.agent_has_version, status.agent_has_hash) == ("", b"")
    assert status.server_offered_hash == offer.hash
    assert core.version == "1.0.0"
    assert core.packages_hash == b"", "not every package is installed"


def test_a_download_error_is_install_failed_with_it_and_a_re_offer_retries() -> None:
    core = _core()
    msg = _available({"": ("2.0.0", FILE)})
    [offer] = _offered(core, msg)
    [failed] = core.package_fetched(offer, None, "download from x failed: HTTP 404 Not Found")
    assert isinstance(failed, PackageInstallFailed)
    assert failed.error == "download from x failed: HTTP 404 Not Found"
    core.next_message(1.0)
    assert _offered(core, msg) == (offer,), "offered again: fetched again"
    assert core.next_message(2.0).package_statuses.packages[""].status == DOWNLOADING


def test_a_package_already_being_fetched_is_not_fetched_twice() -> None:
    core = _core()
    msg = _available({"": ("2.0.0", FILE)})
    _offered(core, msg)
    core.next_message(1.0)
    assert _offered(core, msg) == ()
    assert not core.wants_to_send


def test_a_download_superseded_by_a_newer_offer_is_dropped() -> None:
    core = _core()
    [old] = _offered(core, _available({"": ("2.0.0", FILE)}))
    [new] = _offered(core, _available({"": ("3.0.0", OTHER_FILE)}))
    assert core.package_fetched(old, _sha(FILE)) == []
    assert core.version == "1.0.0"
    assert core.package_fetched(new, _sha(OTHER_FILE)) == [PackageInstalled(new)]
    assert core.version == "3.0.0"


def test_an_addon_is_installed_without_changing_the_version() -> None:
    core = _core()
    [offer] = _offered(core, _available({"otlp-addon": ("0.3.0", FILE)}, kind=pb.PackageType_Addon))
    assert core.package_fetched(offer, _sha(FILE)) == [PackageInstalled(offer)]
    assert not core.pending & Part.DESCRIPTION
    assert core.version == "1.0.0"


def test_every_package_is_reported_and_those_no_longer_offered_are_dropped() -> None:
    core = _core()
    first = _available({"": ("2.0.0", FILE), "addon": ("1.0", OTHER_FILE)})
    offers = {o.name: o for o in _offered(core, first)}
    assert set(offers) == {"", "addon"}
    core.package_fetched(offers[""], _sha(FILE))
    statuses = core.next_message(1.0).package_statuses.packages
    assert {n: s.status for n, s in statuses.items()} == {"": INSTALLED, "addon": DOWNLOADING}
    assert core.packages_hash == b"", "the addon is still on its way"
    core.package_fetched(offers["addon"], _sha(OTHER_FILE))
    assert core.packages_hash == first.packages_available.all_packages_hash

    # the top-level package stays (same hash: not fetched again), the addon goes
    assert _offered(core, _available({"": ("2.0.0", FILE)})) == ()
    statuses = core.next_message(2.0).package_statuses.packages
    assert {n: s.status for n, s in statuses.items()} == {"": INSTALLED}


def test_reconnecting_reports_the_packages_again() -> None:
    core = _core()
    [offer] = _offered(core, _available({"": ("2.0.0", FILE)}))
    core.package_fetched(offer, _sha(FILE))
    core.next_message(1.0)
    core.disconnected()
    core.connected()
    again = core.next_message(2.0)
    assert again.package_statuses.packages[""].status == INSTALLED
    assert _attrs(again)["service.version"] == "2.0.0"


def test_the_fleet_counts_installs_failures_and_when_all_had_installed() -> None:
    stats = SimulationStats(2)
    offer = PackageOffer("", pb.PackageType_TopLevel, "2.0.0", b"h", "http://x", b"c")
    stats.package_offered(0, offer, 1.0)
    stats.package_offered(1, offer, 1.5)
    stats.package_failed(1, offer, "content hash mismatch: ...", 2.0)
    stats.package_installed(0, offer, 2.5)
    assert not stats.satisfied("installed")
    stats.package_installed(1, offer, 4.0)
    assert stats.satisfied("installed")
    stats.package_download_bytes = 300
    stats.package_downloads = 3
    summary = stats.summary(5.0, "installed")
    assert (summary.packages_installed, summary.package_install_failures) == (2, 1)
    assert (summary.package_downloads, summary.package_download_bytes) == (3, 300)
    [package] = summary.packages
    assert (package.name, package.version, package.hash) == ("", "2.0.0", b"h".hex())
    assert (package.offered, package.installed, package.failed) == (2, 2, 0)
    assert package.all_installed_s == 3.0
    assert package.error_example == "content hash mismatch: ..."
    assert "| package (unnamed) 2.0.0 offered 2 installed 2 failed 0" in stats.progress_line(5.0)


def test_cli_package_flags_become_settings() -> None:
    args = build_parser().parse_args(
        [
            "simulate",
            "--endpoint=ws://127.0.0.1:4320/v1/opamp",
            "--agents=3",
            "--accept-packages",
            "--service-version=1.2.3",
            "--package-downloads=4",
            "--package-download-timeout=2.5",
            "--max-package-bytes=1000",
            "--stop-when=installed",
        ]
    )
    settings = settings_from_args(args)
    assert settings.accept_packages
    assert (settings.package_downloads, settings.package_download_timeout) == (4, 2.5)
    assert (settings.max_package_bytes, settings.stop_when) == (1000, "installed")
    options = settings.agent_options()
    assert (options.accept_packages, options.service_version) == (True, "1.2.3")


@pytest.mark.parametrize(
    "bad",
    [{"package_downloads": 0}, {"max_package_bytes": 0}, {"package_download_timeout": 0.0}],
)
def test_package_settings_must_be_positive(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        SimulationSettings(endpoint="ws://127.0.0.1/v1/opamp", agents=1, **bad)  # type: ignore[arg-type]
