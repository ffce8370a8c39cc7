"""The lag watch measures how late the loop wakes it: ~0 when idle, the block's length
when a callback holds the loop."""

from __future__ import annotations

import asyncio
import time

from opamp_operator.server.looplag import LagWatch


async def test_an_idle_loop_shows_little_lag_and_a_blocked_one_shows_the_block() -> None:
    seen: list[float] = []
    lag = LagWatch(seen.append, interval=0.02)
    lag.start()
    await asyncio.sleep(0.2)
    assert seen
    assert max(seen) < 0.1
    seen.clear()
    time.sleep(0.3)  # noqa: ASYNC251 - the point: what parsing on the loop would do
    await asyncio.sleep(0.05)
    await lag.stop()
    assert max(seen) >= 0.25
    count = len(seen)
    await asyncio.sleep(0.05)
    assert len(seen) == count  # stopped
