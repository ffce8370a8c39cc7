"""A staged package upgrade of N simulated agents under `opamp-operator serve` (no
Kubernetes): how long each step of a fleets file fleet's `rollout` takes from its start to
its end, how many times serve rewrites the fleet's state file in `--state-dir` per step,
and what serve's process burns and holds meanwhile.

The world is processes on loopback: `python -m opamp_operator serve --state-dir DIR
--rollout-interval 2 --reload-seconds 0.5` with a fleets file of one fleet (selector {},
a 1 KiB Collector config, `version: {expected: 1.0.0, package: {url, sha256}}` and a
`rollout` with `--steps`, default 1 %, 10 %, 50 %, 100 %, no pauses, no bake, default
gates), and `opamp-operator simulate --accept-packages --service-version 1.0.0` (N
WebSocket agents, at most `--agents-per-simulator`, 5,000, per process: each agent holds
a socket, and every process stays under 20,000 open files). The package files
are served over plain HTTP on loopback by the test world's PackageFiles
(tests/world/collector.py), in this process, which counts the requests.

Once every agent installed 1.0.0 and the rollout says Succeeded on that revision, the
fleets file is rewritten with `version` 2.0.0 and a new file (`--package-bytes` random
bytes, its SHA-256 correct), the config unchanged, and GET /api/v1/rollouts is polled
every 0.2 s until it says Succeeded. Step boundaries are the poll times at which
`currentStep` moved (with `stepArmed`), and the one at which the phase turned Succeeded.
At each boundary: the 2.0.0 files the file server had answered (200), the installs the
simulators' progress lines counted (up to 1 s late), serve's CPU time (/proc), and its
/metrics `opamp_event_loop_lag_seconds` histogram.

State-file writes are counted with inotify (ctypes, no dependency): every IN_MOVED_TO of
a `fleet-*.json` in DIR is one `StateDir.save` (written aside, renamed over the file). The
file is read as the event arrives, so each write is attributed by what it records (the
step in `currentStep`, or Succeeded) and compared with the write before it (which status
keys changed). Windows of `--idle` seconds before the edit and after Succeeded count the
writes made when nothing changes.

    .venv/bin/python benchmarks/serve_rollout.py --agents 1000
    .venv/bin/python benchmarks/serve_rollout.py --agents 10000 --json /tmp/serve-rollout-10k.json
    .venv/bin/python benchmarks/serve_rollout.py --agents 200      # a quick check

With `--py-spy .venv/bin/py-spy`, serve is sampled (50 Hz) from the edit to Succeeded and
its event loop's time is broken down by entry point (the rollout ticks, agents' messages,
offers); a diagnosis, as sampling costs serve CPU: the figures of record are without it.

Prints a Markdown table and (with --json) writes every figure, each state write included.
Everything started is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import fnmatch
import itertools
import json
import math
import os
import platform
import select
import shutil
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import aiohttp
from fleet_scale import PySpy, SimulatorProcess, log, simulate_argv
from loop_lag import Scrape, lag_figures, loop_profile, parse_metrics
from procstat import Sampler, free_port, peak_rss, proc_stats
from server_scale import CONFIG_A

import opamp_operator
from opamp_operator.api.models import FleetVersion
from opamp_operator.fleet.versions import revision_hash
from opamp_operator.opamp.configs import RemoteConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from world.collector import PackageFiles  # noqa: E402 - tests/ is not on sys.path by default
from world.operator import write_fleets  # noqa: E402
from world.processes import ProcessRecord, spawn, terminate  # noqa: E402

FLEET = "collectors"
STABLE_VERSION, NEW_VERSION = "1.0.0", "2.0.0"
POLL_S = 0.2
FILE_LIMIT = 20_000  # every process stays under this many open files


def package_path(version: str) -> str:
    return f"/otelcol-{version}.bin"


# ---- state-file writes, by inotify --------------------------------------------------------

IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


@dataclass
class StateWrite:
    at: float  # Unix time this benchmark read the IN_MOVED_TO event
    inode: int  # of the file read right after the event
    size: int
    phase: str
    current_step: int | None
    step_armed: bool
    desired_hash: str
    stable_hash: str
    changed: list[str]  # what differs from the write read before it
    downloads: int  # 2.0.0 files the file server had answered 200 when the event was read
    applied: list[int]  # status steps[i].applied, each step
    agents: int | None  # status `agents`: the fleet's agents the planner counted
    reread: bool = False  # the file read was the one the previous event had read: a later
    # write had already replaced it (the count is still right, the content is the later's)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The state's parts that differ: `stable`, status keys, `steps[i].field`,
    `conditions[Type].field`."""
    out = [] if old.get("stable") == new.get("stable") else ["stable"]
    before, after = old.get("status") or {}, new.get("status") or {}
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if key == "steps" and isinstance(a, list) and isinstance(b, list):
            for i in range(max(len(a), len(b))):
                x = a[i] if i < len(a) else {}
                y = b[i] if i < len(b) else {}
                out += [f"steps[{i}].{k}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        elif key == "conditions" and isinstance(a, list) and isinstance(b, list):
            xs = {c.get("type"): c for c in a}
            ys = {c.get("type"): c for c in b}
            for t in sorted(set(xs) | set(ys), key=str):
                x, y = xs.get(t, {}), ys.get(t, {})
                out += [
                    f"conditions[{t}].{k}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)
                ]
        else:
            out.append(key)
    return out


class StateWrites:
    """Every rename onto a `fleet-*.json` in `directory` (how StateDir.save replaces a
    state file), read on a thread as the kernel reports it."""

    def __init__(self, directory: Path, downloads: Callable[[], int]) -> None:
        self.directory = directory
        self.downloads = downloads
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self.writes: list[StateWrite] = []
        self.overflows = 0
        self._last: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-writes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            now = time.time()
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
                offset = start + length
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                elif mask & IN_MOVED_TO and fnmatch.fnmatch(name, "fleet-*.json"):
                    self._record(now, self.directory / name)

    def _record(self, now: float, path: Path) -> None:
        try:
            inode = path.stat().st_ino
            body = path.read_bytes()
            state: dict[str, Any] = json.loads(body)
        except (OSError, ValueError) as exc:
            log(f"state file {path}: {exc!r}")
            inode, body, state = 0, b"", {}
        status = state.get("status") or {}
        step = status.get("currentStep")
        with self._lock:
            previous = self.writes[-1] if self.writes else None
            self.writes.append(
                StateWrite(
                    at=now,
                    inode=inode,
                    size=len(body),
                    phase=str(status.get("phase") or ""),
                    current_step=int(step) if step is not None else None,
                    step_armed=bool(status.get("stepArmed")),
                    desired_hash=str(status.get("desiredHash") or ""),
                    stable_hash=str((state.get("stable") or {}).get("hash") or ""),
                    changed=_changes(self._last, state),
                    downloads=self.downloads(),
                    applied=[
                        int(s.get("applied") or 0)
                        for s in status.get("steps") or []
                        if isinstance(s, dict)
                    ],
                    agents=status.get("agents"),
                    reread=previous is not None and previous.inode == inode,
                )
            )
            self._last = state

    def between(self, start: float, end: float) -> list[StateWrite]:
        with self._lock:
            return [w for w in self.writes if start <= w.at < end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.fd)


# ---- processes ----------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (serve's config workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_of(pids: list[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[pid] = proc_stats(pid)[1]
    return out


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Mark:
    """What was read at the poll that saw a step start (or the rollout succeed)."""

    at: float
    step: int  # 0-based; len(steps) for Succeeded
    status_steps: list[dict[str, Any]]
    downloads: int  # 2.0.0 files the file server answered 200, since the edit
    installed: int  # agents the simulators saw install 2.0.0 (their last progress lines)
    serve_cpu: float
    metrics: Scrape | None


@dataclass
class StepResult:
    step: int  # 1-based
    size: str
    members: int  # status steps[i].offered at the end
    applied: int  # status steps[i].applied at the end
    started_after_edit_s: float
    seconds: float  # poll that saw it start -> poll that saw the next start (or Succeeded)
    state_writes: int  # writes whose status records this step (currentStep == i)
    writes_armed: int  # of those, with stepArmed
    writes_in_window: int  # writes read between the two polls, whatever they record
    changed: dict[str, int]  # what the step's writes changed, how often
    downloads: int  # cumulative at the poll that saw the step end
    downloads_before_next: int | None  # cumulative when the state write that armed the
    # next step (or recorded Succeeded) was read: the next step's offers follow that write
    installed: int  # cumulative at the step's end
    serve_cpu_s: float
    loop_lag: dict[str, Any]


@dataclass
class Results:
    agents: int
    steps_pct: list[float]
    machine: dict[str, Any]
    settings: dict[str, Any]
    setup_s: dict[str, float] = field(default_factory=dict)
    load: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    new_revision_seen_s: float | None = None  # edit -> the status names the 2.0.0 revision
    first_step_armed_s: float | None = None
    succeeded_s: float | None = None
    phases_seen: list[str] = field(default_factory=list)
    writes_total: int = 0  # from the edit to the Succeeded poll, by time
    writes_before_first_step: int = 0  # recording the new revision before step 1 armed
    writes_succeeded: int = 0  # recording Succeeded on the new revision
    writes_other: list[dict[str, Any]] = field(default_factory=list)
    writes_idle_before: int = 0
    writes_idle_after: int = 0
    idle_writes: list[dict[str, Any]] = field(default_factory=list)  # what those changed
    inotify_overflows: int = 0
    rereads: int = 0
    state_file_bytes: int = 0
    serve: dict[str, Any] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # edit -> Succeeded, by process
    # (0.5 s samples; "benchmark" is this process: the file server, the polls)
    loop_lag: dict[str, Any] = field(default_factory=dict)
    poll_seconds_max: float = 0.0
    slow_polls: list[tuple[float, float]] = field(default_factory=list)  # (s after the edit,
    # s the GET took) of the status polls that took over 0.1 s
    py_spy: dict[str, Any] = field(default_factory=dict)  # --py-spy: serve's loop, by entry
    files_served: dict[str, dict[str, int]] = field(default_factory=dict)
    simulators: dict[str, Any] = field(default_factory=dict)
    open_files_max: dict[str, int] = field(default_factory=dict)
    all_installed_s: float | None = None  # edit -> simulators: every agent installed 2.0.0
    state_writes: list[dict[str, Any]] = field(default_factory=list)  # since the edit


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "opamp_operator": opamp_operator.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.n: int = args.agents
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.state_dir.mkdir(mode=0o700)
        self.fleets = workdir / "fleets.yaml"
        self.port, self.api_port = free_port(), free_port()
        payloads = {v: os.urandom(args.package_bytes) for v in (STABLE_VERSION, NEW_VERSION)}
        self.files = PackageFiles({package_path(v): b for v, b in payloads.items()})
        self.versions = {
            v: {
                "expected": v,
                "package": {
                    "url": self.files.url(package_path(v)),
                    "sha256": PackageFiles.sha256(body),
                },
            }
            for v, body in payloads.items()
        }
        self.writes = StateWrites(self.state_dir, lambda: self.served(NEW_VERSION)[200])
        self.serve: ProcessRecord | None = None
        self.sims: list[SimulatorProcess] = []
        self.sampler: Sampler | None = None
        self.session: aiohttp.ClientSession | None = None
        procs = max(1, math.ceil(self.n / args.agents_per_simulator))
        share, extra = divmod(self.n, procs)
        self.shares = [share + (1 if i < extra else 0) for i in range(procs)]
        self.results = Results(
            self.n,
            list(args.steps),
            machine(),
            {
                "rollout_interval": args.rollout_interval,
                "reload_seconds": args.reload_seconds,
                "package_bytes": args.package_bytes,
                "simulators": self.shares,
                "connect_rate": args.connect_rate,
                "heartbeat": args.heartbeat,
                "max_websockets": self.max_websockets,
                "opamp_operator_from": str(Path(opamp_operator.__file__).parent),
            },
        )
        self.fds: Counter[str] = Counter()

    @property
    def max_websockets(self) -> int | None:
        """serve's default (10,000) unless N needs more room (a reconnect may briefly
        hold two)."""
        return self.n + 1000 if self.n + 1000 > 10_000 else None

    def fleet(self, version: str) -> dict[str, Any]:
        return {
            "name": FLEET,
            "selector": {},
            "config": CONFIG_A,
            "version": self.versions[version],
            "rollout": {"steps": [{"percent": p} for p in self.args.steps]},
        }

    def revision(self, version: str) -> str:
        """The revision hash serve gives the fleet with `version` (Fleet.revision_hash)."""
        offer = FleetVersion.model_validate(self.versions[version]).offer()
        return revision_hash(RemoteConfig.single(CONFIG_A.encode()).hash.hex(), offer)

    # ---- what is read ---------------------------------------------------------------------

    def served(self, version: str) -> Counter[int]:
        path = package_path(version)
        return Counter(d.status for d in list(self.files.downloads) if d.path == path)

    def installed(self, version: str) -> int:
        """Agents that installed `version`, summed over the simulators' last progress
        lines that name it (a simulator's line names the package offered last)."""
        total = 0
        for sim in self.sims:
            for p in reversed(sim.progress):
                if p.package == version:
                    total += p.installed
                    break
        return total

    def connected(self) -> int:
        return sum(sim.progress[-1].connected for sim in self.sims if sim.progress)

    def alive(self) -> None:
        if self.serve is not None and not self.serve.alive():
            raise RuntimeError(f"serve exited; its log:\n{self.serve.log_tail()}")
        for sim in self.sims:
            sim.check()

    def count_files(self) -> None:
        """Open files of every process, the highest seen kept."""
        pids = {"serve": self.serve.pid if self.serve else 0}
        pids.update({f"simulator-{i}": s.proc.pid for i, s in enumerate(self.sims)})
        pids["benchmark"] = os.getpid()
        for name, pid in pids.items():
            self.fds[name] = max(self.fds[name], open_files(pid))

    async def get(self, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(f"http://127.0.0.1:{self.api_port}{path}") as r:
            r.raise_for_status()
            if r.content_type == "application/json":
                return await r.json()
            return await r.text()

    async def rollout(self) -> dict[str, Any]:
        listed = await self.get("/api/v1/rollouts")
        found = [r for r in listed["rollouts"] if r.get("fleet") == FLEET]
        return dict(found[0]) if found else {}

    async def metrics(self) -> Scrape | None:
        t = time.time()
        try:
            text = await self.get("/metrics")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log(f"/metrics: {exc!r}")
            return None
        return parse_metrics(str(text), t, time.time() - t)

    async def until(self, what: str, check: Any, every: float = 0.5) -> float:
        """Poll the async `check` until true; its Unix time."""
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            self.alive()
            if await check():
                return time.time()
            await asyncio.sleep(every)
        raise TimeoutError(f"no {what} within {self.args.timeout:g} s")

    # ---- the run --------------------------------------------------------------------------

    async def start_serve(self) -> None:
        write_fleets(self.fleets, [self.fleet(STABLE_VERSION)])
        argv = [
            sys.executable,
            "-m",
            "opamp_operator",
            "--log-level=INFO",
            "serve",
            f"--config={self.fleets}",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--api-port={self.api_port}",
            f"--state-dir={self.state_dir}",
            f"--rollout-interval={self.args.rollout_interval:g}",
            f"--reload-seconds={self.args.reload_seconds:g}",
        ]
        if self.max_websockets is not None:
            argv.append(f"--max-websockets={self.max_websockets}")
        self.serve, _ = spawn("serve", argv, self.workdir / "logs")
        self.sampler = Sampler({"serve": self.serve.pid, "benchmark": os.getpid()}, interval=0.5)
        self.sampler.start()

        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                return bool(await self.get("/readyz") == "ok")
            return False

        await self.until("serve /readyz", ready, every=0.1)

    def start_simulators(self) -> None:
        rate = self.args.connect_rate / len(self.shares)
        for i, agents in enumerate(self.shares):
            argv = [
                *simulate_argv(self.port, agents, f"sim{i}", self.args.heartbeat, rate),
                f"--seed={i + 1}",
                "--accept-packages",
                f"--service-version={STABLE_VERSION}",
            ]
            self.sims.append(
                SimulatorProcess(
                    argv,
                    self.workdir / "logs" / f"simulator-{i}.log",
                    self.workdir / f"simulator-{i}-summary.json",
                )
            )
            self.results.simulators.setdefault("pids", []).append(self.sims[-1].proc.pid)
            if self.sampler is not None:
                self.sampler.follow(f"simulator-{i}", self.sims[-1].proc.pid)

    async def setup(self) -> None:
        setup = self.results.setup_s
        t = time.time()
        await self.start_serve()
        setup["serve_ready"] = round(time.time() - t, 1)
        t = time.time()
        self.start_simulators()

        async def all_connected() -> bool:
            return self.connected() >= self.n

        setup["all_connected"] = round(
            await self.until("all agents connected", all_connected) - t, 1
        )
        self.count_files()

        async def stable_installed() -> bool:
            return self.installed(STABLE_VERSION) >= self.n

        setup["stable_installed"] = round(
            await self.until(f"{STABLE_VERSION} installed by all", stable_installed) - t, 1
        )
        log(f"{self.n} agents installed {STABLE_VERSION}: {dict(self.served(STABLE_VERSION))}")
        stable = self.revision(STABLE_VERSION)
        seen: dict[str, Any] = {}

        async def adopted() -> bool:
            seen.update(await self.rollout())
            return seen.get("phase") == "Succeeded"

        await self.until("the rollout Succeeded on 1.0.0", adopted, every=POLL_S)
        if seen.get("desiredHash") != stable:
            raise RuntimeError(
                f"the rollout's desiredHash {seen.get('desiredHash')} is not the revision "
                f"computed for {STABLE_VERSION}, {stable}: this benchmark's hash is wrong"
            )
        self.count_files()
        log(f"the rollout Succeeded on {STABLE_VERSION}; idle {self.args.idle:g} s")
        start = time.time()
        await asyncio.sleep(self.args.idle)
        idle = self.writes.between(start, time.time())
        self.results.writes_idle_before = len(idle)
        self.results.idle_writes += [
            {"window": "before the edit", "at": round(w.at - start, 3), "changed": w.changed}
            for w in idle
        ]

    async def mark(self, at: float, step: int, status: dict[str, Any], marks: list[Mark]) -> None:
        assert self.serve is not None
        marks.append(
            Mark(
                at,
                step,
                list(status.get("steps") or []),
                self.served(NEW_VERSION)[200],
                self.installed(NEW_VERSION),
                proc_stats(self.serve.pid)[1],
                await self.metrics(),
            )
        )
        self.count_files()

    async def drive(self, t0: float) -> list[Mark]:
        """Poll the rollout until Succeeded on the new revision; a Mark at each step
        start and at Succeeded."""
        out = self.results
        desired = self.revision(NEW_VERSION)
        marks: list[Mark] = []
        seen_step = -1
        while True:
            asked = time.time()
            status = await self.rollout()
            now = time.time()
            out.poll_seconds_max = max(out.poll_seconds_max, round(now - asked, 3))
            if now - asked > 0.1:
                out.slow_polls.append((round(asked - t0, 2), round(now - asked, 3)))
            phase = str(status.get("phase"))
            if not out.phases_seen or out.phases_seen[-1] != phase:
                out.phases_seen.append(phase)
            if status.get("desiredHash") == desired:
                if out.new_revision_seen_s is None:
                    out.new_revision_seen_s = round(now - t0, 2)
                step = int(status.get("currentStep") or 0)
                if phase == "Succeeded":
                    await self.mark(now, len(self.args.steps), status, marks)
                    out.succeeded_s = round(now - t0, 2)
                    return marks
                if status.get("stepArmed") and step != seen_step:
                    if out.first_step_armed_s is None:
                        out.first_step_armed_s = round(now - t0, 2)
                    await self.mark(now, step, status, marks)
                    seen_step = step
                    log(f"step {step + 1} started {now - t0:.2f} s after the edit")
                if phase in ("Failed", "RolledBack", "Aborted"):
                    raise RuntimeError(f"the rollout ended {phase}: {status.get('message')}")
            if now - t0 > self.args.timeout:
                raise TimeoutError(f"no Succeeded within {self.args.timeout:g} s: {status}")
            self.alive()
            await asyncio.sleep(POLL_S)

    async def run(self) -> Results:
        out = self.results
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as self.session:
            await self.setup()
            assert self.serve is not None
            assert self.sampler is not None
            workers_before = cpu_of(descendants(self.serve.pid))
            first = await self.metrics()
            assert first is not None
            out.load.append(("before the edit", os.getloadavg()))
            spy = PySpy(self.args.py_spy, self.serve.pid, self.workdir)
            spy.start("rollout")
            t0 = time.time()
            write_fleets(self.fleets, [self.fleet(NEW_VERSION)])
            serve_cpu0 = proc_stats(self.serve.pid)[1]
            try:
                marks = await self.drive(t0)
            finally:
                spy.stop()
            if self.args.py_spy:
                out.py_spy = loop_profile(self.workdir / "py-spy-rollout.txt", top=8)
            end = marks[-1].at
            log(f"rollout Succeeded {end - t0:.2f} s after the edit")
            out.load.append(("at Succeeded", os.getloadavg()))
            workers_after = cpu_of(descendants(self.serve.pid))
            # the write of the tick that said Succeeded may land after the poll saw it
            await asyncio.sleep(1.0)
            start = time.time()
            await asyncio.sleep(self.args.idle)
            idle = self.writes.between(start, time.time())
            out.writes_idle_after = len(idle)
            out.idle_writes += [
                {"window": "after Succeeded", "at": round(w.at - start, 3), "changed": w.changed}
                for w in idle
            ]

            async def new_installed() -> bool:
                return self.installed(NEW_VERSION) >= self.n

            got = await self.until(f"{NEW_VERSION} installed by all", new_installed)
            self.count_files()
            self.figures(
                t0,
                serve_cpu0,
                marks,
                first=first,
                workers_before=workers_before,
                workers_after=workers_after,
            )
            out.serve["vm_hwm_mib"] = round(peak_rss(self.serve.pid) / 2**20, 1)
            out.files_served = {
                v: {str(k): n for k, n in self.served(v).items()}
                for v in (STABLE_VERSION, NEW_VERSION)
            }
            self.stop_simulators(t0)
            out.all_installed_s = out.simulators.get("all_installed_s") or round(got - t0, 2)
            out.open_files_max = dict(self.fds)
            out.state_file_bytes = max((w.size for w in self.writes.writes), default=0)
            out.inotify_overflows = self.writes.overflows
            return out

    def figures(
        self,
        t0: float,
        serve_cpu0: float,
        marks: list[Mark],
        *,
        first: Scrape,
        workers_before: dict[int, float],
        workers_after: dict[int, float],
    ) -> None:
        out = self.results
        assert self.sampler is not None
        desired = self.revision(NEW_VERSION)
        end = marks[-1].at
        since = [w for w in self.writes.writes if w.at >= t0]
        out.state_writes = [{**asdict(w), "at": round(w.at - t0, 3)} for w in since]
        out.rereads = sum(1 for w in since if w.reread)
        out.writes_total = sum(1 for w in since if w.at < end)
        by_step: dict[int, list[StateWrite]] = {}
        for w in since:
            if w.desired_hash != desired:
                out.writes_other.append({**asdict(w), "at": round(w.at - t0, 3)})
            elif w.phase == "Succeeded":
                out.writes_succeeded += 1
            elif w.current_step == 0 and not w.step_armed:
                out.writes_before_first_step += 1
            else:
                by_step.setdefault(int(w.current_step or 0), []).append(w)
        final = marks[-1].status_steps
        for start, stop in itertools.pairwise(marks):
            i = start.step
            mine = by_step.get(i, [])
            counts = final[i] if i < len(final) else {}
            out.steps.append(
                StepResult(
                    step=i + 1,
                    size=f"{self.args.steps[i]:g}%",
                    members=int(counts.get("offered", 0)),
                    applied=int(counts.get("applied", 0)),
                    started_after_edit_s=round(start.at - t0, 2),
                    seconds=round(stop.at - start.at, 2),
                    state_writes=len(mine),
                    writes_armed=sum(1 for w in mine if w.step_armed),
                    writes_in_window=len(self.writes.between(start.at, stop.at)),
                    changed=dict(Counter(c for w in mine for c in w.changed).most_common()),
                    downloads=stop.downloads,
                    downloads_before_next=next(
                        (
                            w.downloads
                            for w in since
                            if w.desired_hash == desired
                            and (
                                w.phase == "Succeeded"
                                or (w.step_armed and (w.current_step or 0) > i)
                            )
                        ),
                        None,
                    ),
                    installed=stop.installed,
                    serve_cpu_s=round(stop.serve_cpu - start.serve_cpu, 2),
                    loop_lag=(
                        lag_figures(start.metrics, stop.metrics)
                        if start.metrics and stop.metrics
                        else {}
                    ),
                )
            )
        window = self.sampler.window("serve", t0, end)
        out.cpu_s = {
            name: self.sampler.window(name, t0, end)["cpu_s"]
            for name, samples in self.sampler.samples.items()
            if samples
        }
        workers = sum(after - workers_before.get(pid, 0.0) for pid, after in workers_after.items())
        out.serve.update(
            {
                "cpu_s": round(marks[-1].serve_cpu - serve_cpu0, 2),
                "cpu_pct_of_one_core": round(
                    (marks[-1].serve_cpu - serve_cpu0) / max(end - t0, 1e-9) * 100, 1
                ),
                "rss_peak_mib": window["rss_peak_mib"],
                "rss_end_mib": window["rss_mib"],
                "workers": len(workers_after),
                "workers_cpu_s": round(workers, 2),
            }
        )
        last = marks[-1].metrics
        if last is not None:
            out.loop_lag = lag_figures(first, last)
            out.loop_lag["connected_agents_at_end"] = last.agents.get("connected")
            out.loop_lag["errors_during"] = {
                k: int(v - first.errors.get(k, 0.0))
                for k, v in last.errors.items()
                if v != first.errors.get(k, 0.0)
            }

    def stop_simulators(self, t0: float) -> None:
        """SIGTERM; from their summaries: downloads, installs, failures, errors, and when
        the last agent installed 2.0.0 (seconds from the edit)."""
        totals: Counter[str] = Counter()
        last_install: float | None = None
        first_offer: float | None = None
        for sim in self.sims:
            sim_t0 = sim.clock_offset if sim.progress else None
            summary = sim.stop() or {}
            for key in (
                "package_downloads",
                "package_download_bytes",
                "packages_installed",
                "package_install_failures",
                "errors",
                "reconnects",
                "connect_failures",
            ):
                value = summary.get(key)
                if isinstance(value, int):
                    totals[key] += value
            for p in summary.get("packages") or []:
                if p.get("version") != NEW_VERSION or sim_t0 is None:
                    continue
                offered = sim_t0 + p["first_offer_s"] - t0
                first_offer = offered if first_offer is None else min(first_offer, offered)
                if p.get("all_installed_s") is not None:
                    done = offered + p["all_installed_s"]
                    last_install = done if last_install is None else max(last_install, done)
        self.results.simulators.update(dict(totals))
        if first_offer is not None:
            self.results.simulators["first_offer_s"] = round(first_offer, 2)
        if last_install is not None:
            self.results.simulators["all_installed_s"] = round(last_install, 2)
        self.sims = []

    def close(self) -> None:
        for sim in self.sims:
            with contextlib.suppress(Exception):
                sim.stop()
        if self.serve is not None:
            terminate(self.serve)
        if self.sampler is not None:
            self.sampler.stop()
        self.files.stop()
        self.writes.stop()


def print_report(r: Results) -> None:
    m = r.machine
    print(
        f"\n{m['host']} · {m['cores']} cores · Python {m['python']} · opamp-operator "
        f"{m['opamp_operator']} · {m['date']} · {r.agents} agents over "
        f"{len(r.settings['simulators'])} simulator process(es) · steps "
        f"{', '.join(f'{p:g}%' for p in r.steps_pct)} · no pauses, no bake · "
        f"{STABLE_VERSION} → {NEW_VERSION} by package ({r.settings['package_bytes']} bytes) · "
        f"--rollout-interval {r.settings['rollout_interval']:g} --reload-seconds "
        f"{r.settings['reload_seconds']:g}"
    )
    print(f"opamp_operator from {r.settings['opamp_operator_from']}")
    print("load average (1/5/15 min): " + "; ".join(f"{w}: {la}" for w, la in r.load))
    print("setup (s): " + ", ".join(f"{k} {v}" for k, v in r.setup_s.items()))
    print(
        f"\nedit → status names the new revision: {r.new_revision_seen_s} s; → step 1 armed: "
        f"{r.first_step_armed_s} s; → Succeeded: {r.succeeded_s} s; simulators: first "
        f"{NEW_VERSION} offer {r.simulators.get('first_offer_s')} s, all installed "
        f"{r.all_installed_s} s"
    )
    print(
        "\n| step | size | members | start → end (s) | state writes (armed) | writes between "
        f"the polls | {NEW_VERSION} files served at the next step's write / at the poll | "
        "installs seen at the poll | serve CPU (s) | loop lag worst / mean |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in r.steps:
        lag = s.loop_lag
        print(
            f"| {s.step} | {s.size} | {s.members} | {s.seconds} | {s.state_writes} "
            f"({s.writes_armed}) | {s.writes_in_window} | {s.downloads_before_next} / "
            f"{s.downloads} | {s.installed} | "
            f"{s.serve_cpu_s} | {lag.get('worst')} / {lag.get('mean_ms')} ms |"
        )
    print(
        f"\nstate writes since the edit: {len(r.state_writes)} ({r.writes_total} before the "
        f"Succeeded poll); recording the "
        f"new revision before step 1 armed: {r.writes_before_first_step}; recording "
        f"Succeeded: {r.writes_succeeded}; recording anything else: {len(r.writes_other)}; "
        f"idle {r.settings.get('idle')} s before the edit: {r.writes_idle_before}, after "
        f"Succeeded: {r.writes_idle_after}; inotify overflows {r.inotify_overflows}, "
        f"rereads {r.rereads}; state file {r.state_file_bytes} bytes"
    )
    for s in r.steps:
        print(f"  step {s.step} writes changed: {s.changed}")
    for w in r.idle_writes:
        print(f"  idle write {w['window']} (+{w['at']} s) changed: {w['changed']}")

    def step_of(w: dict[str, Any]) -> str:
        i = int(w["current_step"] or 0)
        applied = w["applied"][i] if i < len(w["applied"]) else "?"
        return f"{w['phase'][:4]} step {i + 1} applied {applied}"

    print(
        "state writes at (s after the edit: what it records, 2.0.0 files served): "
        + "; ".join(f"{w['at']:.2f}: {step_of(w)}, {w['downloads']}" for w in r.state_writes)
    )
    print(f"phases seen: {' → '.join(r.phases_seen)}; slowest status poll {r.poll_seconds_max} s")
    if r.slow_polls:
        print(
            "status polls over 0.1 s (s after the edit: s taken): "
            + ", ".join(f"{a}: {b}" for a, b in r.slow_polls)
        )
    sv = r.serve
    print(
        f"serve, edit → Succeeded: CPU {sv.get('cpu_s')} s ({sv.get('cpu_pct_of_one_core')} % "
        f"of one core), RSS peak {sv.get('rss_peak_mib')} MiB (0.5 s samples), end "
        f"{sv.get('rss_end_mib')} MiB, VmHWM since start {sv.get('vm_hwm_mib')} MiB; "
        f"{sv.get('workers')} config workers, {sv.get('workers_cpu_s')} CPU s"
    )
    print(
        f"CPU s, edit → Succeeded ({r.machine['cores']} cores, {r.succeeded_s} s), by process: "
        f"{r.cpu_s}"
    )
    print(f"loop lag, edit → Succeeded: {r.loop_lag}")
    if r.py_spy:
        print(f"py-spy, serve edit → Succeeded: {r.py_spy}")
    print(f"file server, answers by HTTP status: {r.files_served}")
    print(f"simulators: {r.simulators}")
    print(f"open files, highest seen: {r.open_files_max} (limit {FILE_LIMIT})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument(
        "--steps", type=float, nargs="+", default=[1.0, 10.0, 50.0, 100.0], help="percentages"
    )
    parser.add_argument("--rollout-interval", type=float, default=2.0)
    parser.add_argument("--reload-seconds", type=float, default=0.5)
    parser.add_argument("--package-bytes", type=int, default=100_000)
    parser.add_argument(
        "--agents-per-simulator",
        type=int,
        default=5000,
        help="agents per `simulate` process (each holds a socket per agent)",
    )
    parser.add_argument(
        "--connect-rate", type=float, default=500.0, help="agents started per second, in all"
    )
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument(
        "--idle", type=float, default=6.0, help="seconds of no change before the edit and after"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="for each wait")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--py-spy",
        default=None,
        metavar="BINARY",
        help="record serve with py-spy from the edit to Succeeded (a diagnosis: it costs CPU)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.agents_per_simulator + 1000 > FILE_LIMIT or args.agents + 1000 > FILE_LIMIT:
        parser.error(f"every process must stay under {FILE_LIMIT} open files")
    workdir = Path(mkdtemp(prefix="serve-rollout-"))
    log(f"work directory {workdir}")
    bench = Bench(args, workdir)
    bench.results.settings["idle"] = args.idle
    try:
        results = asyncio.run(bench.run())
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
