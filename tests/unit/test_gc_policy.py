"""The server process's garbage collector (server/gc_policy.py), as `run` and `serve`
get it: through cli.run_loop, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from opamp_operator.server import gc_policy

PROBE = """
import asyncio, gc, json
from opamp_operator import cli

async def main():
    print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                      "loop": type(asyncio.get_running_loop()).__module__}))

cli.run_loop(main())
"""


def test_the_server_loop_runs_with_start_up_frozen_and_a_large_young_generation() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    seen = json.loads(out)
    assert seen["threshold"][:2] == [gc_policy.YOUNG_THRESHOLD, gc_policy.MIDDLE_THRESHOLD]
    assert seen["frozen"] > 10_000  # the modules a server imports, out of every collection
    assert seen["loop"].startswith("uvloop")
