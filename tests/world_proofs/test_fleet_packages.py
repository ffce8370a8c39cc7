"""A fleet's `spec.version` with a package, offered by our own server to real opamp-go
agents that accept packages (test-deps/opamp-go, `--accept-packages`: opamp-go's client
downloads the file over real HTTP, the harness checks its SHA-256, then "runs" the
package: its service.version becomes the package's), under `opamp-operator run` on the
test world's cluster and under `serve` from a fleets file.

Proven: the package reaches the agents that accept packages and only them; status counts
who is outdated and who failed, with the condition, the worst agents and an Event; the
read API says each agent's package state; a file whose SHA-256 is not the one offered is
never installed (InstallFailed with the reason, the agent stays on its version), and is
not offered again in a loop.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import GROUP, VERSION
from world.cluster import LocalCluster
from world.collector import JsonlProcess, PackageFiles, start_go_agent
from world.fleets import (
    CONFIG_V1,
    condition,
    create_fleet,
    create_rollout,
    deploy_running,
    events_of,
    fleet_status,
    patch_fleet_spec,
    rollout_control,
    rollout_status,
)
from world.operator import ServeProcess, start_operator, start_serve, write_fleets
from world.processes import eventually, free_port

pytestmark = pytest.mark.world

FLEET = "collectors"
GOOD = os.urandom(200_000)
OTHER = os.urandom(1_000)


@pytest.fixture
def files() -> Iterator[PackageFiles]:
    served_files = {
        "/otelcol-2.0.0.bin": GOOD,
        "/otelcol-2.0.1.bin": OTHER,
        "/otelcol-2.0.2.bin": b"not what its sha256 says",
    }
    with PackageFiles(served_files) as served:
        yield served


def _version(files: PackageFiles, expected: str, path: str, sha256: str) -> dict[str, Any]:
    return {"expected": expected, "package": {"url": files.url(path), "sha256": sha256}}


def _offers(agent: JsonlProcess) -> int:
    while not agent.events.empty():
        agent.seen.append(agent.events.get())
    return sum(1 for e in agent.seen if e["event"] == "packages_available")


@pytest.mark.usefixtures("crds")
def test_run_offers_the_fleet_s_package_and_reports_installs_and_failures(
    cluster: LocalCluster,
    api_client: Any,
    namespace: str,
    tmp_path: Path,
    files: PackageFiles,
) -> None:
    labels = {"app": "collector"}
    pods = deploy_running(api_client, namespace, labels, 3)
    version = _version(files, "2.0.0", "/otelcol-2.0.0.bin", PackageFiles.sha256(GOOD))
    create_fleet(api_client, namespace, FLEET, labels, CONFIG_V1, version=version)
    with start_operator(cluster.kubeconfig, tmp_path) as operator:
        claims = [f"--attr=k8s.pod.uid={p.metadata.uid}" for p in pods]
        common = ["--heartbeat=1s", "--attr=service.version=1.0.0"]
        with (
            start_go_agent(operator.ws_url, "--accept-packages", *common, claims[0]) as ws,
            start_go_agent(operator.http_url, "--accept-packages", *common, claims[1]) as http,
            start_go_agent(operator.ws_url, *common, claims[2]) as plain,
        ):
            for agent in (ws, http):
                agent.wait_for("package_installed", timeout=60)
            status = eventually(
                "two agents on 2.0.0, the one without packages outdated",
                lambda: (
                    s
                    if (s := fleet_status(api_client, namespace, FLEET)).get("agentsOutdated") == 1
                    and s.get("agentsMapped") == 3
                    else None
                ),
            )
            assert status["targetVersion"] == "2.0.0"
            assert (status["packageInstalling"], status["packageFailed"]) == (0, 0)
            assert {v["version"]: v["count"] for v in status["versions"]} == {
                "2.0.0": 2,
                "1.0.0": 1,
            }
            assert condition(status, "AgentsUpToDate") == "False"
            outdated = operator.get(f"/api/v1/fleets/{namespace}/{FLEET}/agents?state=outdated")
            (left,) = outdated["agents"]
            assert left["pod"] == f"{namespace}/{pods[2].metadata.name}"
            assert left["package"] == {
                "offeredVersion": "2.0.0",
                "accepted": False,
                "status": None,
                "error": "",
            }
            listed = operator.get(f"/api/v1/fleets/{namespace}/{FLEET}/agents")["agents"]
            states = sorted((a["version"], (a["package"] or {}).get("status")) for a in listed)
            assert states == [("1.0.0", None), ("2.0.0", "Installed"), ("2.0.0", "Installed")]
            assert _offers(plain) == 0  # it does not accept packages: never offered
            assert [e.path for e in files.downloads] == ["/otelcol-2.0.0.bin"] * 2

            # A version whose file is not what its SHA-256 says: never installed. (Not the
            # SHA-256 of the file they have: an agent that has a file of the offered hash
            # does not download it again, as the spec says.)
            wrong = _version(files, "2.0.1", "/otelcol-2.0.1.bin", PackageFiles.sha256(b"-"))
            patch_fleet_spec(api_client, namespace, FLEET, {"version": wrong})
            for agent in (ws, http):
                failed = agent.wait_for("package_install_failed", timeout=60)
                assert "hash" in failed["error"].lower() or "sha" in failed["error"].lower()
            status = eventually(
                "two install failures in status",
                lambda: (
                    s
                    if (s := fleet_status(api_client, namespace, FLEET)).get("packageFailed") == 2
                    else None
                ),
            )
            assert status["agentsOutdated"] == 3
            worst = [w for w in status["worstAgents"] if w["reason"] == "PackageFailed"]
            assert len(worst) == 2
            assert all(w["message"].startswith("package 2.0.1 failed to install: ") for w in worst)
            reasons = {reason for reason, _ in events_of(api_client, namespace, "CollectorFleet")}
            assert {"Outdated", "PackageFailed"} <= reasons
            assert all(
                a["version"] == "2.0.0"
                for a in operator.get(f"/api/v1/fleets/{namespace}/{FLEET}/agents")["agents"]
                if a["package"]["accepted"]
            )
            offered = _offers(ws)
            assert offered == 2  # 2.0.0 once, 2.0.1 once: a failed install is not re-offered


def test_serve_offers_a_fleets_file_package(tmp_path: Path, files: PackageFiles) -> None:
    fleets = tmp_path / "fleets.yaml"

    def write(version: dict[str, Any]) -> None:
        fleet = {"name": "vms", "selector": {}, "config": CONFIG_V1, "version": version}
        fleets.write_text(yaml.safe_dump({"fleets": [fleet]}))

    write(_version(files, "2.0.0", "/otelcol-2.0.0.bin", PackageFiles.sha256(GOOD)))
    with (
        start_serve(fleets, tmp_path, "--reload-seconds=0.5") as server,
        start_go_agent(
            server.http_url, "--accept-packages", "--heartbeat=1s", "--attr=service.version=1.0.0"
        ) as agent,
    ):
        agent.wait_for("package_installed", timeout=60)
        found = server.wait_agent(
            lambda a: (
                a["identifying_attributes"].get("service.version") == "2.0.0"
                and a["package_statuses"]["packages"][""]["status"] == "Installed"
            ),
            "the agent on 2.0.0 with the package installed",
        )
        assert found["package_statuses"]["packages"][""]["version"] == "2.0.0"
        write(_version(files, "2.0.1", "/otelcol-2.0.1.bin", PackageFiles.sha256(b"-")))
        agent.wait_for("package_install_failed", timeout=60)
        failed = server.wait_agent(
            lambda a: a["package_statuses"]["packages"][""]["status"] == "InstallFailed",
            "the failed install in the read API",
        )
        assert failed["identifying_attributes"]["service.version"] == "2.0.0"
        assert failed["package_statuses"]["packages"][""]["error_message"]


def test_the_crd_refuses_a_package_without_a_sha256(
    api_client: Any, crds: None, namespace: str
) -> None:
    co: Any = k8s.CustomObjectsApi(api_client)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CollectorFleet",
        "metadata": {"name": "bad"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "config": {"inline": CONFIG_V1},
            "version": {"expected": "2.0.0", "package": {"url": "https://dl.example/x"}},
        },
    }
    with pytest.raises(ApiException) as refused:
        co.create_namespaced_custom_object(GROUP, VERSION, namespace, "collectorfleets", body)
    assert refused.value.status == 422
    assert "sha256" in str(refused.value.body)


def _installed(agent: JsonlProcess) -> list[str]:
    """The versions the agent installed, in order."""
    _offers(agent)  # drain
    return [e["version"] for e in agent.seen if e["event"] == "package_installed"]


def _offered(agent: JsonlProcess, version: str) -> bool:
    _offers(agent)
    return any(
        e["event"] == "packages_available"
        and any(p["version"] == version for p in e["packages"].values())
        for e in agent.seen
    )


@pytest.mark.usefixtures("crds")
def test_a_rollout_stages_a_version_change_and_rolls_a_failed_install_back(
    cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path, files: PackageFiles
) -> None:
    """A version change is a revision: the ConfigRollout gives it to one agent, pauses,
    and on promote to the others; a version whose file is wrong fails its one member's
    install, and the rollout rolls back: no other agent is ever offered it."""
    labels = {"app": "collector"}
    pods = deploy_running(api_client, namespace, labels, 3)
    first = _version(files, "2.0.0", "/otelcol-2.0.0.bin", PackageFiles.sha256(GOOD))
    create_fleet(api_client, namespace, FLEET, labels, CONFIG_V1, version=first)
    with (
        start_operator(cluster.kubeconfig, tmp_path, "--rollout-interval=1") as operator,
        contextlib.ExitStack() as stack,
    ):
        agents = [
            stack.enter_context(
                start_go_agent(
                    operator.ws_url,
                    "--accept-packages",
                    "--heartbeat=1s",
                    "--attr=service.version=1.0.0",
                    f"--attr=k8s.pod.uid={pod.metadata.uid}",
                )
            )
            for pod in pods
        ]
        for agent in agents:
            agent.wait_for("package_installed", timeout=60)
        steps = [{"agents": 1, "pause": {"untilPromoted": True}}, {"percent": 100}]
        create_rollout(api_client, namespace, FLEET, FLEET, steps=steps)
        _phase(api_client, namespace, "Succeeded")

        second = _version(files, "2.0.1", "/otelcol-2.0.1.bin", PackageFiles.sha256(OTHER))
        patch_fleet_spec(api_client, namespace, FLEET, {"version": second})
        paused = _phase(api_client, namespace, "Paused")
        assert paused["currentStep"] == 0
        on = [a for a in agents if "2.0.1" in _installed(a)]
        assert len(on) == 1, [_installed(a) for a in agents]
        assert not any(_offered(a, "2.0.1") for a in agents if a is not on[0])
        assert fleet_status(api_client, namespace, FLEET)["desiredHash"] == paused["desiredHash"]
        rollout_control(api_client, namespace, FLEET, "promote")
        _phase(api_client, namespace, "Succeeded")
        eventually("every agent on 2.0.1", lambda: all("2.0.1" in _installed(a) for a in agents))

        third = _version(files, "2.0.2", "/otelcol-2.0.2.bin", PackageFiles.sha256(b"-"))
        patch_fleet_spec(api_client, namespace, FLEET, {"version": third})
        rolled = _phase(api_client, namespace, "RolledBack")
        failing = rolled["failingAgents"]
        assert [f["reason"] for f in failing] == ["ConfigFailed"]
        assert failing[0]["message"].startswith("package 2.0.2 failed to install: ")
        assert sum(_offered(a, "2.0.2") for a in agents) == 1
        assert not any("2.0.2" in _installed(a) for a in agents)


def _phase(api_client: Any, namespace: str, phase: str) -> dict[str, Any]:
    found: dict[str, Any] = eventually(
        f"rollout phase {phase}",
        lambda: (
            s if (s := rollout_status(api_client, namespace, FLEET)).get("phase") == phase else None
        ),
        timeout=90,
    )
    return found


def test_serve_stages_a_version_change_resumes_after_a_sigkill_and_rolls_back(
    tmp_path: Path, files: PackageFiles
) -> None:
    """The same staging under `serve`, from a fleets file's `rollout` with its progress
    in --state-dir: a version change reaches one agent until promoted (an edit of the
    file's promote token), a SIGKILLed serve restarted mid-pause holds that one agent and
    no other, and a version whose file is wrong fails its one member's install and rolls
    back: the member is offered the stable package again, no other agent ever sees it."""
    fleets_file, state = tmp_path / "fleets.yaml", tmp_path / "state"
    steps = [{"agents": 1, "pause": {"untilPromoted": True}}, {"percent": 100}]

    def write(version: dict[str, Any], promote: str = "") -> None:
        rollout = {"steps": steps, "promote": promote}
        fleet = {"name": "vms", "selector": {}, "config": CONFIG_V1, "version": version}
        write_fleets(fleets_file, [{**fleet, "rollout": rollout}])

    args = ("--reload-seconds=0.5", f"--state-dir={state}", "--rollout-interval=0.5")
    port = free_port()
    first = _version(files, "2.0.0", "/otelcol-2.0.0.bin", PackageFiles.sha256(GOOD))
    write(first)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(start_serve(fleets_file, tmp_path, *args, port=port))
        agents = [
            stack.enter_context(
                start_go_agent(
                    server.http_url,
                    "--accept-packages",
                    "--heartbeat=1s",
                    "--attr=service.version=1.0.0",
                )
            )
            for _ in range(3)
        ]
        for agent in agents:
            agent.wait_for("package_installed", timeout=60)
        _serve_phase(server, "Succeeded")

        write(_version(files, "2.0.1", "/otelcol-2.0.1.bin", PackageFiles.sha256(OTHER)))
        paused = _serve_phase(server, "Paused")
        eventually("one agent on 2.0.1", lambda: sum("2.0.1" in _installed(a) for a in agents))
        (on,) = [a for a in agents if "2.0.1" in _installed(a)]
        assert paused["steps"][0]["applied"] == 1

        server.proc.kill()
        server.proc.wait(timeout=10)
        server = stack.enter_context(
            start_serve(fleets_file, tmp_path, *args, "--rollout-startup-grace=3", port=port)
        )
        time.sleep(6)  # through the grace and some plans: nobody else is offered 2.0.1
        assert _serve_phase(server, "Paused")["desiredHash"] == paused["desiredHash"]
        assert not any(_offered(a, "2.0.1") for a in agents if a is not on)

        write(_version(files, "2.0.1", "/otelcol-2.0.1.bin", PackageFiles.sha256(OTHER)), "1")
        _serve_phase(server, "Succeeded")
        eventually("every agent on 2.0.1", lambda: all("2.0.1" in _installed(a) for a in agents))

        write(_version(files, "2.0.2", "/otelcol-2.0.2.bin", PackageFiles.sha256(b"-")), "1")
        rolled = _serve_phase(server, "RolledBack")
        (failing,) = rolled["failingAgents"]
        assert failing["reason"] == "ConfigFailed"
        assert failing["message"].startswith("package 2.0.2 failed to install: ")
        assert sum(_offered(a, "2.0.2") for a in agents) == 1
        assert not any("2.0.2" in _installed(a) for a in agents)
        (member,) = [a for a in agents if _offered(a, "2.0.2")]
        eventually(
            "the member offered the stable 2.0.1 again", lambda: _last_offer(member) == "2.0.1"
        )
        # Per agent in the read API: the member's failed install, everyone on 2.0.1.
        reported = {a["instance_uid"]: a for a in server.agents()}
        assert failing["instanceUid"] in reported
        assert {a["identifying_attributes"]["service.version"] for a in reported.values()} == {
            "2.0.1"
        }


def _last_offer(agent: JsonlProcess) -> str:
    """The version of the last package offer the agent received."""
    _offers(agent)
    offers = [e for e in agent.seen if e["event"] == "packages_available"]
    return str(next(iter(offers[-1]["packages"].values()))["version"]) if offers else ""


def _serve_phase(server: ServeProcess, phase: str) -> dict[str, Any]:
    found: dict[str, Any] = eventually(
        f"serve's rollout phase {phase}",
        lambda: (
            r
            if (r := server.get("/api/v1/rollouts")["rollouts"][0]).get("phase") == phase
            else None
        ),
        timeout=90,
    )
    return found
