"""Reconnect storm (issue 14): N agents dropped at once by an operator restart come back,
spread by their backoff and the server's Retry-After, within a time this measures, and the
restarted server's memory stays under the chart's limit.

1. `opamp-operator serve` (the real CLI, on uvloop) over TLS (wss://; a throwaway CA and an
   EC P-256 server certificate, as the chart makes), a fleets file with one catch-all fleet,
   and the chart's own limits: every `opamp.limits.*` of deploy/helm/opamp-operator/
   values.yaml, read at run time, passed as the flag the chart's Deployment passes it as
   (`--set` changes a value for a what-if run, as `helm --set` would). Its RSS is sampled
   every 0.5 s and held against the chart's `resources.limits.memory`.
2. N simulated agents (`opamp_operator.simulator`, WebSocket, 30 s heartbeat, the
   simulator's full-jitter backoff, 45 s to open a connection as opamp-go's dialer) connect
   and apply the fleet's config.
3. The server is restarted: SIGKILL (a crash: the kernel drops every connection) and
   SIGTERM (graceful: the server closes every WebSocket with 1001 at once, then exits). A
   new server process starts on the same port as soon as the old one is gone, as a
   Deployment with strategy Recreate does (minus the kubelet's own seconds).
4. Measured from the signal, per restart: when the old process was gone and the new one
   listening; when all N agents were connected and answered again, and each agent's time
   (p50/p90/p99/max); connection attempts refused while nothing listened, failed TLS or
   WebSocket handshakes, and refusals with Retry-After (503 at the upgrade or 1013 after
   an UNAVAILABLE: the agents' count, and the restarted server's /metrics); how many agents
   waited on Retry-After and how many only on their backoff; the host's listen-queue
   overflows; the restarted server's CPU and peak RSS (VmHWM, and the 0.5 s samples)
   against the memory limit; agents back per second in 5 s buckets.

    .venv/bin/python benchmarks/reconnect_storm.py --agents 2000 --repeat 2
    .venv/bin/python benchmarks/reconnect_storm.py --agents 10000 --repeat 2 \\
        --set opamp.limits.maxWebsockets=10000 --set resources.limits.memory=1Gi

If the chart's values cannot hold N agents (fewer WebSockets or agent records than N) the
benchmark says so, with the --set that would let it run, and exits 2 before starting
anything. An RSS expected over the memory limit is said before the run and measured in it
(the limit is only compared with, not enforced: no cgroup here). No wait is unbounded
(--deadline); a restart whose agents are not all back by then ends the run (exit 1).
Prints Markdown tables; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
import uvloop
import yaml
from procstat import Sample, Sampler, free_port, listen_counters, peak_rss, proc_stats, stop_process
from prometheus_client.parser import text_string_to_metric_families
from server_scale import CONFIG_A

from opamp_operator.cli import LIMIT_FLAGS
from opamp_operator.server.tls import self_signed
from opamp_operator.simulator import Simulation, SimulationSettings, SimulationStats
from opamp_operator.simulator.stats import percentiles

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "deploy/helm/opamp-operator/values.yaml"
KIB_PER_TLS_AGENT = 51  # settled RSS per TLS agent on uvloop (docs/benchmarks.md, tls_storm)
BUCKET_S = 5.0
SAMPLE_S = 0.5
HOW = {"kill": (signal.SIGKILL, "SIGKILL (crash)"), "term": (signal.SIGTERM, "SIGTERM (1001)")}
REFUSED = "connect: ConnectionRefusedError"  # nothing listening: the restart's gap


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---- the chart's values ---------------------------------------------------------------


def _camel(flag: str) -> str:
    """--max-websockets -> maxWebsockets: the chart's name for a limit flag."""
    first, *rest = flag.removeprefix("--").split("-")
    return first + "".join(word.capitalize() for word in rest)


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity (512Mi, 1Gi, 500M, 536870912) in bytes."""
    text = str(text).strip()
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text.removesuffix(suffix)) * _UNITS[suffix])
    return int(float(text))


@dataclass(frozen=True)
class Chart:
    """What the benchmark takes from values.yaml (after --set)."""

    limits: dict[str, Any]
    memory_limit: int
    log_level: str
    overrides: tuple[str, ...]

    @classmethod
    def load(cls, overrides: list[str], path: Path = VALUES) -> Chart:
        values = yaml.safe_load(path.read_text())
        for item in overrides:
            key, sep, text = item.partition("=")
            *parents, leaf = key.split(".")
            node = values
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if not sep or not isinstance(node, dict) or leaf not in node:
                raise SystemExit(f"--set {item}: not a value of {path.relative_to(REPO)}")
            node[leaf] = yaml.safe_load(text)
        limits = values["opamp"]["limits"]
        unknown = set(limits) - {_camel(flag) for flag, *_ in LIMIT_FLAGS}
        if unknown:
            raise SystemExit(f"opamp.limits.{sorted(unknown)[0]}: no `serve` flag takes it")
        return cls(
            limits=limits,
            memory_limit=quantity_bytes(values["resources"]["limits"]["memory"]),
            log_level=str(values["logLevel"]),
            overrides=tuple(overrides),
        )

    def flags(self) -> list[str]:
        """Each limit flag with the chart's value, as the chart's Deployment passes it."""
        return [f"{flag}={self.limits[_camel(flag)]}" for flag, *_ in LIMIT_FLAGS]

    def cannot_hold(self, agents: int) -> list[str]:
        """Why these values cannot hold `agents` at once (empty: they can)."""
        why = []
        for key, what in (("maxWebsockets", "WebSockets"), ("maxAgents", "agent records")):
            cap = int(self.limits[key])
            if cap < agents:
                why.append(
                    f"opamp.limits.{key} is {cap:,}: the server keeps at most {cap:,} "
                    f"{what}, so {agents - cap:,} of {agents:,} agents would be refused "
                    "(503 / 1013 + Retry-After) again and again, never all connected"
                )
        return why


# ---- the server -----------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    sampler: Sampler
    generation: int

    def gone(self) -> None:
        self.sampler.stop()


class Servers:
    """`opamp-operator serve` processes, one at a time, all on the same two ports."""

    def __init__(self, workdir: Path, chart: Chart) -> None:
        self.workdir = workdir
        self.chart = chart
        self.port, self.api_port = free_port(), free_port()
        self.cert, self.key, ca_pem = self_signed(
            workdir / "pki", ["127.0.0.1", "localhost"], "reconnect_storm benchmark"
        )
        self.ca = workdir / "pki" / "ca.crt"
        self.ca.write_bytes(ca_pem)
        self.fleets = workdir / "fleets.yaml"
        self.fleets.write_text(
            yaml.safe_dump({"fleets": [{"name": "all", "selector": {}, "config": CONFIG_A}]})
        )
        self.generation = 0
        self.current: Server | None = None

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/v1/opamp"

    def start(self) -> Server:
        self.generation += 1
        command = [
            sys.executable,
            "-m",
            "opamp_operator",
            f"--log-level={self.chart.log_level}",
            "serve",
            f"--config={self.fleets}",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--api-port={self.api_port}",
            f"--tls-cert-file={self.cert}",
            f"--tls-key-file={self.key}",
            *self.chart.flags(),
        ]
        with self.log(self.generation).open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        sampler = Sampler({"server": proc.pid}, interval=SAMPLE_S)
        sampler.start()
        self.current = Server(proc, sampler, self.generation)
        return self.current

    def stop(self) -> None:
        """The running server, if any: SIGTERM, SIGKILL after a minute."""
        if self.current is not None:
            stop_process(self.current.proc, timeout=60)
            self.current.gone()
            self.current = None

    def log(self, generation: int) -> Path:
        return self.workdir / f"server-{generation}.log"

    async def listening(self, server: Server, within: float = 120) -> None:
        """Until the API port answers: it starts after the agents' port (a probe of the
        agents' port would be a failed TLS handshake in the server's log)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                tail = self.log(server.generation).read_text()[-2000:]
                raise RuntimeError(f"server exited with {server.proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.api_port)
                writer.close()
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"the server did not listen within {within:g} s")

    async def errors(self) -> dict[str, int]:
        """opamp_errors_total by reason, from the running server's /metrics."""
        url = f"http://127.0.0.1:{self.api_port}/metrics"
        asked = time.monotonic()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.get(url) as response,
            ):
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log(f"/metrics: {exc!r}")
            return {}
        finally:
            if (took := time.monotonic() - asked) > 1:
                log(f"/metrics took {took:.1f} s")
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "opamp_errors":
                for sample in family.samples:
                    if sample.name == "opamp_errors_total":
                        counts[sample.labels["reason"]] = int(sample.value)
        return counts


