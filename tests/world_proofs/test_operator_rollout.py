"""ConfigRollout under `opamp-operator run` on the local cluster: staged config changes
reaching real opamp-go agents that claim kwok-run pods, gated on what they report.

Which agent gets which revision is read from the agents themselves (the config they
were offered and the status they report), not from the operator's view of them.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from world.cluster import LocalCluster
from world.collector import start_collector
from world.fleets import (
    CONFIG_V1,
    CONFIG_V2,
    CONFIG_V3,
    PodAgents,
    condition,
    create_fleet,
    create_rollout,
    events_of,
    fleet_status,
    patch_rollout,
    rollout_control,
    rollout_status,
    set_fleet_config,
    single_file_hash,
)
from world.operator import OperatorProcess, start_operator
from world.processes import eventually

pytestmark = pytest.mark.world

LABELS = {"app": "collector"}
FLEET = "collectors"
ROLLOUT = "collectors"
BROKEN_MARK = "rollout-proof: refused by some agents"
CONFIG_BAD = CONFIG_V2 + f"# {BROKEN_MARK}\n"
H1, H2, H3, HBAD = (single_file_hash(c) for c in (CONFIG_V1, CONFIG_V2, CONFIG_V3, CONFIG_BAD))


@pytest.fixture
def operator(crds: None, cluster: LocalCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with start_operator(cluster.kubeconfig, tmp_path, "--rollout-interval=1") as op:
        yield op


class Fleet(PodAgents):
    """A fleet of opamp-go agents, one per kwok pod (claimed by pod uid), and its rollout."""

    def __init__(self, api_client: Any, namespace: str, operator: OperatorProcess) -> None:
        super().__init__(api_client, namespace, LABELS, operator.ws_url)
        self.operator = operator

    def create(self, config: str) -> None:
        create_fleet(self.api, self.ns, FLEET, LABELS, config)
        self.wait_on(single_file_hash(config), len(self.agents), "every agent on the first config")

    def rollout(self, **spec: Any) -> None:
        create_rollout(self.api, self.ns, ROLLOUT, FLEET, **spec)
        self.wait_phase("Succeeded")

    def status(self) -> dict[str, Any]:
        return rollout_status(self.api, self.ns, ROLLOUT)

    def wait_phase(
        self,
        phase: str,
        step: int | None = None,
        timeout: float = 60,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.status()
            ok = s.get("phase") == phase and (step is None or s.get("currentStep") == step)
            return s if ok and where(s) else None

        found: dict[str, Any] = eventually(
            f"rollout phase {phase}" + (f" at step {step}" if step is not None else ""),
            check,
            timeout=timeout,
        )
        return found

    def reasons(self) -> list[str]:
        return [r for r, _ in events_of(self.api, self.ns, "ConfigRollout")]


@pytest.fixture
def fleet(operator: OperatorProcess, api_client: Any, namespace: str) -> Iterator[Fleet]:
    f = Fleet(api_client, namespace, operator)
    try:
        yield f
    finally:
        f.stop()


def _bucket(desired_hash: str, uid: str) -> int:
    """docs/rollout.md: the first 8 bytes of sha256(desiredHash/instanceUid)."""
    return int.from_bytes(hashlib.sha256(f"{desired_hash}/{uid}".encode()).digest()[:8], "big")


def test_staged_rollout_with_pauses_and_promote(fleet: Fleet) -> None:
    pods = fleet.deploy(4)
    for pod in pods:
        fleet.start_agent(pod)
    fleet.create(CONFIG_V1)
    fleet.rollout(
        steps=[
            {"agents": 1, "pause": {"untilPromoted": True}},
            {"percent": 50, "pause": {"seconds": 3}},
            {"percent": 100},
        ]
    )
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V2)
    status = fleet.wait_phase("Paused", step=0)
    assert status["pauseReason"] == "Step"
    assert status["desiredHash"] == H2
    assert status["stableHash"] == H1
    canary = fleet.wait_on(H2, 1, "the canary on v2")
    assert fleet.on(H1) == set(fleet.agents) - canary
    time.sleep(3)  # a hold, on purpose: a pause until promoted offers v2 to no one else
    assert fleet.on(H2) == canary
    assert fleet.status()["phase"] == "Paused"
    f_status = fleet_status(fleet.api, fleet.ns, FLEET)
    assert f_status["stableHash"] == H1
    assert f_status["desiredHash"] == H2
    # Agents the rollout has not reached are on the stable config: not drifted, not failed.
    assert f_status["drifted"] == 0
    assert f_status["configFailed"] == 0

    rollout_control(fleet.api, fleet.ns, ROLLOUT, "promote")
    status = fleet.wait_phase("Paused", step=1)
    half = fleet.wait_on(H2, 2, "half the agents on v2")
    assert canary < half
    status = fleet.wait_phase("Succeeded", timeout=60)
    fleet.wait_on(H2, 4, "every agent on v2")
    assert status["stableHash"] == H2
    assert [s["offered"] for s in status["steps"]] == [1, 2, 4]
    assert all(s["applied"] == s["offered"] for s in status["steps"])
    assert condition(status, "Ready") == "True"
    reasons = fleet.reasons()
    for expected in ("StepStarted", "Paused", "Promoted", "StepPassed", "Succeeded"):
        assert expected in reasons
    # Nobody was offered v2 twice or offered it before its step.
    for pod in fleet.agents:
        assert fleet.offered(pod).count(H2) == 1
    f_status = eventually(
        "the fleet's stable revision to follow",
        lambda: (
            s if (s := fleet_status(fleet.api, fleet.ns, FLEET)).get("stableHash") == H2 else None
        ),
    )
    assert condition(f_status, "Ready") == "True"


def test_a_config_failing_on_some_agents_is_rolled_back_everywhere(fleet: Fleet) -> None:
    pods = fleet.deploy(4)
    for i, pod in enumerate(pods):
        fleet.start_agent(pod, *([f"--fail-containing={BROKEN_MARK}"] if i < 2 else []))
    fleet.create(CONFIG_V1)
    fleet.rollout(steps=[{"percent": 100}])
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_BAD)
    status = fleet.wait_phase("RolledBack")
    assert status["stableHash"] == H1
    assert {a["reason"] for a in status["failingAgents"]} == {"ConfigFailed"}
    assert len(status["failingAgents"]) == 2
    assert "rejected by opamp-go-agent" in status["failingAgents"][0]["message"]
    assert condition(status, "Stalled") == "True"
    fleet.wait_on(H1, 4, "every agent back on the stable config")
    # The two that took the bad config were offered the stable bytes again.
    for pod in pods[2:]:
        assert fleet.offered(pod.metadata.name)[-2:] == [HBAD, H1]
    f_status = eventually(
        "the fleet Stalled by the rollback",
        lambda: (
            s
            if condition(s := fleet_status(fleet.api, fleet.ns, FLEET), "Stalled") == "True"
            else None
        ),
    )
    stalled = next(c for c in f_status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "RolloutRolledBack"
    assert "GateFailed" in fleet.reasons()
    assert "RolledBack" in fleet.reasons()

    # A fixed config supersedes the failed one and goes through.
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V2)
    fleet.wait_phase("Succeeded", where=lambda s: s.get("desiredHash") == H2)
    fleet.wait_on(H2, 4, "every agent on the fixed config")


def test_pause_resume_abort_retry(fleet: Fleet) -> None:
    pods = fleet.deploy(3)
    for pod in pods:
        fleet.start_agent(pod)
    fleet.create(CONFIG_V1)
    fleet.rollout(
        steps=[{"agents": 1}, {"agents": 2, "pause": {"untilPromoted": True}}, {"percent": 100}]
    )
    patch_rollout(fleet.api, fleet.ns, ROLLOUT, {"spec": {"paused": True}})
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V2)
    status = fleet.wait_phase("Paused", where=lambda s: s.get("desiredHash") == H2)
    assert status["pauseReason"] == "SpecPaused"
    time.sleep(3)  # a hold, on purpose: paused in spec, the rollout offers v2 to no one
    assert fleet.on(H2) == set()

    patch_rollout(fleet.api, fleet.ns, ROLLOUT, {"spec": {"paused": False}})
    fleet.wait_phase("Paused", step=1, where=lambda s: s.get("pauseReason") == "Step")
    members = fleet.wait_on(H2, 2, "two agents on v2")

    rollout_control(fleet.api, fleet.ns, ROLLOUT, "abort")
    status = fleet.wait_phase("Aborted")
    assert condition(status, "Stalled") == "True"
    fleet.wait_on(H1, 3, "every agent back on v1 after the abort")

    rollout_control(fleet.api, fleet.ns, ROLLOUT, "retry")
    status = fleet.wait_phase("Paused", step=1, where=lambda s: s.get("attempt") == 2)
    # Membership is a function of the revision: the retry reaches the same agents.
    assert fleet.wait_on(H2, 2, "the same two agents on v2 again") == members
    rollout_control(fleet.api, fleet.ns, ROLLOUT, "promote")
    fleet.wait_phase("Succeeded")
    fleet.wait_on(H2, 3, "every agent on v2")
    reasons = fleet.reasons()
    for expected in ("Aborted", "Retried", "Resumed", "Succeeded"):
        assert expected in reasons


def test_preflight_blocks_on_a_missing_component(fleet: Fleet) -> None:
    pods = fleet.deploy(3)
    components = "--components=receivers/otlp,exporters/debug"
    fleet.start_agent(pods[0], components)
    fleet.start_agent(pods[1], components)
    fleet.start_agent(pods[2])  # reports no components
    fleet.create(CONFIG_V1)
    fleet.rollout()
    needs_otlphttp = CONFIG_V1.replace(
        "debug: {}", "debug: {}\n  otlphttp:\n    endpoint: http://127.0.0.1:1"
    ).replace("exporters: [debug]", "exporters: [debug, otlphttp]")
    set_fleet_config(fleet.api, fleet.ns, FLEET, needs_otlphttp)
    status = fleet.wait_phase(
        "Pending", where=lambda s: bool((s.get("preflight") or {}).get("blocked"))
    )
    assert status["preflight"]["missing"] == [{"component": "exporters/otlphttp", "agents": 2}]
    assert status["preflight"]["unreported"] == 1
    assert condition(status, "Stalled") == "True"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "PreflightFailed"
    assert "exporters/otlphttp" in stalled["message"]
    time.sleep(2)  # a hold, on purpose: a blocked preflight offers the config to no one
    assert fleet.on(H1) == set(fleet.agents)
    assert "PreflightFailed" in fleet.reasons()

    # A config the agents can run unblocks it.
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V2)
    fleet.wait_phase("Succeeded", where=lambda s: s.get("desiredHash") == H2)
    fleet.wait_on(H2, 3, "every agent on v2")


def test_operator_killed_mid_step_resumes_exactly(
    fleet: Fleet, cluster: LocalCluster, tmp_path: Path
) -> None:
    pods = fleet.deploy(4)
    for pod in pods:
        fleet.start_agent(pod)
    fleet.create(CONFIG_V1)
    fleet.rollout(steps=[{"agents": 2, "pause": {"untilPromoted": True}}, {"percent": 100}])
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V2)
    before = fleet.wait_phase("Paused", step=0)
    members = fleet.wait_on(H2, 2, "two agents on v2")

    old = fleet.operator
    os.killpg(old.record.pid, signal.SIGKILL)
    old.proc.wait(timeout=10)
    with start_operator(
        cluster.kubeconfig, tmp_path / "restarted", "--rollout-interval=1", port=old.port
    ) as restarted:
        fleet.operator = restarted

        def reconnected() -> bool:
            try:
                agents = restarted.get(f"/api/v1/fleets/{fleet.ns}/{FLEET}/agents")["agents"]
            except urllib.error.HTTPError as error:
                if error.code == 404:  # the restarted operator has not resumed the fleet yet
                    return False
                raise
            return len(agents) == 4

        eventually("every agent back on the restarted operator", reconnected)
        time.sleep(4)  # a hold, on purpose: four ticks (1 s) of the restarted planner
        after = fleet.status()
        for key in ("phase", "currentStep", "cutoff", "startedAt", "stepStartedAt", "attempt"):
            assert after.get(key) == before.get(key), key
        assert fleet.on(H2) == members
        for pod in set(fleet.agents) - members:
            assert H2 not in fleet.offered(pod)
        assert fleet.reasons().count("StepStarted") == 1
        rollout_control(fleet.api, fleet.ns, ROLLOUT, "promote")
        fleet.wait_phase("Succeeded")
        fleet.wait_on(H2, 4, "every agent on v2")
        assert fleet.reasons().count("StepStarted") == 2


def test_agents_joining_and_leaving_mid_rollout(fleet: Fleet) -> None:
    pods = fleet.deploy(5)
    for pod in pods[:4]:
        fleet.start_agent(pod)
    fleet.create(CONFIG_V1)
    fleet.rollout(steps=[{"percent": 50, "pause": {"untilPromoted": True}}, {"percent": 100}])
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V2)
    status = fleet.wait_phase("Paused", step=0)
    members = fleet.wait_on(H2, 2, "half the agents on v2")
    cutoff = int(status["cutoff"], 16)

    # One member leaves: not a failure.
    gone = sorted(members)[0]
    fleet.agents.pop(gone).stop()
    time.sleep(3)  # a hold, on purpose: the rollout stays Paused, no failure, meanwhile
    assert fleet.status()["phase"] == "Paused"

    # A new agent gets what its bucket says.
    joiner = fleet.start_agent(pods[4])
    uid = str(uuid.UUID(hex=joiner.wait_for("started", timeout=30)["instance_uid"]))
    expected = H2 if _bucket(H2, uid) <= cutoff else H1
    eventually(
        "the joiner on its bucket's revision", lambda: pods[4].metadata.name in fleet.on(expected)
    )
    assert fleet.offered(pods[4].metadata.name) == [expected]
    rollout_control(fleet.api, fleet.ns, ROLLOUT, "promote")
    fleet.wait_phase("Succeeded")
    fleet.wait_on(H2, 4, "every agent left on v2")


def test_a_new_revision_supersedes_a_running_rollout(fleet: Fleet) -> None:
    pods = fleet.deploy(4)
    for pod in pods:
        fleet.start_agent(pod)
    fleet.create(CONFIG_V1)
    fleet.rollout(steps=[{"agents": 2, "pause": {"untilPromoted": True}}, {"percent": 100}])
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V2)
    fleet.wait_phase("Paused", step=0)
    fleet.wait_on(H2, 2, "two agents on v2")
    set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V3)
    status = fleet.wait_phase("Paused", step=0, where=lambda s: s.get("desiredHash") == H3)
    assert status["stableHash"] == H1
    on_v3 = fleet.wait_on(H3, 2, "two agents on v3")
    eventually("nobody left on v2", lambda: not fleet.on(H2))
    assert fleet.on(H1) == set(fleet.agents) - on_v3
    assert "Superseded" in fleet.reasons()


def test_a_rollout_of_a_missing_fleet_is_stalled(
    operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    create_rollout(api_client, namespace, "orphan", "no-such-fleet")
    status = eventually(
        "the rollout Stalled",
        lambda: (
            s
            if condition(s := rollout_status(api_client, namespace, "orphan"), "Stalled") == "True"
            else None
        ),
    )
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "FleetNotFound"
    assert "no-such-fleet" in stalled["message"]


def test_an_agent_that_cannot_take_remote_config_is_unmanaged_not_failed(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The bare opampextension (the real Collector, no supervisor) does not accept remote
    config: the rollout counts it as unmanaged and goes through without it."""
    pods = fleet.deploy(3)
    for pod in pods[:2]:
        fleet.start_agent(pod)

    def claim(config: dict[str, Any]) -> None:
        config["extensions"]["opamp"]["agent_description"] = {
            "non_identifying_attributes": {"k8s.pod.uid": pods[2].metadata.uid}
        }

    collector = start_collector(fleet.operator.ws_url, tmp_path / "collector", extra=claim)
    try:
        fleet.create(CONFIG_V1)
        fleet.rollout(steps=[{"agents": 1}, {"percent": 100}])
        set_fleet_config(fleet.api, fleet.ns, FLEET, CONFIG_V2)
        status = fleet.wait_phase("Succeeded", where=lambda s: s.get("desiredHash") == H2)
        assert status["unmanaged"] == 1
        assert status["agents"] == 2
        assert status["failingAgents"] == []
        assert [s["offered"] for s in status["steps"]] == [1, 2]
        fleet.wait_on(H2, 2, "both managed agents on v2")
        agents = fleet.operator.get(f"/api/v1/fleets/{fleet.ns}/{FLEET}/agents")["agents"]
        (bare,) = [a for a in agents if a["pod"] == f"{fleet.ns}/{pods[2].metadata.name}"]
        assert bare["attributes"]["service.name"] == "otelcol-opamp"  # the real Collector
        assert bare["remoteConfigStatus"] in (None, "UNSET")
    finally:
        collector.stop()
