"""The agent simulator taking packages from opamp-go's reference server, an OpAMP
implementation that is not ours: the server offers one top-level package whose file a real
HTTP server serves; over both transports every simulated agent reports Downloading, fetches
the file with the offered header, checks its SHA-256, reports Installed and runs the new
version (service.version). A wrong hash, a missing file and a download that takes too long
are each InstallFailed with the error, the version unchanged. What the server saw is
compared with what the simulator (its API and its CLI) counted."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from opamp_operator.simulator import Simulation, SimulationSettings
from opamp_operator.simulator.protocol import CAPABILITIES, PACKAGE_CAPABILITIES
from opamp_operator.simulator.settings import Transport
from world.collector import (
    JsonlProcess,
    PackageFiles,
    ReferenceServer,
    package_offer_flags,
    start_reference_server,
)

pytestmark = pytest.mark.world

AGENTS = 5
PAYLOAD = os.urandom(200_000)
PATH = "/otelcol-2.0.0.bin"
SLOW = "/slow.bin"
NAME = "otelcol"
TOKEN = {"Authorization": "Bearer package-token"}
INSTALLED = "PackageStatusEnum_Installed"
INSTALL_FAILED = "PackageStatusEnum_InstallFailed"
DOWNLOADING = "PackageStatusEnum_Downloading"

Event = dict[str, Any]


@pytest.fixture
def files() -> Iterator[PackageFiles]:
    with PackageFiles(
        {PATH: PAYLOAD, SLOW: PAYLOAD}, required_headers=TOKEN, delays={SLOW: 10.0}
    ) as served:
        yield served


def _server(url: str, sha256: str) -> ReferenceServer:
    flags = package_offer_flags(url, sha256, "2.0.0", name=NAME, headers=TOKEN)
    return start_reference_server(None, *flags)


def _settings(url: str, transport: Transport, **overrides: Any) -> SimulationSettings:
    options: dict[str, Any] = {
        "agents": AGENTS,
        "heartbeat": 1.0,
        "connect_rate": 100.0,
        "pod_prefix": "pkg",
        "namespace": "proofs",
        "progress_interval": 1.0,
        "backoff_initial": 0.2,
        "backoff_max": 1.0,
        "accept_packages": True,
        "service_version": "1.0.0",
        **overrides,
    }
    return SimulationSettings(endpoint=url, transport=transport, **options)


def _per_agent(
    harness: JsonlProcess, uids: set[str], matches: Callable[[Event], bool], timeout: float = 20
) -> dict[str, Event]:
    """The first message from each agent in `uids` that `matches`; waits until all have one."""
    found: dict[str, Event] = {}

    def where(ev: Event) -> bool:
        uid = ev["instance_uid"]
        if uid in uids and uid not in found and matches(ev):
            found[uid] = ev
        return len(found) == len(uids)

    harness.wait_for("agent_message", timeout=timeout, where=where)
    return found


def _status(ev: Event) -> dict[str, Any] | None:
    ps = ev.get("package_statuses")
    return None if ps is None else ps["packages"].get(NAME)


def _messages(harness: JsonlProcess, uid: str) -> list[Event]:
    while not harness.events.empty():
        harness.seen.append(harness.events.get())
    return [e for e in harness.seen if e["event"] == "agent_message" and e["instance_uid"] == uid]


def _versions(harness: JsonlProcess, uid: str) -> list[str]:
    described = [e for e in _messages(harness, uid) if "identifying" in e]
    return [e["identifying"].get("service.version", "") for e in described]


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_simulated_agents_download_install_and_run_the_offered_package(
    files: PackageFiles, transport: Transport
) -> None:
    server = await asyncio.to_thread(_server, files.url(PATH), files.sha256(PAYLOAD))
    try:
        offer = server.harness.wait_for("listening")["package"]
        url = server.ws_url if transport == "ws" else server.http_url
        async with Simulation(_settings(url, transport)) as sim:
            assert await sim.wait_until("installed", within=30), sim.stats.progress_line(sim.now())
            uids = {agent.instance_uid.hex() for agent in sim.agents}
            installed = await asyncio.to_thread(
                _per_agent,
                server.harness,
                uids,
                lambda e: (_status(e) or {}).get("status") == INSTALLED,
            )
            upgraded = await asyncio.to_thread(
                _per_agent,
                server.harness,
                uids,
                lambda e: e.get("identifying", {}).get("service.version") == "2.0.0",
            )
            summary = await sim.stop()
    finally:
        await asyncio.to_thread(server.harness.stop)

    for uid in uids:
        assert installed[uid]["package_statuses"] == {
            "server_provided_all_packages_hash": offer["all_packages_hash"],
            "error": "",
            "packages": {
                NAME: {
                    "name": NAME,
                    "status": INSTALLED,
                    "agent_has_version": "2.0.0",
                    "agent_has_hash": offer["hash"],
                    "server_offered_version": "2.0.0",
                    "server_offered_hash": offer["hash"],
                    "error": "",
                }
            },
        }
        messages = _messages(server.harness, uid)
        assert messages[0]["capabilities"] == CAPABILITIES | PACKAGE_CAPABILITIES
        reports = [_status(e) for e in messages if "package_statuses" in e]
        assert reports[0] is None, "the first report: no packages yet"
        assert [r["status"] for r in reports[1:3] if r] == [DOWNLOADING, INSTALLED]
        assert _versions(server.harness, uid) == ["1.0.0", "2.0.0"]
        first_id = messages[0]["identifying"]["service.instance.id"]
        assert upgraded[uid]["identifying"]["service.instance.id"] == first_id
    offers = [e for e in server.harness.seen if e["event"] == "packages_offered"]
    assert sorted(e["instance_uid"] for e in offers) == sorted(uids), "one offer per agent"

    assert [(d.path, d.status) for d in files.downloads] == [(PATH, 200)] * AGENTS
    assert all(d.headers["authorization"] == TOKEN["Authorization"] for d in files.downloads)
    assert (summary.packages_installed, summary.package_install_failures) == (AGENTS, 0)
    assert summary.package_downloads == AGENTS
    assert summary.package_download_bytes == AGENTS * len(PAYLOAD)
    [package] = summary.packages
    assert (package.name, package.version, package.hash) == (NAME, "2.0.0", offer["hash"])
    assert (package.offered, package.installed, package.failed) == (AGENTS, AGENTS, 0)
    assert package.all_installed_s is not None
    assert summary.errors == {}


@pytest.mark.parametrize(
    ("case", "path", "good_hash", "error"),
    [
        ("wrong sha256", PATH, False, "content hash mismatch"),
        ("missing file", "/nowhere.bin", True, "HTTP 404"),
        ("too slow", SLOW, True, "timed out after 0.5 s"),
    ],
    ids=["wrong-sha256", "missing-file", "too-slow"],
)
async def test_a_package_agents_cannot_install_is_install_failed_and_the_version_stays(
    files: PackageFiles, case: str, path: str, good_hash: bool, error: str
) -> None:
    sha256 = files.sha256(PAYLOAD if good_hash else b"something else")
    server = await asyncio.to_thread(_server, files.url(path), sha256)
    settings = _settings(server.ws_url, "ws", package_download_timeout=0.5)
    try:
        offer = server.harness.wait_for("listening")["package"]
        async with Simulation(settings) as sim:
            assert await sim.wait_until(
                lambda s: sum(len(p.failed) for p in s.packages.values()) == AGENTS, within=30
            ), sim.stats.progress_line(sim.now())
            uids = {agent.instance_uid.hex() for agent in sim.agents}
            failed = await asyncio.to_thread(
                _per_agent,
                server.harness,
                uids,
                lambda e: (_status(e) or {}).get("status") == INSTALL_FAILED,
            )
            summary = await sim.stop()
    finally:
        await asyncio.to_thread(server.harness.stop)

    for uid, ev in failed.items():
        status = _status(ev)
        assert status is not None
        assert error in status["error"], case
        assert (status["agent_has_version"], status["agent_has_hash"]) == ("", "")
        assert (status["server_offered_version"], status["server_offered_hash"]) == (
            "2.0.0",
            offer["hash"],
        )
        assert (
            ev["package_statuses"]["server_provided_all_packages_hash"]
            == offer["all_packages_hash"]
        )
        assert set(_versions(server.harness, uid)) == {"1.0.0"}
        if case == "wrong sha256":
            assert f"has sha256 {files.sha256(PAYLOAD)}" in status["error"]
            assert f"the offer's content_hash is {sha256}" in status["error"]
    assert len(files.downloads) == AGENTS, "failed, and not offered (or fetched) again"
    assert (summary.packages_installed, summary.package_install_failures) == (0, AGENTS)
    [package] = summary.packages
    assert (package.offered, package.installed, package.failed) == (AGENTS, 0, AGENTS)
    assert error in package.error_example
    assert summary.errors == {}


def test_cli_installs_the_package_and_its_summary_agrees_with_the_download_server(
    files: PackageFiles,
) -> None:
    with _server(files.url(PATH), files.sha256(PAYLOAD)) as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "opamp_operator",
                "simulate",
                f"--endpoint={server.ws_url}",
                f"--agents={AGENTS}",
                "--accept-packages",
                "--service-version=1.0.0",
                "--package-downloads=2",
                "--stop-when=installed",
                "--duration=30",
                "--progress-interval=0.5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        uids: set[str] = set()

        def offered(ev: Event) -> bool:
            uids.add(ev["instance_uid"])
            return len(uids) == AGENTS

        server.harness.wait_for("packages_offered", where=offered)
        goodbyes = _per_agent(server.harness, uids, lambda e: e.get("disconnect") is True)
    summary = json.loads(proc.stdout)
    assert summary["stopped_by"] == "installed"
    assert summary["packages_installed"] == AGENTS
    assert (
        summary["package_download_bytes"]
        == AGENTS * len(PAYLOAD)
        == len(files.downloads) * len(PAYLOAD)
    )
    [package] = summary["packages"]
    assert (package["name"], package["version"], package["installed"]) == (NAME, "2.0.0", AGENTS)
    assert f"package {NAME} 2.0.0 offered {AGENTS} installed {AGENTS}" in proc.stderr
    assert len(goodbyes) == AGENTS