# ---- one restart ----------------------------------------------------------------------


@dataclass
class Restart:
    how: str
    run: int
    agents: int
    old_gone_s: float
    listening_s: float
    all_back_s: float | None
    back: int
    reconnect_s: dict[str, float]
    refused_attempts: int
    failed_handshakes: dict[str, int]
    other_errors: dict[str, int]
    throttles: int
    throttled_agents: int
    throttled_min_wait_s: float | None
    server_errors: dict[str, int]
    listen_overflows: int
    syn_retransmits: int
    server_cpu_s: float
    clients_cpu_s: float
    peak_rss_mib: float
    sampled_peak_rss_mib: float
    settled_rss_mib: float
    memory_limit_mib: float
    over_limit_at_s: float | None
    load: float
    buckets: list[int] = field(default_factory=list)
    bucket_rss_mib: list[float] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        parts = []
        if self.all_back_s is None:
            parts.append(f"NOT ALL BACK: {self.back:,} of {self.agents:,}")
        else:
            parts.append(f"all back in {self.all_back_s:.1f} s")
        if self.peak_rss_mib > self.memory_limit_mib:
            parts.append("RSS OVER THE LIMIT (OOM-killed in a pod)")
        else:
            parts.append("under the memory limit")
        return "; ".join(parts)


