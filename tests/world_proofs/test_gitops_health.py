"""GitOps health of CollectorFleet and ConfigRollout, judged by the tools' own rules.

The operator runs on the local cluster with real opamp-go agents claiming kwok pods and
drives a fleet and a rollout through their states; at each, the whole object it wrote is
read back and judged twice: by the Argo CD health scripts shipped in deploy/argocd (run
as Argo CD runs them, in gopher-lua through `argocd-health`, built by scripts/test-deps
from test-deps/argocd-lua, and required to give the same verdict in Lua 5.1 and 5.4
through lupa) and by kstatus, the library Flux judges health with (`kstatus-check`, built by
scripts/test-deps from sigs.k8s.io/cli-utils). Both verdicts are asserted, and that they
agree in spirit.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from lupa.lua54 import LuaRuntime as Lua54Runtime  # type: ignore[import-untyped]

from opamp_operator.api.models import GROUP, VERSION
from world.cluster import LocalCluster
from world.collector import JsonlProcess, start_go_agent
from world.fleets import (
    CONFIG_V1,
    CONFIG_V2,
    PLURAL,
    ROLLOUTS,
    create_fleet,
    create_rollout,
    deploy_running,
    rollout_control,
    set_fleet_config,
)
from world.gitops import (
    ARGOCD,
    KINDS,
    argocd_health,
    gopher_lua,
    health_script,
    judge,
    kstatus,
    lupa_health,
)
from world.operator import OperatorProcess, start_operator
from world.processes import eventually

pytestmark = pytest.mark.world

LABELS = {"app": "collector"}
FLEET = "collectors"
CONFIG_INVALID = CONFIG_V1.replace("exporters: [debug]", "exporters: [otlphttp]")
BROKEN_MARK = "gitops-proof: refused by every agent"
CONFIG_BAD = CONFIG_V2.replace("detailed", "basic") + f"# {BROKEN_MARK}\n"


def test_the_argocd_cm_patch_carries_the_scripts_byte_for_byte() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"]["name"] == "argocd-cm"
    assert set(patch["data"]) == {f"resource.customizations.health.{GROUP}_{k}" for k in KINDS}
    for kind in KINDS:
        assert patch["data"][f"resource.customizations.health.{GROUP}_{kind}"] == health_script(
            kind
        )


def test_argocd_health_runs_the_script_as_argocd_does(tmp_path: Path) -> None:
    """The harness decides: it returns the script's table, refuses Lua 5.4 syntax (Argo CD
    runs Lua 5.1) and the string library (not opened for argocd-cm scripts), maps an
    unknown status to Unknown, and times out."""
    obj = {"kind": "CollectorFleet", "metadata": {"generation": 3}, "status": {"list": [1, 2]}}

    def run(name: str, body: str) -> subprocess.CompletedProcess[str]:
        script = tmp_path / f"{name}.lua"
        script.write_text(body)
        return gopher_lua(script, obj)

    ok = run(
        "ok",
        'return {status = "Healthy", message = "gen " .. tostring(obj.metadata.generation)'
        ' .. ", " .. #obj.status.list}',
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"status": "Healthy", "message": "gen 3, 2"}

    idiv = run("idiv", 'return {status = "Healthy", message = tostring(7 // 2)}')
    assert idiv.returncode != 0
    assert "syntax error" in idiv.stderr
    # Lua 5.4 (lupa) takes it: the refusal is the harness's.
    assert lupa_health(Lua54Runtime, (tmp_path / "idiv.lua").read_text(), obj) == ("Healthy", "3")

    strlib = run("strlib", 'return {status = "Healthy", message = string.format("%d", 1)}')
    assert strlib.returncode != 0
    assert "format" in strlib.stderr

    unknown = run("unknown", 'return {status = "Fine", message = "?"}')
    assert json.loads(unknown.stdout) == {
        "status": "Unknown",
        "message": "Lua returned an invalid health status",
    }

    loop = run("loop", "while true do end")
    assert loop.returncode != 0
    assert "deadline" in loop.stderr


class World:
    """Kwok pods, opamp-go agents claiming them, and the operator, in one namespace."""

    def __init__(self, api_client: Any, namespace: str, cluster: LocalCluster, tmp: Path):
        self.api = api_client
        self.ns = namespace
        self.cluster = cluster
        self.tmp = tmp
        self.agents: list[JsonlProcess] = []
        self.operator: OperatorProcess | None = None

    def start_operator(self) -> OperatorProcess:
        self.operator = start_operator(self.cluster.kubeconfig, self.tmp, "--rollout-interval=1")
        return self.operator

    def deploy(self, pods: int) -> list[Any]:
        return deploy_running(self.api, self.ns, LABELS, pods)

    def start_agent(self, pod: Any, *args: str) -> None:
        assert self.operator is not None
        self.agents.append(
            start_go_agent(
                self.operator.ws_url,
                "--heartbeat=1s",
                f"--attr=k8s.pod.uid={pod.metadata.uid}",
                *args,
            )
        )

    def read(self, plural: str, name: str) -> dict[str, Any]:
        """The whole object as the API server serves it (what Argo CD and Flux read)."""
        co: Any = k8s.CustomObjectsApi(self.api)
        obj: dict[str, Any] = co.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        return obj

    def wait(
        self, plural: str, name: str, what: str, where: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        found: dict[str, Any] = eventually(
            what, lambda: o if where(o := self.read(plural, name)) else None, timeout=90
        )
        return found

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        if self.operator is not None:
            self.operator.stop()


@pytest.fixture
def world(
    crds: None, api_client: Any, namespace: str, cluster: LocalCluster, tmp_path: Path
) -> Iterator[World]:
    w = World(api_client, namespace, cluster, tmp_path)
    try:
        yield w
    finally:
        w.stop()


def cond(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """The condition `kind` of the object, {} when it has none."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def observed(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("observedGeneration") == obj["metadata"]["generation"])


