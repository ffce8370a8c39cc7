"""How late the event loop runs what is due: the one number that says whether anything
(an agent's pathological config, a big status write, a slow handler) holds the loop that
answers every agent.

A task asks to wake every `interval` seconds and records how much later than asked it
woke. Sustained lag above a few hundred milliseconds delays every agent's answer and, past
the liveness probe's budget, gets the operator restarted, which reconnects every agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


async def watch(observe: Callable[[float], None], interval: float = 0.1) -> None:
    """Forever: sleep `interval`, then `observe` how many seconds later than due it woke."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - due))


class LagWatch:
    """The watch as a task the server starts with its listeners and stops with them."""

    def __init__(self, observe: Callable[[float], None], interval: float = 0.1) -> None:
        self.observe = observe
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                watch(self.observe, self.interval), name="event-loop-lag"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
