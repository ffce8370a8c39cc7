"""What the benchmarks read about a server process (RSS, CPU, peak RSS, sampled on a thread),
a free port to put it on, waiting for it to listen and stopping it, and the host's TCP
listen-queue counters."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_stats(pid: int) -> tuple[int, float]:
    """(RSS bytes, user+system CPU seconds) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return rss, cpu


def peak_rss(pid: int) -> int:
    """VmHWM: the process's peak resident set since it started, bytes (0 if unreadable)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until something accepts connections on 127.0.0.1:`port`; fails if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def listen_counters() -> tuple[int, int]:
    """Host-wide TcpExt ListenOverflows and TCPSynRetrans (/proc/net/netstat)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], map(int, values.split()[1:]), strict=True))
            return row.get("ListenOverflows", 0), row.get("TCPSynRetrans", 0)
    return 0, 0


@dataclass
class Sample:
    at: float  # Unix seconds
    rss: int
    cpu: float


class Sampler:
    """RSS and CPU of some processes, every `interval` seconds, on a thread. `follow`
    points a name at another process (a restarted server): its samples go on one list."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: dict[str, list[Sample]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def follow(self, name: str, pid: int) -> None:
        self.pids = {**self.pids, name: pid}
        self.samples.setdefault(name, [])

    def take(self) -> None:
        now = time.time()
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, IndexError, ValueError):
                rss, cpu = proc_stats(pid)
                self.samples[name].append(Sample(now, rss, cpu))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.take()

    def window(self, name: str, start: float, end: float) -> dict[str, float]:
        """CPU (% of one core) between the samples nearest to start and end; peak and
        last RSS (MiB) inside."""
        samples = self.samples[name]
        before = [s for s in samples if s.at <= start] or samples[:1]
        inside = [s for s in samples if start <= s.at <= end] or samples[-1:]
        after = [s for s in samples if s.at >= end] or samples[-1:]
        first, last = before[-1], after[0]
        wall = max(last.at - first.at, 1e-9)
        return {
            "cpu_s": round(last.cpu - first.cpu, 2),
            "cpu_pct": round((last.cpu - first.cpu) / wall * 100, 1),
            "rss_peak_mib": round(max(s.rss for s in inside) / 2**20, 1),
            "rss_mib": round(inside[-1].rss / 2**20, 1),
        }
