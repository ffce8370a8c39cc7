"""Packages (PackagesAvailable) between two opamp-go peers, the test world's real package
agents before our own server offers any: opamp-go's server harness offers one top-level
package whose file a real HTTP server serves; opamp-go's client downloads it with the
offered header and reports PackageStatuses, and the agent harness checks the file's
SHA-256 and "runs" the package (service.version becomes its version). A wrong content
hash or a missing file is InstallFailed with the error, and the version stays."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from world.collector import (
    JsonlProcess,
    PackageFiles,
    ReferenceServer,
    package_offer_flags,
    start_go_agent,
    start_reference_server,
)

pytestmark = pytest.mark.world

PAYLOAD = os.urandom(300_000)
TOKEN = {"Authorization": "Bearer package-token"}
INSTALLED = "PackageStatusEnum_Installed"
INSTALL_FAILED = "PackageStatusEnum_InstallFailed"
DOWNLOADING = "PackageStatusEnum_Downloading"

Event = dict[str, Any]


@pytest.fixture
def files() -> Iterator[PackageFiles]:
    with PackageFiles({"/otelcol-2.0.0.bin": PAYLOAD}, required_headers=TOKEN) as served:
        yield served


def _server(url: str, sha256: str) -> ReferenceServer:
    return start_reference_server(None, *package_offer_flags(url, sha256, "2.0.0", headers=TOKEN))


def _agent(server: ReferenceServer, transport: str) -> JsonlProcess:
    url = server.ws_url if transport == "ws" else server.http_url
    return start_go_agent(
        url, "--accept-packages", "--attr=service.version=1.0.0", "--heartbeat=1s"
    )


def _statuses(ev: Event) -> dict[str, Any] | None:
    ps = ev.get("package_statuses")
    return None if ps is None else ps["packages"].get("")


def _status_is(status: str) -> Any:
    return lambda ev: (_statuses(ev) or {}).get("status") == status


def _drain(harness: JsonlProcess) -> list[Event]:
    """Everything the harness has printed so far, waited for or not."""
    while not harness.events.empty():
        harness.seen.append(harness.events.get())
    return harness.seen


def _versions(server: ReferenceServer, uid: str) -> list[str]:
    return [
        ev["identifying"]["service.version"]
        for ev in _drain(server.harness)
        if ev["event"] == "agent_message" and ev["instance_uid"] == uid and "identifying" in ev
    ]


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_the_agent_downloads_installs_and_runs_the_offered_package(
    files: PackageFiles, transport: str
) -> None:
    with _server(files.url("/otelcol-2.0.0.bin"), files.sha256(PAYLOAD)) as server:
        offer = server.harness.wait_for("listening")["package"]
        with _agent(server, transport) as agent:
            uid = agent.wait_for("started")["instance_uid"]
            available = agent.wait_for("packages_available")
            installed = agent.wait_for("package_installed", timeout=20)
            done = server.harness.wait_for("agent_message", timeout=20, where=_status_is(INSTALLED))
            upgraded = server.harness.wait_for(
                "agent_message",
                timeout=20,
                where=lambda e: e.get("identifying", {}).get("service.version") == "2.0.0",
            )

    assert available["all_packages_hash"] == offer["all_packages_hash"]
    assert available["packages"] == {
        "": {
            "type": "PackageType_TopLevel",
            "version": "2.0.0",
            "hash": offer["hash"],
            "url": files.url("/otelcol-2.0.0.bin"),
            "content_hash": files.sha256(PAYLOAD),
            "headers": 1,
        }
    }
    assert (installed["name"], installed["version"], installed["hash"]) == (
        "",
        "2.0.0",
        offer["hash"],
    )

    # opamp-go fetched the file once, with the offered header, and said so as it went
    assert [(d.path, d.status) for d in files.downloads] == [("/otelcol-2.0.0.bin", 200)]
    assert files.downloads[0].headers["authorization"] == TOKEN["Authorization"]
    assert done["instance_uid"] == upgraded["instance_uid"] == uid
    assert (
        done["package_statuses"]["server_provided_all_packages_hash"] == offer["all_packages_hash"]
    )
    assert done["package_statuses"]["error"] == ""
    assert _statuses(done) == {
        "name": "",
        "status": INSTALLED,
        "agent_has_version": "2.0.0",
        "agent_has_hash": offer["hash"],
        "server_offered_version": "2.0.0",
        "server_offered_hash": offer["hash"],
        "error": "",
    }
    reports = [
        (_statuses(e) or {}).get("status")
        for e in server.harness.seen
        if e["event"] == "agent_message" and e["instance_uid"] == uid and "package_statuses" in e
    ]
    assert reports[0] is None, "the first report has no packages yet"
    assert DOWNLOADING in reports
    assert reports.index(DOWNLOADING) < reports.index(INSTALLED)
    # the same agent (uid, service.instance.id) now runs 2.0.0
    assert _versions(server, uid)[0] == "1.0.0"
    assert _versions(server, uid)[-1] == "2.0.0"
    assert upgraded["identifying"]["service.instance.id"].replace("-", "") == uid
    offers = [e for e in server.harness.seen if e["event"] == "packages_offered"]
    assert len(offers) == 1


@pytest.mark.parametrize(
    ("case", "path", "sha256", "error"),
    [
        pytest.param(
            "wrong sha256",
            "/otelcol-2.0.0.bin",
            PackageFiles.sha256(b"other"),
            "content hash mismatch",
            id="wrong-sha256",
        ),
        pytest.param(
            "missing file",
            "/nowhere.bin",
            PackageFiles.sha256(PAYLOAD),
            "HTTP response=404",
            id="missing-file",
        ),
    ],
)
def test_a_package_that_cannot_be_installed_is_install_failed_and_the_version_stays(
    files: PackageFiles, case: str, path: str, sha256: str, error: str
) -> None:
    with _server(files.url(path), sha256) as server:
        offer = server.harness.wait_for("listening")["package"]
        with _agent(server, "ws") as agent:
            uid = agent.wait_for("started")["instance_uid"]
            failed = agent.wait_for("package_install_failed", timeout=20)
            report = server.harness.wait_for(
                "agent_message", timeout=20, where=_status_is(INSTALL_FAILED)
            )
            # two 1 s heartbeats after the failure: no second offer, no new version
            seq = report["sequence_num"]
            server.harness.wait_for(
                "agent_message",
                timeout=10,
                where=lambda e: e["instance_uid"] == uid and e["sequence_num"] >= seq + 2,
            )

    assert (failed["name"], failed["version"], failed["hash"]) == ("", "2.0.0", offer["hash"])
    assert error in failed["error"], case
    status = _statuses(report)
    assert status is not None
    assert status["error"] == failed["error"]
    assert (status["agent_has_version"], status["agent_has_hash"]) == ("", "")
    assert (status["server_offered_version"], status["server_offered_hash"]) == (
        "2.0.0",
        offer["hash"],
    )
    assert (
        report["package_statuses"]["server_provided_all_packages_hash"]
        == offer["all_packages_hash"]
    )
    if case == "wrong sha256":
        assert f"the offer's content_hash is {sha256}" in failed["error"]
        assert PackageFiles.sha256(PAYLOAD) in failed["error"], "the hash of what was downloaded"
    assert not any(e["event"] == "package_installed" for e in _drain(agent))
    assert set(_versions(server, uid)) == {"1.0.0"}
    assert len([e for e in server.harness.seen if e["event"] == "packages_offered"]) == 1
    assert len(files.downloads) == 1
