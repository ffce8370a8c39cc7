"""Run a fleet of simulated agents in this process: start them at the connect rate,
report progress, stop on a deadline, a condition or a signal, and summarise."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import resource
from collections.abc import Callable
from types import TracebackType

import aiohttp

from opamp_operator.simulator.agent import Fleet, SimulatedAgent
from opamp_operator.simulator.settings import SimulationSettings
from opamp_operator.simulator.stats import SimulationStats, StopCondition, Summary

log = logging.getLogger("opamp_operator.simulator")

_CONDITION_POLL = 0.05
_SPARE_FILES = 256


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def raise_file_limit(needed: int) -> None:
    """Every agent holds a socket; lift the soft open-files limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "open-files limit %d is below the %d this simulation needs; raise it (ulimit -n)",
            hard,
            needed,
        )


class Simulation:
    """A running fleet, for tests and benchmarks that watch it while it runs.

    `async with Simulation(settings) as sim:` starts it; `await sim.wait_until(...)` waits
    for a condition; `await sim.stop()` disconnects every agent cleanly and returns the
    Summary (leaving the block stops it too).
    """

    def __init__(self, settings: SimulationSettings) -> None:
        self.settings = settings
        self.stats = SimulationStats(
            settings.agents, transport=settings.transport, endpoint=settings.url
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self.fleet = Fleet(
            settings=settings,
            options=settings.agent_options(),
            stats=self.stats,
            clock=self.now,
            rng=random.Random(settings.seed),  # noqa: S311 - backoff jitter, not secrets
            ssl_context=settings.ssl_context(),
        )
        self.agents = [SimulatedAgent(i, self.fleet) for i in range(settings.agents)]
        self._tasks: list[asyncio.Task[None]] = []
        self._helpers: list[asyncio.Task[None]] = []
        self._summary: Summary | None = None

    def now(self) -> float:
        """Seconds since the simulation started."""
        return 0.0 if self._loop is None else self._loop.time() - self._t0

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("simulation already started")
        raise_file_limit(self.settings.agents + _SPARE_FILES)
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        # one session for the process: HTTP agents' requests and package downloads
        if self.settings.transport == "http" or self.settings.accept_packages:
            self.fleet.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0,
                    keepalive_timeout=self.settings.heartbeat + 30,
                    ssl=self.fleet.ssl_context or True,
                ),
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout),
            )
        if self.settings.accept_packages:
            self.fleet.download_slots = asyncio.Semaphore(self.settings.package_downloads)
        self._helpers = [
            asyncio.create_task(self._launch(), name="simulator-launch"),
            asyncio.create_task(self._report_progress(), name="simulator-progress"),
        ]

    async def _launch(self) -> None:
        assert self._loop is not None
        rate = self.settings.connect_rate
        for i, agent in enumerate(self.agents):
            if rate > 0:
                delay = self._t0 + i / rate - self._loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            task = asyncio.create_task(agent.run(), name=f"agent-{i}")
            task.add_done_callback(self._agent_done)
            self._tasks.append(task)
            self.stats.launched += 1

    def _agent_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.stats.error("agent task ended", repr(task.exception()))

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(self.settings.progress_interval)
            log.info("%s", self.stats.progress_line(self.now()))

    async def wait_until(
        self,
        condition: StopCondition | Callable[[SimulationStats], bool],
        within: float | None = None,
    ) -> bool:
        """Whether `condition` came true within `within` seconds (None: wait for ever)."""
        check: Callable[[SimulationStats], bool] = (
            condition if callable(condition) else lambda s: s.satisfied(condition)
        )
        try:
            async with asyncio.timeout(within):
                # the counters change with every message; polling beats signalling each change
                while not check(self.stats):  # noqa: ASYNC110
                    await asyncio.sleep(_CONDITION_POLL)
        except TimeoutError:
            return False
        return True

    async def stop(self, stopped_by: str = "stopped") -> Summary:
        """Stop launching, disconnect every agent cleanly, and summarise the run.

        The counts and timings are taken at the moment of stopping, before the shutdown's
        own disconnects; `shutdown_s` and `goodbyes_sent` describe the shutdown.
        """
        if self._summary is not None:
            return self._summary
        for helper in self._helpers:
            helper.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        stopped_at = self.now()
        summary = self.stats.summary(stopped_at, stopped_by)
        log.info("%s (stopping: %s)", self.stats.progress_line(stopped_at), stopped_by)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.settings.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                self.stats.error(
                    "shutdown", f"{len(pending)} agents did not stop within the shutdown timeout"
                )
                await asyncio.wait(pending, timeout=5)
        if self.fleet.session is not None:
            await self.fleet.session.close()
        self._summary = dataclasses.replace(
            summary,
            goodbyes_sent=self.stats.goodbyes_sent,
            shutdown_s=round(self.now() - stopped_at, 3),
            peak_rss_mib=peak_rss_mib(),
            errors=dict(self.stats.errors),
            error_examples=dict(self.stats.error_examples),
        )
        return self._summary

    async def __aenter__(self) -> Simulation:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def run_simulation(
    settings: SimulationSettings, stop: asyncio.Event | None = None
) -> Summary:
    """Run until `settings.duration` passes, `settings.stop_when` holds or `stop` is set.

    `stopped_by` in the summary says which: "duration", the condition's name, or "signal".
    """
    async with Simulation(settings) as sim:
        waiters: dict[asyncio.Task[object], str] = {}
        if settings.duration is not None:
            waiters[asyncio.create_task(asyncio.sleep(settings.duration))] = "duration"
        if settings.stop_when is not None:
            waiters[asyncio.create_task(sim.wait_until(settings.stop_when))] = settings.stop_when
        if stop is not None:
            waiters[asyncio.create_task(stop.wait())] = "signal"
        if not waiters:
            waiters[asyncio.create_task(asyncio.Event().wait())] = "stopped"
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waiters, return_exceptions=True)
        reason = next((waiters[t] for t in waiters if t in done), "stopped")
        return await sim.stop(reason)
