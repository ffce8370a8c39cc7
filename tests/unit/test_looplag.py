"""The lag watch measures how late the loop wakes it: ~0 when idle, the block's length
when a callback holds the loop."""

from __future__ import annotations

import asyncio
import re
import time

from aiohttp.test_utils import TestServer

from opamp_operator.opamp.session import ServerCore
from opamp_operator.server.app import OpAMPServer
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


async def test_the_server_reports_its_loop_lag_while_it_runs() -> None:
    server = OpAMPServer(ServerCore())
    async with TestServer(server.app()):
        await asyncio.sleep(0.35)
        text = server.metrics_payload().decode()
    count = re.search(r"^opamp_event_loop_lag_seconds_count (\S+)$", text, re.M)
    assert count is not None, text
    assert float(count[1]) >= 2
    await asyncio.sleep(0.25)  # stopped with the app: no more samples
    after = re.search(
        r"^opamp_event_loop_lag_seconds_count (\S+)$", server.metrics_payload().decode(), re.M
    )
    assert after is not None
    assert float(after[1]) <= float(count[1]) + 1
