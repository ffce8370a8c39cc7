"""Our OpAMP server at scale, side by side with a server built on opamp-go's `server`
package (the test world's `opamp-go-server`), under the same simulated load.

For each server, in turns (ours, opamp-go, ours, opamp-go, ...), one run:

1. start the server process with config A offered to every agent; note its idle RSS;
2. connect storm: N simulated agents (this process, `opamp_operator.simulator`) connect
   at once and send their full status; time until every one has been answered, and
   until every one has reported config A APPLIED;
3. steady state: RSS per agent above the idle server, and the server's CPU (user+system,
   from /proc) over a window of heartbeats, as % of one core;
4. push: config B replaces A (ours: the fleets file is rewritten; opamp-go: the file is
   rewritten and SIGHUP sent); time from that moment until every agent reported B
   APPLIED.

    .venv/bin/python benchmarks/server_scale.py --transport ws --agents 10000 --heartbeat 30
    .venv/bin/python benchmarks/server_scale.py --transport http --agents 2000 --heartbeat 5

HTTP agents learn of B only when they poll, so the push time there includes up to one
polling interval. Prints a Markdown table; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import yaml
from procstat import free_port, proc_stats, stop_process, wait_port

from opamp_operator.simulator import Simulation, SimulationSettings, SimulationStats
from opamp_operator.simulator.runner import raise_file_limit

REPO = Path(__file__).resolve().parents[1]

CONFIG_A = """\
receivers:
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:4317}
      http: {endpoint: 127.0.0.1:4318}
processors:
  memory_limiter: {check_interval: 1s, limit_mib: 400}
  batch: {timeout: 5s}
exporters:
  otlp:
    endpoint: gateway.observability.svc:4317
    sending_queue: {enabled: true, queue_size: 5000}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [otlp]}
    metrics: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [otlp]}
    logs: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [otlp]}
