"""Python's cyclic garbage collector, set for a process that holds many long-lived
connections.

Each agent's WebSocket keeps ~80 collector-tracked objects (aiohttp's request, protocol,
reader, writer, tasks and coroutines; our guard and record), so 18,000 agents are over a
million of them. With the interpreter's defaults, a collection of the oldest generation
walks them all — 0.3-0.6 s with the loop held, at 10,000 agents — and the objects a
connect storm creates trigger one each time the heap grows by a quarter. Measured in
docs/benchmarks.md ("Server at scale").

What is done here, once, before the server starts:
- everything imported so far (~85,000 objects: modules, classes, protobuf descriptors)
  is frozen out of every collection (gc.freeze);
- the youngest generation is collected every YOUNG_THRESHOLD allocations instead of 700,
  so the objects of a request in flight die young instead of being promoted to the old
  generations, which is what makes the long, heap-wide collections frequent.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
"""Allocations between collections of the youngest generation: one costs ~30 ms at
most (it walks at most this many objects)."""
MIDDLE_THRESHOLD = 20
"""Young collections between collections of the middle generation."""


def settle() -> None:
    """Collect what start-up left, freeze the rest, and set the thresholds."""
    gc.collect()
    gc.freeze()
    _, _, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, old)