def back_since(stats: SimulationStats, t0: float) -> list[float]:
    """Per agent answered again since `t0`: how long after it."""
    return [a - t0 for a in stats.acked_at if a is not None and a >= t0]


async def wait_process(proc: subprocess.Popen[bytes], within: float) -> None:
    try:
        await asyncio.to_thread(proc.wait, within)
    except subprocess.TimeoutExpired:
        log(f"the old server did not exit within {within:g} s: SIGKILL")
        proc.kill()
        await asyncio.to_thread(proc.wait)


async def wait_back(
    sim: Simulation, server: Server, t0: float, args: argparse.Namespace
) -> list[float]:
    """Until every agent was answered again since `t0` (or --deadline, or the server died),
    with a progress line every 5 s; each agent's time since `t0`."""
    n: int = args.agents
    stats, throttles0 = sim.stats, sim.stats.throttled
    deadline, next_line = t0 + args.deadline, sim.now() + 5
    while not (stats.acked == n and len(back_since(stats, t0)) == n) and sim.now() < deadline:
        if server.proc.poll() is not None:
            log(f"the new server exited with {server.proc.returncode}")
            break
        await asyncio.sleep(0.05)
        if sim.now() >= next_line:
            next_line += 5
            samples = server.sampler.samples["server"]
            rss = samples[-1].rss / 2**20 if samples else 0.0
            log(
                f"t={sim.now() - t0:.0f} s: {len(back_since(stats, t0)):,}/{n:,} back, "
                f"{stats.throttled - throttles0:,} refusals, server RSS {rss:.0f} MiB"
            )
    times = back_since(stats, t0)
    if len(times) < n:
        log(f"only {len(times):,} of {n:,} agents back within --deadline {args.deadline:g} s")
    return times


