"""Staged rollouts under `serve` (standalone/rollouts.py): the fleets file's `rollout`, the
state directory that keeps the stable revision and the progress across restarts, and the
planner's membership turned into what each agent is offered, through the sans-I/O core.

The wiring with real agents (opamp-go, packages, a SIGKILLed serve) is proven in
tests/world_proofs/test_fleet_packages.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from opamp_operator.fleet.rollout_status import RolloutTiming
from opamp_operator.opamp import attributes
from opamp_operator.opamp.configs import RemoteConfig
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import ServerCore
from opamp_operator.standalone.fleets import FileFleets, FleetFileError, parse_fleets
from opamp_operator.standalone.rollouts import (
    FleetState,
    ServeRollouts,
    StableRevision,
    StateDir,
    StateError,
)

V1, V2 = "receivers: {otlp: {}}\n", "receivers: {otlp: {}, zipkin: {}}\n"
STEPS = [{"agents": 1, "pause": {"untilPromoted": True}}, {"percent": 100}]
CAPS = pb.AgentCapabilities_ReportsStatus | pb.AgentCapabilities_AcceptsRemoteConfig
UIDS = [bytes([i]) * 16 for i in range(1, 4)]


def _file(config: str, promote: str = "", steps: object = STEPS) -> str:
    rollout = {"steps": steps, "promote": promote}
    fleet = {"name": "vms", "selector": {}, "config": config, "rollout": rollout}
    return yaml.safe_dump({"fleets": [fleet]})


def test_a_rollout_needs_a_state_dir_and_is_checked_by_the_configrollout_s_model() -> None:
    with pytest.raises(FleetFileError, match="'vms': a rollout needs serve --state-dir"):
        parse_fleets(_file(V1), Path("."), staged=False)
    (fleet,) = parse_fleets(_file(V1, promote="go"), Path("."))
    assert fleet.rollout is not None
    assert fleet.rollout.controls.promote == "go"
    assert fleet.revision == f"vms-{fleet.revision_hash[:10]}"
    with pytest.raises(FleetFileError, match=r"'vms': rollout: steps\.0\.agents"):
        parse_fleets(_file(V1, steps=[{"agents": 0}]), Path("."))
    pods = [{"selector": {"podLabels": {"canary": "true"}}}]
    with pytest.raises(FleetFileError, match="podLabels selects nobody under serve"):
        parse_fleets(_file(V1, steps=pods), Path("."))
    (by_host,) = parse_fleets(
        _file(V1, steps=[{"selector": {"attributes": {"h": "a"}}}]), Path(".")
    )
    assert by_host.rollout is not None
    with pytest.raises(FleetFileError, match="'vms': rollout: promote"):
        parse_fleets(_file(V1, promote="x" * 254), Path("."))
    with pytest.raises(FleetFileError, match="'vms': rollout: fleetRef"):
        parse_fleets(_file(V1).replace("promote:", "fleetRef: {name: x}\n    promote:"), Path("."))


def test_the_state_dir_keeps_exact_bytes_and_refuses_what_it_did_not_write(
    tmp_path: Path,
) -> None:
    store = StateDir(tmp_path / "state")
    stable = StableRevision("vms-0123456789", "ab" * 32, b"\xff not utf-8 \x00", '{"expected":"2"}')
    state = FleetState(stable, {"phase": "Paused", "currentStep": 0})
    store.save("vms", state)
    store.save("a/b: any name", FleetState(stable))
    assert StateDir(tmp_path / "state").load() == {
        "vms": state,
        "a/b: any name": FleetState(stable),
    }
    assert not list((tmp_path / "state").glob(".*.tmp"))  # written aside, renamed
    (broken,) = [p for p in (tmp_path / "state").iterdir() if '"fleet": "vms"' in p.read_text()]
    broken.write_text(json.dumps({"fleet": "vms", "stable": {"revision": "x"}}))
    with pytest.raises(StateError, match="cannot be read"):
        store.load()


class World:
    """A fleets file, the sans-I/O core with three agents on it, and serve's rollouts."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "fleets.yaml"
        self.state = tmp_path / "state"
        self.path.write_text(_file(V1))
        self.fleets = FileFleets(self.path, staged=True)
        self.core = ServerCore(desired=self.fleets)
        self.conns = {uid: self.core.open(0.0) for uid in UIDS}
        self.seq = 0
        for uid in UIDS:
            self.send(uid, self.hello(uid))

    def hello(self, uid: bytes) -> pb.AgentToServer:
        msg = pb.AgentToServer(instance_uid=uid, capabilities=CAPS)
        msg.agent_description.identifying_attributes.extend(
            attributes.from_dict({"service.name": "otelcol"})
        )
        return msg

    def send(self, uid: bytes, msg: pb.AgentToServer) -> None:
        self.seq += 1
        msg.sequence_num = self.seq
        self.core.receive(msg, 1.0, self.conns[uid])

    def applied(self, uid: bytes, config: str) -> None:
        msg = pb.AgentToServer(instance_uid=uid)
        msg.remote_config_status.last_remote_config_hash = RemoteConfig.single(config.encode()).hash
        msg.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
        self.send(uid, msg)

    def edit(self, text: str) -> None:
        self.path.write_text(text)
        self.fleets._stamp = None  # the same second's mtime: read it again
        assert self.fleets.reload()

    def rollouts(self, grace: float = 0.0) -> ServeRollouts:
        return ServeRollouts(
            self.fleets, self.core, StateDir(self.state), RolloutTiming(1.0, grace)
        )

    def on(self, config: str) -> list[bytes]:
        offered = RemoteConfig.single(config.encode())
        return [u for u in UIDS if self.fleets.config_for(self.core.agents[u]) == offered]

    def phase(self, rollouts: ServeRollouts) -> str:
        return str(rollouts.statuses()["vms"]["phase"])


