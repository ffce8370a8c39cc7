"""Start and stop the test world's processes, each in its own process group with a log file.

A process is tracked by pid and process group, not by a Popen object, so a detached
dev cluster started by one command can be stopped by another.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")


def free_port() -> int:
    """A loopback port the kernel just handed out; the tiny reuse race is acceptable here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ProcessRecord:
    name: str
    pid: int
    argv: list[str]
    log: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie still answers kill(0); it is dead for our purposes.
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = Path(self.log).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def spawn(
    name: str,
    argv: Sequence[str | os.PathLike[str]],
    log_dir: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    """Start `argv` in a new session (its own process group) logging to `log_dir/name.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    args = [os.fspath(a) for a in argv]
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    return ProcessRecord(name, proc.pid, args, str(log_path)), proc


def terminate(record: ProcessRecord, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds, and reap if we can."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                pid, _ = os.waitpid(record.pid, os.WNOHANG)
                if pid == record.pid:
                    return
            if not record.alive():
                return
            time.sleep(0.05)


class StartupError(RuntimeError):
    """A component did not become ready; the message carries its log tail."""


def eventually(what: str, check: Callable[[], _T | None], timeout: float = 60.0) -> _T:
    """Poll `check` until it returns something truthy and return that; a test's wait."""
    deadline = time.monotonic() + timeout
    last: _T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def wait_until(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    watch: Sequence[ProcessRecord] = (),
    interval: float = 0.2,
) -> None:
    """Poll `check` until true; fail early, with logs, if a watched process dies."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        for rec in watch:
            if not rec.alive():
                raise StartupError(
                    f"{rec.name} exited while waiting for {what}; log {rec.log}:\n{rec.log_tail()}"
                )
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not yet"
            last_error = exc
        time.sleep(interval)
    tails = "\n".join(f"--- {r.name} ({r.log}):\n{r.log_tail()}" for r in watch)
    raise StartupError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})\n{tails}"
    )
