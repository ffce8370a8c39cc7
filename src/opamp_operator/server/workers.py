"""Worker processes for the work an agent's config costs to read.

Parsing an effective config, comparing it with the desired one and rendering it for a
reader take up to seconds at the parser's caps (fleet/drift.py). On a thread of the
server's own process that work shares the GIL with the event loop, and the loop gives
the GIL away at every socket call it makes, then waits up to a switch interval to get
it back: with one hostile agent's configs being parsed, answers to the other agents
slowed 2-3x (benchmarks/loop_lag.py, docs/benchmarks.md). In processes of their own,
at a lower CPU priority, that work costs the loop nothing, and each call gets the hard
bounds a thread cannot have: a time budget (past it the worker is killed and replaced)
and an address-space limit (past it the call fails with MemoryError, not the operator).

The pool is pebble's: per-call timeouts that kill the worker, and workers replaced when
one dies, which concurrent.futures' process pool (broken for good after one death)
does not do.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

log = logging.getLogger(__name__)

T = TypeVar("T")

NICENESS = 10
"""How much lower the workers' CPU priority is than the server's: on a busy node the
loop answering agents runs first."""


class WorkerError(Exception):
    """A call that did not finish: over its time budget, over its memory, or its worker
    died. The message says which as a predicate ("took longer than 30 s"), for the
    caller to put a subject before it ("comparing it ...")."""


def _settle(memory_bytes: int) -> None:
    """Each worker, as it starts: its address-space cap, a lower priority, and Ctrl-C
    left to the server (which stops the pool)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    os.nice(NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ConfigWorkers:
    """`processes` worker processes, started on first use (spawned: never forked from a
    process with threads), each call within `budget_seconds` and `memory_bytes`.

    Calls queue for a free worker; the budget counts from when a worker takes the call.
    `failed(reason)` is told of every call that fails ("timeout", "memory", "died"),
    for a metric."""

    def __init__(
        self,
        name: str,
        *,
        processes: int,
        budget_seconds: float,
        memory_bytes: int,
        failed: Callable[[str], None] = lambda reason: None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"{name}: at least one worker process")
        if budget_seconds <= 0:
            raise ValueError(f"{name}: the time budget must be positive")
        self.name = name
        self.processes = processes
        self.budget_seconds = budget_seconds
        self.memory_bytes = memory_bytes
        self._failed = failed
        self._pool: ProcessPool | None = None

    def _started(self) -> ProcessPool:
        if self._pool is None:
            self._pool = ProcessPool(
                max_workers=self.processes,
                initializer=_settle,
                initargs=(self.memory_bytes,),
                context=multiprocessing.get_context("spawn"),
            )
        return self._pool

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a worker: `fn` and the arguments must pickle (module-level
        functions, plain data). Raises WorkerError when the call cannot finish; an
        exception `fn` raises is raised here. Cancelling the caller stops a running
        call's worker (asyncio.wrap_future passes the cancel on; pebble replaces it)."""
        future = self._started().schedule(fn, args, timeout=self.budget_seconds)
        try:
            return await asyncio.wrap_future(future)
        except TimeoutError:
            raise self._failure("timeout", f"took longer than {self.budget_seconds:g} s") from None
        except MemoryError:
            raise self._failure(
                "memory", f"needed more than {self.memory_bytes / 2**20:g} MiB"
            ) from None
        except ProcessExpired as exc:
            raise self._failure(
                "died", f"killed its worker process (exit code {exc.exitcode})"
            ) from None

    def _failure(self, reason: str, text: str) -> WorkerError:
        self._failed(reason)
        log.warning("%s: a call %s", self.name, text)
        return WorkerError(text)

    def close(self) -> None:
        """Stop the workers, running calls and all."""
        if self._pool is not None:
            self._pool.stop()  # type: ignore[no-untyped-call]
            self._pool.join(timeout=5)
            self._pool = None