def spread(
    times: list[float], samples: list[Sample], wall0: float, span: float
) -> tuple[list[int], list[float]]:
    """Agents back, and the server's highest sampled RSS (MiB), per BUCKET_S since the signal."""
    count = max(1, math.ceil(span / BUCKET_S))
    buckets = [0] * count
    for t in times:
        buckets[min(count - 1, int(t // BUCKET_S))] += 1
    rss = [0.0] * count
    for sample in samples:
        i = int((sample.at - wall0) // BUCKET_S)
        if 0 <= i < count:
            rss[i] = max(rss[i], sample.rss / 2**20)
    return buckets, rss


@dataclass
class Before:
    """What the agents had counted when the signal was sent."""

    t0: float
    wall: float
    errors: Counter[str]
    throttles: int
    net: tuple[int, int]
    clients_cpu: float

    @classmethod
    def take(cls, sim: Simulation) -> Before:
        return cls(
            sim.now(),
            time.time(),
            Counter(sim.stats.errors),
            sim.stats.throttled,
            listen_counters(),
            proc_stats(os.getpid())[1],
        )


async def restart(
    how: str, run: int, servers: Servers, sim: Simulation, args: argparse.Namespace
) -> Restart:
    """Signal the running server, start the next one once it is gone, time the agents'
    return, and take the figures after --settle seconds."""
    stats, chart = sim.stats, servers.chart
    old = servers.current
    assert old is not None, "a server to restart"
    sig, label = HOW[how]
    log(f"{label}, run {run}: signalling server {old.generation}")
    before = Before.take(sim)
    t0 = before.t0
    old.proc.send_signal(sig)
    await wait_process(old.proc, 3 * float(chart.limits["shutdownSeconds"]) + 30)
    old.gone()
    gone = sim.now() - t0
    new = servers.start()
    await servers.listening(new)
    up = sim.now() - t0
    log(f"old server gone at {gone:.2f} s, new server {new.generation} listening at {up:.2f} s")
    times = await wait_back(sim, new, t0, args)
    all_back_s = max(times) if len(times) == args.agents else None
    await asyncio.sleep(args.settle)

    net = listen_counters()
    server_cpu, settled = 0.0, 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        settled, server_cpu = proc_stats(new.proc.pid)
    samples = [s for s in new.sampler.samples["server"] if s.at >= before.wall]
    buckets, bucket_rss = spread(
        times, samples, before.wall, all_back_s if all_back_s is not None else args.deadline
    )
    errors = Counter(stats.errors)
    errors.subtract(before.errors)
    throttled = [i for i, at in enumerate(stats.throttled_at) if at is not None and at >= t0]
    waits = [
        a - w
        for i in throttled
        if (a := stats.acked_at[i]) is not None and (w := stats.throttled_at[i]) is not None
        if a >= w
    ]
    result = Restart(
        how=label,
        run=run,
        agents=args.agents,
        old_gone_s=gone,
        listening_s=up,
        all_back_s=all_back_s,
        back=len(times),
        reconnect_s=percentiles(times),
        refused_attempts=errors[REFUSED],
        failed_handshakes={
            kind.removeprefix("connect: "): v
            for kind, v in errors.items()
            if v > 0 and kind != REFUSED and kind.startswith("connect: ")
        },
        other_errors={
            kind: v for kind, v in errors.items() if v > 0 and not kind.startswith("connect: ")
        },
        throttles=stats.throttled - before.throttles,
        throttled_agents=len(throttled),
        throttled_min_wait_s=min(waits) if waits else None,
        server_errors=await servers.errors(),
        listen_overflows=net[0] - before.net[0],
        syn_retransmits=net[1] - before.net[1],
        server_cpu_s=server_cpu,
        clients_cpu_s=proc_stats(os.getpid())[1] - before.clients_cpu,
        peak_rss_mib=peak_rss(new.proc.pid) / 2**20,
        sampled_peak_rss_mib=max((s.rss for s in samples), default=0) / 2**20,
        settled_rss_mib=settled / 2**20,
        memory_limit_mib=chart.memory_limit / 2**20,
        over_limit_at_s=next(
            (s.at - before.wall for s in samples if s.rss > chart.memory_limit), None
        ),
        load=os.getloadavg()[0],
        buckets=buckets,
        bucket_rss_mib=bucket_rss,
    )
    log(result.verdict)
    return result


# ---- the run --------------------------------------------------------------------------


@dataclass
class Run:
    idle_rss_mib: float = 0.0
    connected_rss_mib: float = 0.0
    connect_s: float = 0.0
    restarts: list[Restart] = field(default_factory=list)
    stopped: str = ""


async def run(args: argparse.Namespace, chart: Chart, workdir: Path) -> Run:
    servers = Servers(workdir, chart)
    result = Run()
    try:
        server = servers.start()
        await servers.listening(server)
        await asyncio.sleep(1.0)
        result.idle_rss_mib = proc_stats(server.proc.pid)[0] / 2**20
        expected = result.idle_rss_mib + args.agents * KIB_PER_TLS_AGENT / 1024
        if expected > chart.memory_limit / 2**20:
            log(
                f"expect ~{expected:.0f} MiB settled RSS ({result.idle_rss_mib:.0f} idle + "
                f"{args.agents:,} x {KIB_PER_TLS_AGENT} KiB), over the chart's "
                f"{chart.memory_limit / 2**20:.0f} MiB limit: a pod would be OOM-killed; "
                "measuring it"
            )
        settings = SimulationSettings(
            endpoint=servers.url,
            agents=args.agents,
            transport="ws",
            heartbeat=args.heartbeat,
            connect_rate=args.connect_rate,
            progress_interval=3600,
            backoff_initial=args.backoff_initial,
            backoff_max=args.backoff_max,
            open_timeout=args.open_timeout,
            ca_file=str(servers.ca),
            seed=args.seed,
        )
        async with Simulation(settings) as sim:
            log(f"connecting {args.agents:,} agents at {args.connect_rate:g}/s (0: all at once)")
            if not await sim.wait_until("applied", within=args.deadline):
                s = sim.stats
                result.stopped = (
                    f"before any restart: only {s.connected:,} of {args.agents:,} agents "
                    f"connected and {s.acked:,} answered within --deadline {args.deadline:g} s"
                )
                log(result.stopped)
                return result
            result.connect_s = sim.now()
            await asyncio.sleep(args.settle)
            result.connected_rss_mib = proc_stats(server.proc.pid)[0] / 2**20
            log(
                f"all applied at {result.connect_s:.1f} s; server RSS "
                f"{result.connected_rss_mib:.0f} MiB"
            )
            for round_ in range(1, args.repeat + 1):
                for how in args.restarts:
                    restarted = await restart(how, round_, servers, sim, args)
                    result.restarts.append(restarted)
                    if restarted.all_back_s is None:
                        result.stopped = f"{restarted.how}: {restarted.verdict}"
                        return result
            log("stopping the agents")
    finally:
        servers.stop()
    return result


# ---- the report -----------------------------------------------------------------------


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()) if v) or "0"


def report(result: Run, args: argparse.Namespace, chart: Chart) -> None:
    lim = chart.limits
    print(
        f"\n{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
        f"{ssl.OPENSSL_VERSION} · uvloop {importlib.metadata.version('uvloop')} · "
        f"aiohttp {aiohttp.__version__} · websockets {importlib.metadata.version('websockets')} · "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}\n"
    )
    print(
        f"{args.agents:,} WebSocket agents over TLS (EC P-256), one client process on the "
        f"same cores · heartbeat {args.heartbeat:g} s · backoff full jitter "
        f"{args.backoff_initial:g} s doubling to {args.backoff_max:g} s · open timeout "
        f"{args.open_timeout:g} s · chart values: maxWebsockets {lim['maxWebsockets']:,}, "
        f"maxAgents {lim['maxAgents']:,}, Retry-After {lim['retryAfterMinSeconds']} to "
        f"{lim['retryAfterMaxSeconds']} s, listenBacklog {lim['listenBacklog']}, "
        f"headerTimeout {lim['headerTimeoutSeconds']} s, shutdown {lim['shutdownSeconds']} s, "
        f"memory limit {chart.memory_limit / 2**20:.0f} MiB, logLevel {chart.log_level}"
        + (f" · --set {' '.join(chart.overrides)}" if chart.overrides else "")
    )
    print(
        f"\nBefore the restarts: idle server {result.idle_rss_mib:.0f} MiB; all agents "
        f"applied the config {result.connect_s:.1f} s after the first connect began; server "
        f"{result.connected_rss_mib:.0f} MiB with all connected "
        f"({(result.connected_rss_mib - result.idle_rss_mib) * 1024 / args.agents:.1f} "
        "KiB per agent).\n"
    )
    print(
        "| restart | run | old server gone (s) | new server listening (s) "
        "| all back (s): since the signal / since listening "
        "| per agent p50 / p90 / p99 / max (s) | attempts refused, nothing listening "
        "| failed handshakes | 503 / 1013 + Retry-After (agents) "
        "| agents on backoff only | server peak RSS / limit (MiB) | RSS settled (MiB) "
        "| server CPU since its start (s) | clients CPU (s) | listen overflows | host load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result.restarts:
        p = r.reconnect_s
        spread = " / ".join(f"{p[k]:.1f}" for k in ("p50", "p90", "p99", "max")) if p else "—"
        back = (
            f"{r.all_back_s:.1f} / {r.all_back_s - r.listening_s:.1f}"
            if r.all_back_s is not None
            else f"only {r.back:,}"
        )
        refused = f"{r.throttles:,} ({r.throttled_agents:,})"
        print(
            f"| {r.how} | {r.run} | {r.old_gone_s:.2f} | {r.listening_s:.2f} | {back} | "
            f"{spread} | {r.refused_attempts:,} | {_counts(r.failed_handshakes)} | "
            f"{refused} | {r.agents - r.throttled_agents:,} | "
            f"{r.peak_rss_mib:.0f} / {r.memory_limit_mib:.0f} | {r.settled_rss_mib:.0f} | "
            f"{r.server_cpu_s:.1f} | {r.clients_cpu_s:.1f} | {r.listen_overflows:,} | "
            f"{r.load:.1f} |"
        )
    for r in result.restarts:
        print(f"\n{r.how}, run {r.run}: {r.verdict}.", end=" ")
        print(f"Restarted server's /metrics errors: {_counts(r.server_errors)}.", end=" ")
        if r.other_errors:
            print(f"Agents' other errors: {_counts(r.other_errors)}.", end=" ")
        if r.throttled_min_wait_s is not None:
            print(
                f"Refused agents came back {r.throttled_min_wait_s:.1f} s or more after "
                "their last refusal.",
                end=" ",
            )
        if r.over_limit_at_s is not None:
            print(f"RSS first over the limit {r.over_limit_at_s:.1f} s after the signal.", end="")
        print("\n\n| since the signal (s) | agents back | per second | server RSS, max (MiB) |")
        print("|---|---|---|---|")
        for i, (count, rss) in enumerate(zip(r.buckets, r.bucket_rss_mib, strict=True)):
            start = i * BUCKET_S
            print(
                f"| {start:g} to {start + BUCKET_S:g} | {count:,} | {count / BUCKET_S:,.1f} | "
                f"{rss:.0f} |"
            )
    if result.stopped:
        print(f"\n**Stopped early**: {result.stopped}.")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument(
        "--restarts",
        nargs="+",
        choices=list(HOW),
        default=list(HOW),
        help="how the server is restarted, in this order: kill (SIGKILL) and/or term (SIGTERM)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of --restarts")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a chart value for this run, e.g. opamp.limits.maxWebsockets=10000 or "
        "resources.limits.memory=1Gi (repeatable)",
    )
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument(
        "--connect-rate", type=float, default=500.0, help="first connects per second (0: at once)"
    )
    parser.add_argument("--backoff-initial", type=float, default=1.0)
    parser.add_argument("--backoff-max", type=float, default=30.0)
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=45.0,
        help="seconds to open a connection (TCP, TLS, upgrade): opamp-go's dialer, gorilla's "
        "DefaultDialer, allows 45",
    )
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="longest wait for agents, per step (s)"
    )
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after each step")
    parser.add_argument("--seed", type=int, default=None, help="backoff jitter seed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    chart = Chart.load(args.overrides)
    why = chart.cannot_hold(args.agents)
    if why:
        raise_ = [k for k in ("maxWebsockets", "maxAgents") if int(chart.limits[k]) < args.agents]
        what_if = [f".venv/bin/python benchmarks/reconnect_storm.py --agents {args.agents}"]
        what_if += [
            f"--set {item}"
            for item in chart.overrides
            if item.partition("=")[0] not in {f"opamp.limits.{k}" for k in raise_}
        ]
        what_if += [f"--set opamp.limits.{key}={args.agents}" for key in raise_]
        print(
            f"The chart's values cannot hold {args.agents:,} agents at once:\n"
            + "".join(f"  - {w}\n" for w in why)
            + "Nothing was run. To measure a what-if, pass the values to try (and a memory "
            f"limit: ~{KIB_PER_TLS_AGENT} KiB per TLS agent), e.g.\n  " + " ".join(what_if),
            file=sys.stderr,
        )
        sys.exit(2)
    with TemporaryDirectory(prefix="reconnect-storm-") as tmp:
        result = uvloop.run(run(args, chart, Path(tmp)))
    report(result, args, chart)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    if result.stopped:
        sys.exit(1)


if __name__ == "__main__":
    main()