"""
CONFIG_B = CONFIG_A.replace("timeout: 5s", "timeout: 2s")
CLIENT_LATENESS_SECONDS = 120


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    push: Callable[[], None]

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)


def start_ours(workdir: Path, agents: int) -> Server:
    fleets = workdir / "fleets.yaml"

    def write(config: str) -> None:
        fleets.write_text(
            yaml.safe_dump({"fleets": [{"name": "all", "selector": {}, "config": config}]})
        )

    write(CONFIG_A)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opamp_operator",
            "--log-level=WARNING",
            "serve",
            f"--config={fleets}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--reload-seconds=0.1",
            f"--max-websockets={agents + 100}",
            f"--max-http-in-flight={agents + 100}",
            f"--max-agents={2 * agents + 100}",
            # All simulated agents share this one process: past ~10,000 it sends some
            # upgrade requests (and first messages) more than 10 s after its TCP connect
            # completed, and the defaults' slowloris deadlines close them. opamp-go's
            # server has none; a real fleet, one process per agent, is not that late.
            f"--header-timeout-seconds={CLIENT_LATENESS_SECONDS}",
            f"--first-message-timeout-seconds={CLIENT_LATENESS_SECONDS}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc, timeout=30)
    return Server("opamp-operator", proc, port, lambda: write(CONFIG_B))


def start_opamp_go(workdir: Path) -> Server:
    config = workdir / "offered.yaml"
    config.write_text(CONFIG_A)
    port = free_port()
    binary = (
        Path(os.environ.get("OPAMP_OPERATOR_CACHE", Path.home() / ".cache/opamp-operator"))
        / "bin/opamp-go-server"
    )
    proc = subprocess.Popen(
        [str(binary), f"--listen=127.0.0.1:{port}", f"--config-file={config}", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc, timeout=30)

    def push() -> None:
        config.write_text(CONFIG_B)
        proc.send_signal(signal.SIGHUP)

    return Server("opamp-go", proc, port, push)


@dataclass
class Result:
    server: str
    storm_acked_s: float
    storm_applied_s: float
    rss_per_agent_kib: float
    steady_cpu_pct: float
    push_applied_s: float
    reconnects: int
    errors: int


def _latest_applied(first: bytes | None) -> Callable[[SimulationStats], bool]:
    def check(stats: SimulationStats) -> bool:
        latest = stats.latest_config
        return latest is not None and latest.config_hash != first and latest.all_applied is not None

    return check


async def run_one(server: Server, args: argparse.Namespace) -> Result:
    await asyncio.sleep(1.0)
    rss0, _ = proc_stats(server.proc.pid)
    scheme = "ws" if args.transport == "ws" else "http"
    settings = SimulationSettings(
        endpoint=f"{scheme}://127.0.0.1:{server.port}/v1/opamp",
        agents=args.agents,
        transport=args.transport,
        heartbeat=args.heartbeat,
        connect_rate=0,
        progress_interval=3600,
        open_timeout=120,
        request_timeout=120,
    )
    async with Simulation(settings) as sim:
        t0 = sim.now()
        if not await sim.wait_until("acked", within=300):
            raise RuntimeError(f"{server.name}: not all agents acknowledged within 300 s")
        acked = sim.now() - t0
        if not await sim.wait_until(_latest_applied(None), within=300):
            raise RuntimeError(f"{server.name}: config A not applied by all within 300 s")
        applied = sim.now() - t0
        first = sim.stats.latest_config.config_hash if sim.stats.latest_config else None
        await asyncio.sleep(3.0)
        rss1, cpu1 = proc_stats(server.proc.pid)
        await asyncio.sleep(args.window)
        _, cpu2 = proc_stats(server.proc.pid)
        pushed_at = sim.now()
        server.push()
        if not await sim.wait_until(_latest_applied(first), within=300):
            raise RuntimeError(f"{server.name}: config B not applied by all within 300 s")
        push = sim.now() - pushed_at
        summary = await sim.stop()
    return Result(
        server.name,
        acked,
        applied,
        (rss1 - rss0) / args.agents / 1024,
        (cpu2 - cpu1) / args.window * 100,
        push,
        summary.reconnects,
        sum(summary.errors.values()) + sum(summary.server_errors.values()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=["ws", "http"], default="ws")
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=60.0, help="steady-state CPU window (s)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    raise_file_limit(args.agents * 2 + 1000)
    results: list[Result] = []
    for _ in range(args.repeat):
        for start in ("ours", "opamp-go"):
            with TemporaryDirectory() as tmp:
                server = (
                    start_ours(Path(tmp), args.agents)
                    if start == "ours"
                    else start_opamp_go(Path(tmp))
                )
                try:
                    results.append(asyncio.run(run_one(server, args)))
                finally:
                    server.stop()
            print(results[-1], file=sys.stderr, flush=True)
    print(
        f"\n{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
        f"{time.strftime('%Y-%m-%d')} · {args.agents} {args.transport} agents · "
        f"heartbeat {args.heartbeat:g} s · CPU window {args.window:g} s\n"
    )
    print(
        "| server | run | storm: all answered (s) | storm: all APPLIED (s) | RSS/agent (KiB) "
        "| steady CPU (% core) | CPU per agent (µs/s) | push: all APPLIED (s) | reconnects "
        "| errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, r in enumerate(results):
        print(
            f"| {r.server} | {n // 2 + 1} | {r.storm_acked_s:.1f} | {r.storm_applied_s:.1f} | "
            f"{r.rss_per_agent_kib:.1f} | {r.steady_cpu_pct:.1f} | "
            f"{r.steady_cpu_pct / 100 / args.agents * 1e6:.2f} | {r.push_applied_s:.2f} | "
            f"{r.reconnects} | {r.errors} |"
        )
    ours = [r for r in results if r.server == "opamp-operator"]
    theirs = [r for r in results if r.server == "opamp-go"]

    def mean(rs: list[Result], f: Callable[[Result], float]) -> float:
        return sum(f(r) for r in rs) / len(rs)

    print("\n| ratio ours / opamp-go (mean) | storm answered | RSS/agent | steady CPU | push |")
    print("|---|---|---|---|---|")
    print(
        "| | "
        + " | ".join(
            f"{mean(ours, f) / mean(theirs, f):.2f}" if mean(theirs, f) else "n/a"
            for f in (
                lambda r: r.storm_acked_s,
                lambda r: r.rss_per_agent_kib,
                lambda r: r.steady_cpu_pct,
                lambda r: r.push_applied_s,
            )
        )
        + " |"
    )


if __name__ == "__main__":
    main()
