"""Fuzzing the OpAMP server: a coverage-guided run over the sans-I/O core, then fuzz inputs
over real sockets while a real agent is served beside them.

1. **Core, coverage-guided** (atheris, libFuzzer's engine over instrumented Python): each
   input is played by `tests/world/fuzzing.py` `CoreFuzzer.feed` — the WebSocket frame
   decoder or an HTTP body, the protobuf decoder, the session core (every AgentToServer
   field), connections opened and closed, time passing, offers flushed — with an honest
   agent's heartbeat answered after every input. Starts from realistic messages
   (`seeds()`); a Python exception, a broken invariant or an input slower than
   `--input-timeout` seconds is a crash, and libFuzzer stops on the first one.
2. **Over sockets**: `opamp-operator serve` as a process and the test world's opamp-go
   agent connected to it (1 s heartbeats). Inputs from phase 1's corpus and their random
   mutations go to the server as WebSocket frames (on a few connections, reopened when
   the server closes one) and as HTTP bodies. The agent must keep being answered: the
   longest gap between its messages is reported, and the server must still be up.
3. **Agents' configs, coverage-guided**: each input, as an agent's effective config, goes
   through the bounded YAML loader, drift against a desired config (substitutions,
   durations, secrets, extensions) and the masked text the read API shows; an input
   slower than `--input-timeout` seconds is a crash.

    .venv/bin/python benchmarks/fuzz_opamp.py --inputs 1000000 --socket-inputs 20000

Prints a Markdown summary; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from procstat import proc_stats  # noqa: E402

from world.collector import start_go_agent  # noqa: E402
from world.fuzzing import seeds  # noqa: E402
from world.operator import start_serve  # noqa: E402
from world.processes import terminate  # noqa: E402

_TARGET = """
import sys
import atheris

with atheris.instrument_imports(include=["opamp_operator.opamp"]):
    from world.fuzzing import CoreFuzzer

RESET = 2000
state = {"fuzzer": CoreFuzzer(), "fed": 0}


def one(data: bytes) -> None:
    if state["fed"] >= RESET:  # a fresh core now and then: agent records would pile up
        state["fuzzer"], state["fed"] = CoreFuzzer(), 0
    state["fed"] += 1
    state["fuzzer"].feed(data)


atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""


_CONFIG_TARGET = """
import sys
import atheris

with atheris.instrument_imports(include=["opamp_operator.fleet"]):
    from opamp_operator.fleet import drift, validation

DESIRED = open(sys.argv.pop(1)).read()


def one(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        validation.load_yaml_checked(text)
    except validation.ConfigSyntaxError:
        pass
    drift.compare(DESIRED, text)
    drift.masked_config_text(text)


atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""

# What phase 3 compares every input with: substitutions, durations, secrets, extensions.
DESIRED_CONFIG = """\
receivers: {otlp: {protocols: {grpc: {endpoint: '${env:POD_IP}:4317'}}}}
processors: {batch: {timeout: 5s}}
exporters:
  otlphttp: {endpoint: 'https://${env:HOST}/v1', headers: {authorization: 'Bearer ${env:TOKEN}'}}
extensions: {health_check: {}}
service:
  extensions: [health_check]
  pipelines: {traces: {receivers: [otlp], processors: [batch], exporters: [otlphttp]}}
