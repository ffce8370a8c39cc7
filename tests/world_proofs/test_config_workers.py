"""The config worker processes (server/workers.py) and the drift judging that runs on them
(OperatorState.judge), with real spawned processes: a call over its time budget or its
memory fails with the reason and the pool goes on with a fresh worker; a hostile config
costs its budget once, however many agents report it and however often it is judged."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from opamp_operator.fleet.drift import DriftState
from opamp_operator.fleet.validation import MAX_NODES
from opamp_operator.fleet.views import AgentView
from opamp_operator.k8s.state import OperatorState
from opamp_operator.server.app import Limits, config_workers
from opamp_operator.server.workers import ConfigWorkers, WorkerError

MIB = 2**20
DESIRED = "exporters:\n  debug: {}\n"
DESIRED_HASH = "ab" * 32


def spin(seconds: float) -> float:
    """Busy for `seconds` (module level: pickled to the worker)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


def allocate(size: int) -> int:
    return len(bytearray(size))


def _workers(failed: Counter[str], **limits: float) -> ConfigWorkers:
    return config_workers(Limits(**limits), "test", lambda reason: failed.update([reason]))  # type: ignore[arg-type]


async def test_a_call_past_its_budget_or_memory_fails_and_the_next_gets_a_fresh_worker() -> None:
    failed: Counter[str] = Counter()
    workers = _workers(failed, config_budget_seconds=0.5, config_worker_memory_bytes=128 * MIB)
    try:
        assert await workers.run(allocate, 16 * MIB) == 16 * MIB
        started = time.monotonic()
        with pytest.raises(WorkerError, match=r"^took longer than 0\.5 s$"):
            await workers.run(spin, 30.0)
        assert time.monotonic() - started < 5  # killed, not waited for
        with pytest.raises(WorkerError, match=r"^needed more than 128 MiB$"):
            await workers.run(allocate, 512 * MIB)
        assert await workers.run(spin, 0.01) == 0.01  # the pool goes on
        assert failed == Counter({"timeout": 1, "memory": 1})
    finally:
        workers.close()


def _agent(uid: str, effective: str) -> AgentView:
    return AgentView(
        instance_uid=uid,
        attributes={"service.name": "otelcol"},
        remote_config_status="APPLIED",
        remote_config_hash=DESIRED_HASH,
        effective_config=effective,
    )


async def test_a_config_over_budget_is_judged_not_comparable_once_for_every_agent() -> None:
    """Three agents report the same config at the parser's caps (~1.5 s to parse here),
    one reports the desired config: one worker call for the three, over the 0.3 s
    budget, a verdict for each, and nothing computed again on the next tick."""
    failed: Counter[str] = Counter()
    state = OperatorState(judges=_workers(failed, config_budget_seconds=0.3))
    hostile = "".join(f"k{i:06}: v{i:06}\n" for i in range(MAX_NODES // 2 - 1))
    jobs = {
        f"hostile-{i}": (_agent(f"hostile-{i}", hostile), DESIRED, DESIRED_HASH) for i in range(3)
    }
    jobs["honest"] = (_agent("honest", DESIRED), DESIRED, DESIRED_HASH)
    try:
        for _ in range(2):
            verdicts = await state.judge(jobs)
            assert verdicts["honest"].state == DriftState.IN_SYNC
            for i in range(3):
                verdict = verdicts[f"hostile-{i}"]
                assert verdict.state == DriftState.DRIFTED
                assert verdict.reason == "comparing its effective config took longer than 0.3 s"
        assert failed == Counter({"timeout": 1})
        # Every agent looked up on each tick; found on the second, failure and all.
        assert (state.drift.misses, state.drift.hits) == (4, 4)
    finally:
        state.close()