def test_fleet_not_yet_seen_stalled_starting_and_ready(world: World) -> None:
    pods = world.deploy(2)
    # Applied before any operator runs: what GitOps tools see right after a sync.
    create_fleet(world.api, world.ns, FLEET, LABELS, CONFIG_INVALID)
    fresh = world.read(PLURAL, FLEET)
    # The CRD defaults status.observedGeneration to 0 (and the counts with it): both
    # tools wait for the operator.
    # Without it kstatus would call the object Current (its rule for an object without
    # status) before any operator had looked at it.
    assert fresh["status"]["observedGeneration"] == 0
    assert not fresh["status"].get("conditions")
    assert argocd_health(fresh) == (
        "Progressing",
        "Waiting for the operator to observe generation 1",
    )
    status, message = kstatus(fresh)
    assert status == "InProgress"
    assert "observed generation is 0" in message
    assert kstatus({**fresh, "status": {}})[0] == "Current"

    world.start_operator()
    stalled = world.wait(
        PLURAL, FLEET, "the fleet Stalled", lambda o: cond(o, "Stalled").get("status") == "True"
    )
    assert observed(stalled)
    judge(stalled, "Degraded", "Failed", says="service.pipelines.traces.exporters[0]")

    # A valid config, one of the two pods with an agent: Collectors still starting.
    world.start_agent(pods[0])
    set_fleet_config(world.api, world.ns, FLEET, CONFIG_V1)
    starting = world.wait(
        PLURAL,
        FLEET,
        "the fleet waiting for the second pod's agent",
        lambda o: (
            observed(o)
            and cond(o, "Ready").get("reason") == "PodsWithoutAgent"
            and cond(o, "Reconciling").get("status") == "False"
        ),
    )
    assert starting["status"]["configApplied"] == 1
    judge(starting, "Progressing", "InProgress", says="PodsWithoutAgent")

    world.start_agent(pods[1])
    ready = world.wait(
        PLURAL, FLEET, "the fleet Ready", lambda o: cond(o, "Ready").get("status") == "True"
    )
    assert observed(ready)
    assert ready["status"]["configApplied"] == 2
    judge(ready, "Healthy", "Current", says="AgentsReady")


def test_rollout_succeeded_paused_and_rolled_back(world: World) -> None:
    world.start_operator()
    pods = world.deploy(3)
    for pod in pods:
        world.start_agent(pod, f"--fail-containing={BROKEN_MARK}")
    create_fleet(world.api, world.ns, FLEET, LABELS, CONFIG_V1)
    world.wait(PLURAL, FLEET, "the fleet Ready", lambda o: cond(o, "Ready").get("status") == "True")
    create_rollout(
        world.api,
        world.ns,
        FLEET,
        FLEET,
        steps=[{"agents": 1, "pause": {"untilPromoted": True}}, {"percent": 100}],
    )

    def phase(name: str, extra: Callable[[dict[str, Any]], bool] = lambda _: True) -> Any:
        return world.wait(
            ROLLOUTS,
            FLEET,
            f"the rollout {name}",
            lambda o: (o.get("status") or {}).get("phase") == name and observed(o) and extra(o),
        )

    # The fleet's first config has nothing to roll back to: stable at once.
    judge(phase("Succeeded"), "Healthy", "Current", says="Succeeded")

    set_fleet_config(world.api, world.ns, FLEET, CONFIG_V2)
    paused = phase("Paused", lambda o: o["status"].get("pauseReason") == "Step")
    assert cond(paused, "Reconciling").get("status") == "True"
    judge(paused, "Suspended", "InProgress", says="Paused")
    # The fleet under a paused rollout: its desired config is not everywhere yet, so it
    # stays in progress (not failed) until the rollout moves on.
    fleet = world.wait(
        PLURAL,
        FLEET,
        "the fleet to count the canary",
        lambda o: (
            observed(o)
            and o["status"].get("desiredHash") == paused["status"]["desiredHash"]
            and cond(o, "Reconciling").get("message", "").startswith("2 of 3")
        ),
    )
    judge(fleet, "Progressing", "InProgress", says="2 of 3 agents still to apply")

    rollout_control(world.api, world.ns, FLEET, "promote")
    done = phase("Succeeded", lambda o: o["status"].get("stableHash") == o["status"]["desiredHash"])
    assert [s["offered"] for s in done["status"]["steps"]] == [1, 3]
    judge(done, "Healthy", "Current", says="Succeeded")

    # Every agent refuses this one: the canary fails its gate and the rollout goes back.
    set_fleet_config(world.api, world.ns, FLEET, CONFIG_BAD)
    rolled_back = phase("RolledBack")
    assert rolled_back["status"]["failingAgents"]
    judge(rolled_back, "Degraded", "Failed", says="RolledBack")
    fleet = world.wait(
        PLURAL,
        FLEET,
        "the fleet Stalled by the rollback",
        lambda o: cond(o, "Stalled").get("reason") == "RolloutRolledBack",
    )
    judge(fleet, "Degraded", "Failed", says="RolloutRolledBack")