"""

CONFIG_SEEDS = (
    DESIRED_CONFIG.encode(),
    b"receivers: {otlp: {protocols: {grpc: {endpoint: 10.0.0.1:4317}}}}\n",
    b"a: &a [1, 2]\nb: [*a, *a, *a]\nc: [*b, *b]\n",
    b"exporters: {otlphttp: {headers: {authorization: '[REDACTED]'}}}\n",
    b"processors: {batch: {timeout: 5000000000ns}}\n",
    b"x: 0x" + b"f" * 100 + b"\n",
    b"- - - - - - - - [1]\n",
)


def fuzz(
    script: str, name: str, args: list[str], *, inputs: int, timeout: int, workdir: Path
) -> dict[str, str]:
    """One libFuzzer run of `script` in a child process (libFuzzer exits when done) and its
    figures; it stops at the first crash: a Python exception or an input over `timeout` s."""
    target = workdir / f"fuzz_{name}_target.py"
    target.write_text(script)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}:{REPO / 'src'}"}
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            str(target),
            *args,
            f"-runs={inputs}",
            f"-timeout={timeout}",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
            str(workdir / name),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.monotonic() - started
    log = done.stdout + done.stderr
    (workdir / f"fuzz_{name}.log").write_text(log)
    if done.returncode != 0:
        tail = "\n".join(log.splitlines()[-40:])
        raise SystemExit(f"fuzzing {name} stopped with exit {done.returncode}:\n{tail}")
    runs = re.search(r"Done (\d+) runs in (\d+) second", log)
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", log)
    slowest = re.search(r"stat::slowest_unit_time_sec:\s+(\d+)", log)
    return {
        "inputs": runs.group(1) if runs else "?",
        "seconds": f"{elapsed:.0f}",
        "per second": f"{int(runs.group(1)) / elapsed:.0f}" if runs else "?",
        "coverage (edges / features)": f"{cov[-1][0]} / {cov[-1][1]}" if cov else "?",
        "corpus": cov[-1][2] if cov else "?",
        "slowest input (s)": f"< {int(slowest.group(1)) + 1}" if slowest else "?",
        "crashes": "0",
    }


def fuzz_core(inputs: int, timeout: int, workdir: Path) -> dict[str, str]:
    """Phase 1: the OpAMP core, starting from realistic messages."""
    corpus = workdir / "core"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(data)
    return fuzz(_TARGET, "core", ["-max_len=8192"], inputs=inputs, timeout=timeout, workdir=workdir)


def fuzz_configs(inputs: int, timeout: int, workdir: Path) -> dict[str, str]:
    """Phase 3: an agent's effective config as the operator reads it — the bounded YAML
    loader, drift against DESIRED_CONFIG, the masked text the read API shows."""
    corpus = workdir / "configs"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(CONFIG_SEEDS):
        (corpus / f"seed-{i}").write_bytes(data)
    desired = workdir / "desired.yaml"
    desired.write_text(DESIRED_CONFIG)
    args = [str(desired), "-max_len=65536"]
    return fuzz(_CONFIG_TARGET, "configs", args, inputs=inputs, timeout=timeout, workdir=workdir)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    if not data or rng.random() < 0.3:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        out[i] = rng.randrange(256)
    return bytes(out)


class AgentGaps:
    """The longest time between two messages the opamp-go agent got from the server."""

    def __init__(self, agent: object) -> None:
        self.agent = agent
        self.last = time.monotonic()
        self.longest = 0.0
        self.messages = 0
        self.stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self.stop.is_set():
            try:
                ev = self.agent.events.get(timeout=0.2)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001, S112 - queue.Empty: look at the clock again
                continue
            if ev.get("event") == "message":
                now = time.monotonic()
                self.longest = max(self.longest, now - self.last)
                self.last = now
                self.messages += 1


async def _send(url: str, inputs: list[bytes], connections: int) -> tuple[int, int, int]:
    """(sent over WebSocket, sent over HTTP, connections the server closed)."""
    ws_sent = http_sent = closed = 0
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sockets = [await session.ws_connect(url, max_msg_size=0) for _ in range(connections)]
        for n, data in enumerate(inputs):
            if not data:
                continue
            action, payload = data[0] % 8, data[1:]
            if action < 4:
                ws = sockets[n % connections]
                if ws.closed:
                    closed += 1
                    ws = sockets[n % connections] = await session.ws_connect(url, max_msg_size=0)
                try:
                    await ws.send_bytes(payload)
                    await ws.receive(timeout=2)
                except (TimeoutError, aiohttp.ClientError, ConnectionError):
                    pass
                ws_sent += 1
            else:
                headers = {"Content-Type": "application/x-protobuf"}
                try:
                    async with session.post(
                        url.replace("ws://", "http://"), data=payload, headers=headers
                    ) as response:
                        await response.read()
                except (TimeoutError, aiohttp.ClientError):
                    pass
                http_sent += 1
        for ws in sockets:
            await ws.close()
    return ws_sent, http_sent, closed


def fuzz_sockets(corpus: Path, count: int, workdir: Path) -> dict[str, str]:
    """Phase 2 against `serve`, with opamp-go's agent served throughout."""
    rng = random.Random(1)  # noqa: S311 - reproducible fuzz inputs, not secrets
    pool = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()]
    inputs = [_mutate(rng.choice(pool), rng) for _ in range(count)]
    fleets = workdir / "fleets.yaml"
    fleets.write_text(
        "fleets:\n  - name: all\n    selector: {}\n    config: |\n      exporters: {debug: {}}\n"
    )
    server = start_serve(fleets, workdir)
    url = f"ws://127.0.0.1:{server.port}/v1/opamp"
    try:
        agent = start_go_agent(url, "--heartbeat=1s")
        agent.wait_for("connected", timeout=30)
        gaps = AgentGaps(agent)
        rss_before, cpu_before = proc_stats(server.proc.pid)
        started = time.monotonic()
        ws_sent, http_sent, closed = asyncio.run(_send(url, inputs, connections=4))
        elapsed = time.monotonic() - started
        time.sleep(2)
        rss_after, cpu_after = proc_stats(server.proc.pid)
        gaps.stop.set()
        alive = server.proc.poll() is None
        agent.stop()
    finally:
        terminate(server.record)
    return {
        "inputs": str(count),
        "over WebSocket / HTTP": f"{ws_sent} / {http_sent}",
        "WebSockets the server closed (reopened)": str(closed),
        "seconds": f"{elapsed:.0f}",
        "server CPU (s)": f"{cpu_after - cpu_before:.1f}",
        "server RSS before / after (MiB)": f"{rss_before / 2**20:.0f} / {rss_after / 2**20:.0f}",
        "server still up": "yes" if alive else "NO",
        "opamp-go agent: messages / longest gap (s)": f"{gaps.messages} / {gaps.longest:.2f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="phase 1 inputs")
    parser.add_argument("--socket-inputs", type=int, default=20_000, help="phase 2 inputs")
    parser.add_argument("--input-timeout", type=int, default=1, help="seconds per input")
    parser.add_argument("--config-inputs", type=int, default=100_000, help="phase 3 inputs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-opamp-") as tmp:
        workdir = Path(tmp)
        core = fuzz_core(args.inputs, args.input_timeout, workdir)
        sockets = fuzz_sockets(workdir / "core", args.socket_inputs, workdir)
        configs = fuzz_configs(args.config_inputs, args.input_timeout, workdir)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.python_version()}")
    phases = (
        ("core, coverage-guided", core),
        ("over sockets", sockets),
        ("agents' configs, coverage-guided", configs),
    )
    for title, figures in phases:
        print(f"\n{title}\n\n| | |\n|---|---|")
        for key, value in figures.items():
            print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
