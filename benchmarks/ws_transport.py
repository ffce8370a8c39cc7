"""Which WebSocket server library should carry OpAMP: aiohttp or websockets?

Both run the same sans-I/O core (opamp_operator.opamp.session.ServerCore); only the
transport differs. For each library a server process is started, N WebSocket agents
connect from this process (websockets client), send their full first status, then
heartbeat M times, each waiting for the reply. Measured per library, in one run, taking
turns (A B A B) because this machine is noisy:

- server RSS per connection above the idle server,
- server CPU time per message (user + system from /proc),
- wall time for all agents to connect and be answered, and for the heartbeat rounds.

    python benchmarks/ws_transport.py --agents 2000 --rounds 5 --repeat 2

Prints a Markdown table; docs/benchmarks.md keeps the figures.
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
from dataclasses import dataclass

import websockets
from aiohttp import web
from procstat import free_port, proc_stats
from websockets.asyncio.server import ServerConnection, serve

from opamp_operator.opamp import wire
from opamp_operator.opamp.attributes import from_dict
from opamp_operator.opamp.ids import uuid7
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.opamp.session import ServerCore
from opamp_operator.server.app import OpAMPServer

# ---- servers (run in a child process) -------------------------------------------------


async def _serve_aiohttp(port: int) -> None:
    runner = web.AppRunner(OpAMPServer(ServerCore()).app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _serve_websockets(port: int) -> None:
    """The same core behind the websockets library, as thin as the aiohttp adapter."""
    core = ServerCore()

    async def handler(ws: ServerConnection) -> None:
        conn = core.open(time.monotonic())
        try:
            async for frame in ws:
                if isinstance(frame, str):
                    return
                try:
                    msg = wire.decode_agent_message(wire.split_ws_frame(frame))
                except wire.WireError:
                    return
                reply = core.receive(msg, time.monotonic(), conn=conn)
                await ws.send(wire.encode_ws(reply.message))
        finally:
            core.close(conn, time.monotonic())

    async with serve(
        handler,
        "127.0.0.1",
        port,
        max_size=64 * 1024 * 1024,
        compression=None,
        ping_interval=None,
        backlog=4096,
    ):
        print("ready", flush=True)
        await asyncio.Event().wait()


def run_server(impl: str, port: int) -> None:
    asyncio.run(_serve_aiohttp(port) if impl == "aiohttp" else _serve_websockets(port))


# ---- load (this process) --------------------------------------------------------------


def _first_message(uid: bytes, i: int) -> bytes:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=0, capabilities=0x3807)
    msg.agent_description.identifying_attributes.extend(
        from_dict(
            {
                "service.name": "otelcol",
                "service.instance.id": uid.hex(),
                "k8s.pod.name": f"collector-{i}",
                "k8s.namespace.name": "bench",
            }
        )
    )
    msg.agent_description.non_identifying_attributes.extend(
        from_dict({"host.name": f"node-{i % 50}"})
    )
    msg.health.healthy = True
    msg.effective_config.config_map.config_map[""].body = b"receivers: {otlp: {}}\n" * 20
    return wire.WS_HEADER + msg.SerializeToString()


class Phase:
    """Counts agents through a phase; failed agents count too, so nothing waits forever."""

    def __init__(self, total: int) -> None:
        self.total, self.count, self.reached = total, 0, asyncio.Event()

    def arrive(self) -> None:
        self.count += 1
        if self.count == self.total:
            self.reached.set()


async def _agent(
    url: str,
    i: int,
    *,
    rounds: int,
    phases: tuple[Phase, Phase],
    release: asyncio.Event,
    errors: list[str],
) -> None:
    """Connect, report, wait for all to connect, heartbeat `rounds` times, hold until released."""
    connected, finished = phases
    uid = uuid7()
    stage = 0
    try:
        async with websockets.connect(
            url, compression=None, ping_interval=None, max_size=None, open_timeout=120
        ) as ws:
            await ws.send(_first_message(uid, i))
            await ws.recv()
            stage = 1
            connected.arrive()
            await connected.reached.wait()
            for seq in range(1, rounds + 1):
                beat = pb.AgentToServer(instance_uid=uid, sequence_num=seq)
                await ws.send(wire.WS_HEADER + beat.SerializeToString())
                await ws.recv()
            stage = 2
            finished.arrive()
            await release.wait()
    except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
        errors.append(f"{type(exc).__name__}: {exc}")
        for phase in phases[stage:]:
            phase.arrive()


@dataclass
class Result:
    impl: str
    agents: int
    connect_s: float
    rounds_s: float
    rss_per_conn_kib: float
    cpu_ms_per_msg: float
    errors: int


async def measure(impl: str, agents: int, rounds: int) -> Result:
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [sys.executable, __file__, "--serve", impl, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        await asyncio.sleep(0.5)
        rss0, cpu0 = proc_stats(proc.pid)
        url = f"ws://127.0.0.1:{port}/v1/opamp"
        phases = (Phase(agents), Phase(agents))
        release = asyncio.Event()
        errors: list[str] = []
        t0 = time.perf_counter()
        tasks = [
            asyncio.create_task(
                _agent(url, i, rounds=rounds, phases=phases, release=release, errors=errors)
            )
            for i in range(agents)
        ]
        await phases[0].reached.wait()
        t1 = time.perf_counter()
        await phases[1].reached.wait()
        t2 = time.perf_counter()
        rss1, cpu2 = proc_stats(proc.pid)
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if errors:
            print(f"{impl}: {len(errors)} errors, e.g. {errors[0]}", file=sys.stderr)
        messages = agents * (rounds + 1)
        return Result(
            impl,
            agents,
            t1 - t0,
            t2 - t1,
            (rss1 - rss0) / agents / 1024,
            (cpu2 - cpu0) * 1000 / messages,
            len(errors),
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", choices=["aiohttp", "websockets"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.port)
        return
    results: list[Result] = []
    for _ in range(args.repeat):
        for impl in ("aiohttp", "websockets"):
            results.append(asyncio.run(measure(impl, args.agents, args.rounds)))
            print(results[-1], file=sys.stderr, flush=True)
    print(
        f"\n{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
        f"{time.strftime('%Y-%m-%d')} · {args.agents} agents, {args.rounds} heartbeat rounds\n"
    )
    print(
        "| library | run | connect all (s) | heartbeat rounds (s) | RSS/conn (KiB) "
        "| CPU/msg (ms) | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for n, r in enumerate(results):
        print(
            f"| {r.impl} | {n // 2 + 1} | {r.connect_s:.2f} | {r.rounds_s:.2f} | "
            f"{r.rss_per_conn_kib:.1f} | {r.cpu_ms_per_msg:.3f} | {r.errors} |"
        )


if __name__ == "__main__":
    main()