def test_a_change_reaches_one_agent_until_promoted_and_a_restart_holds_the_same_one(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    rollouts = world.rollouts()
    rollouts.tick()
    rollouts.tick()
    assert world.phase(rollouts) == "Succeeded"
    assert world.on(V1) == UIDS

    world.edit(_file(V2))
    assert world.on(V1) == UIDS  # until the rollout has planned the new revision
    rollouts.tick()
    (member,) = world.on(V2)
    world.applied(member, V2)
    rollouts.tick()
    assert world.phase(rollouts) == "Paused"
    assert world.on(V2) == [member]

    # A restart: the new process holds what the state dir says until its grace is over,
    # and never offers the new config to anyone else meanwhile.
    world.fleets.held = {}
    restarted = world.rollouts(grace=3600.0)
    restarted.tick()
    assert world.on(V2) == [member]
    assert world.phase(restarted) == "Paused"

    again = world.rollouts()
    world.edit(_file(V2, promote="1"))
    again.tick()
    assert world.on(V2) == UIDS
    for uid in UIDS:
        world.applied(uid, V2)
    again.tick()
    assert world.phase(again) == "Succeeded"
    (state,) = StateDir(world.state).load().values()
    assert state.stable.config == V2.encode()


def test_a_change_whose_member_fails_rolls_back_to_the_stable_bytes(tmp_path: Path) -> None:
    world = World(tmp_path)
    rollouts = world.rollouts()
    rollouts.tick()
    world.edit(_file(V2))
    rollouts.tick()
    (member,) = world.on(V2)
    msg = pb.AgentToServer(instance_uid=member)
    msg.remote_config_status.last_remote_config_hash = RemoteConfig.single(V2.encode()).hash
    msg.remote_config_status.status = pb.RemoteConfigStatuses_FAILED
    msg.remote_config_status.error_message = "zipkin: unknown receiver"
    world.send(member, msg)
    rollouts.tick()
    status = rollouts.statuses()["vms"]
    assert status["phase"] == "RolledBack"
    assert status["failingAgents"][0]["message"] == "zipkin: unknown receiver"
    assert world.on(V1) == UIDS
