"""Does TLS cost the memory budget or the connect storm? `opamp-operator serve` over
plaintext and over TLS, on uvloop (the CLI's loop) and on the stdlib asyncio loop.

Configurations, taken in turns (A B C A B C ...) because this machine is noisy:

- plain+uvloop: `opamp-operator serve` (the real CLI, which runs on uvloop), ws://;
- tls+uvloop:   the same with --tls-cert-file/--tls-key-file (a throwaway CA and server
  certificate made here with `cryptography`), wss://;
- tls+asyncio:  the same server code and flags under `asyncio.run` instead of uvloop,
  from a launcher in this file (`python -c`, the CLI's own parser; no product flag);
- plain+asyncio (only with --configs): plaintext under `asyncio.run`.

For each: start the server (fleets file with one catch-all fleet, so every first reply
carries a config offer), note its idle RSS; start the client processes (uvloop,
`websockets` client, one shared SSLContext trusting the CA; --client-procs of them, the
agents split between them, so no process holds more than 10,000 + a few sockets under the
20,000 open-files limit); on "go" every agent connects at once, sends an AgentToServer
with its description, health and effective config, and waits for the reply. An agent
whose attempt fails (e.g. the server gave up on its TLS handshake) tries again after
1, 2, 4 ... 30 s (+-50 %), as OpAMP agents do. Measured:

- storm: from "go" until every agent was answered (and p50/p99 of one agent's wait),
  failed attempts included; the host's TCP listen-queue overflows and SYN retransmits in
  that time (host-wide counters), and its load average (the machine is shared);
- server CPU (user + system, /proc) spent in the storm, and the clients' CPU;
- server RSS per connected agent above the idle server right after the storm, and again
  after --idle seconds with every agent connected and silent; the server's peak RSS;
- the storm and server CPU of each configuration against plain+uvloop of the same round.

    .venv/bin/python benchmarks/tls_storm.py --agents 10000 --repeat 2
    .venv/bin/python benchmarks/tls_storm.py --agents 1000 --repeat 1     # quick
    .venv/bin/python benchmarks/tls_storm.py --agents 10000 --backlog 128  # what-if

`serve` listens with its own --listen-backlog (4096, capped by net.core.somaxconn);
--backlog passes another value, e.g. aiohttp's default of 128 that `serve` had before
this benchmark showed what the listen queue does to a storm.

Prints a Markdown table; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import ipaddress
import json
import os
import platform
import random
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
import uvloop
import websockets
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from procstat import free_port, listen_counters, peak_rss, proc_stats, stop_process, wait_port

from opamp_operator.opamp import wire
from opamp_operator.opamp.attributes import from_dict
from opamp_operator.opamp.ids import uuid7
from opamp_operator.opamp.proto import opamp_pb2 as pb
from opamp_operator.simulator.runner import raise_file_limit

HERE = Path(__file__).resolve()
Pki = tuple[Path, Path, Path]

CONFIG = """\
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
"""

# The same server code and flags as `opamp-operator serve`, under the stdlib loop.
LAUNCHER = """\
import asyncio, logging, os, sys
from opamp_operator.cli import build_parser, serve_options
from opamp_operator.standalone.serve import serve
args = build_parser().parse_args(sys.argv[1:])
logging.basicConfig(level=args.log_level.upper())
async def main():
    loop = type(asyncio.get_running_loop())
    assert loop.__module__.startswith(os.environ["BENCH_LOOP"]), loop
    await serve(serve_options(args))
if os.environ["BENCH_LOOP"] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""

CONFIGS = {
    # name: (tls, loop)
    "plain+uvloop": (False, "uvloop"),
    "tls+uvloop": (True, "uvloop"),
    "tls+asyncio": (True, "asyncio"),
    "plain+asyncio": (False, "asyncio"),
}
BASELINE = "plain+uvloop"
RETRIES = 8  # an agent whose connection fails tries again, after 1, 2, 4 ... 30 s (+-50 %)


# ---- certificates ---------------------------------------------------------------------


def make_pki(directory: Path, key_type: str) -> Pki:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost: (cert, key, CA)."""

    def new_key() -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        if key_type == "rsa2048":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())

    now = dt.datetime.now(dt.UTC)
    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls_storm benchmark CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    certfile, keyfile, cafile = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    certfile.write_bytes(cert.public_bytes(pem))
    keyfile.touch(mode=0o600)
    keyfile.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cafile.write_bytes(ca.public_bytes(pem))
    return certfile, keyfile, cafile


# ---- clients (child processes) --------------------------------------------------------


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
        from_dict({"host.name": f"node-{i % 50}", "os.type": "linux"})
    )
    msg.health.healthy = True
    msg.effective_config.config_map.config_map[""].body = b"receivers: {otlp: {}}\n" * 20
    return wire.WS_HEADER + msg.SerializeToString()


async def _client(url: str, cafile: str | None, agents: int, offset: int) -> None:
    """Hold `agents` agents: connect all on "go", report when all were answered, hold
    the connections until "stop" (or stdin closes), then exit at once."""
    context = ssl.create_default_context(cafile=cafile) if url.startswith("wss:") else None
    loop = asyncio.get_running_loop()
    messages = [_first_message(uuid7(), offset + i) for i in range(agents)]
    latencies: list[float] = []
    failures: list[str] = []  # failed attempts, each retried like an OpAMP agent would
    gave_up = 0
    done = asyncio.Event()
    held: list[object] = []

    async def attempt(i: int) -> object:
        ws = await websockets.connect(
            url,
            ssl=context,
            compression=None,
            ping_interval=None,
            max_size=None,
            open_timeout=300,
            proxy=None,
        )
        await ws.send(messages[i])
        await ws.recv()
        return ws

    async def agent(i: int, t0: float) -> None:
        nonlocal gave_up
        for retry in range(RETRIES + 1):
            try:
                held.append(await attempt(i))
                latencies.append(time.perf_counter() - t0)
                break
            except Exception as exc:  # noqa: BLE001 - counted and reported, then retried
                failures.append(f"{type(exc).__name__}: {exc}")
                if retry == RETRIES:
                    gave_up += 1
                    break
                # exponential backoff with jitter, as agents do after a failed connect
                await asyncio.sleep(min(30.0, 2.0**retry) * random.uniform(0.5, 1.5))  # noqa: S311
        if len(latencies) + gave_up == agents:
            done.set()

    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(agent(i, t0)) for i in range(agents)]
    await done.wait()
    report = {
        "elapsed": time.perf_counter() - t0,
        "latencies": [round(x, 4) for x in latencies],
        "failures": len(failures),
        "gave_up": gave_up,
        "error": failures[0] if failures else "",
    }
    print(json.dumps(report), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    del tasks
    os._exit(0)  # the kernel closes every socket; no 10,000 close handshakes to wait for


def run_client(args: argparse.Namespace) -> None:
    raise_file_limit(args.agents + 256)
    uvloop.run(_client(args.url, args.ca, args.agents, args.offset))


# ---- the server under test ------------------------------------------------------------


def start_server(
    config: str, workdir: Path, agents: int, pki: Pki, backlog: int | None
) -> tuple[subprocess.Popen[bytes], int, Path]:
    tls, loop = CONFIGS[config]
    fleets = workdir / "fleets.yaml"
    fleets.write_text(
        yaml.safe_dump({"fleets": [{"name": "all", "selector": {}, "config": CONFIG}]})
    )
    port, api_port = free_port(), free_port()
    flags = [
        "--log-level=WARNING",
        "serve",
        f"--config={fleets}",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--api-port={api_port}",
        f"--max-websockets={agents + 100}",
        f"--max-agents={2 * agents + 100}",
    ]
    if tls:
        flags += [f"--tls-cert-file={pki[0]}", f"--tls-key-file={pki[1]}"]
    if backlog:
        flags.append(f"--listen-backlog={backlog}")
    env = dict(os.environ)
    if loop == "uvloop":
        command = [sys.executable, "-m", "opamp_operator", *flags]
    else:
        command = [sys.executable, "-c", LAUNCHER, *flags]
        env.update(BENCH_LOOP=loop)
    log = workdir / f"server-{config}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    # the API listener starts after the agents' one: once it answers, both listen (a
    # probe of the agents' port would be a failed TLS handshake in the server's log)
    wait_port(api_port, proc)
    return proc, port, log


@dataclass
class Result:
    config: str
    round: int
    agents: int
    storm_s: float
    p50_s: float
    p99_s: float
    server_cpu_s: float
    client_cpu_s: float
    rss_idle_mib: float
    rss_per_agent_kib: float
    rss_per_agent_idle_kib: float
    peak_rss_mib: float
    listen_overflows: int
    syn_retransmits: int
    load: float
    failures: int
    gave_up: int


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_clients(
    url: str, agents: int, procs: int, cafile: Path | None
) -> list[subprocess.Popen[str]]:
    """`procs` client processes sharing `agents`, each started and ready for "go"."""
    clients: list[subprocess.Popen[str]] = []
    share, rest = divmod(agents, procs)
    offset = 0
    for n in range(procs):
        count = share + (1 if n < rest else 0)
        command = [sys.executable, str(HERE), "--client", f"--url={url}"]
        command += [f"--agents={count}", f"--offset={offset}"]
        if cafile is not None:
            command.append(f"--ca={cafile}")
        clients.append(
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
        offset += count
    for c in clients:
        assert c.stdout is not None
        if c.stdout.readline().strip() != "ready":
            raise RuntimeError("a client process did not start")
    return clients


def tell(clients: list[subprocess.Popen[str]], word: str) -> None:
    for c in clients:
        assert c.stdin is not None
        c.stdin.write(word + "\n")
        c.stdin.flush()


def read_reports(clients: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Each client's report, as it comes: the last one arrives when the storm is over."""
    reports = []
    for c in clients:
        assert c.stdout is not None
        line = c.stdout.readline()
        if not line:
            raise RuntimeError("a client process died in the storm")
        reports.append(json.loads(line))
    return reports


def measure(config: str, round_: int, args: argparse.Namespace, pki: Pki) -> Result:
    tls, _ = CONFIGS[config]
    n = args.agents
    with TemporaryDirectory(prefix="tls-storm-") as tmp:
        server, port, log = start_server(config, Path(tmp), n, pki, args.backlog)
        clients: list[subprocess.Popen[str]] = []
        try:
            url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/v1/opamp"
            clients = start_clients(url, n, args.client_procs, pki[2] if tls else None)
            time.sleep(args.settle)
            rss0, cpu0 = proc_stats(server.pid)
            client_cpu0 = sum(proc_stats(c.pid)[1] for c in clients)
            net0 = listen_counters()
            t0 = time.perf_counter()
            tell(clients, "go")
            reports = read_reports(clients)
            storm = time.perf_counter() - t0
            net1 = listen_counters()
            load = os.getloadavg()[0]
            rss1, cpu1 = proc_stats(server.pid)
            client_cpu1 = sum(proc_stats(c.pid)[1] for c in clients)
            time.sleep(args.idle)
            rss2, _ = proc_stats(server.pid)
            peak = peak_rss(server.pid)
            tell(clients, "stop")
            for c in clients:
                c.wait(timeout=60)
        except BaseException:
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            for c in clients:
                if c.poll() is None:
                    c.kill()
                    c.wait()
            stop_process(server)
    latencies = [x for r in reports for x in r["latencies"]]
    failures = sum(r["failures"] for r in reports)
    gave_up = sum(r["gave_up"] for r in reports)
    if failures:
        first = next(r["error"] for r in reports if r["error"])
        print(f"{config}: {failures} failed attempts (retried), e.g. {first}", file=sys.stderr)
    connected = len(latencies)  # RSS per agent: per agent the server holds
    return Result(
        config,
        round_,
        n,
        storm,
        _quantile(latencies, 0.5),
        _quantile(latencies, 0.99),
        cpu1 - cpu0,
        client_cpu1 - client_cpu0,
        rss0 / 2**20,
        (rss1 - rss0) / max(1, connected) / 1024,
        (rss2 - rss0) / max(1, connected) / 1024,
        peak / 2**20,
        net1[0] - net0[0],
        net1[1] - net0[1],
        load,
        failures,
        gave_up,
    )


def _versions() -> str:
    uvloop_version = importlib.metadata.version("uvloop")
    return (
        f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}, uvloop {uvloop_version}, "
        f"aiohttp {aiohttp.__version__}"
    )


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{platform.node()} · {os.cpu_count()} cores · {_versions()} · "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} · {args.agents} WebSocket agents · "
        f"{args.client_procs} client process(es) · {args.key} server key · "
        f"listen backlog {args.backlog or 'serve default (--listen-backlog)'} · "
        f"idle {args.idle:g} s\n"
    )
    print(
        "| config | run | storm: all answered (s) | agent wait p50 / p99 (s) "
        "| server CPU in storm (s) | clients CPU in storm (s) | server idle RSS (MiB) "
        "| RSS/agent after storm (KiB) | RSS/agent after idle (KiB) | server peak RSS (MiB) "
        "| listen overflows / SYN retransmits | host load (1 min) | failed attempts (retried) "
        "| agents gave up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.config} | {r.round} | {r.storm_s:.1f} | {r.p50_s:.1f} / {r.p99_s:.1f} | "
            f"{r.server_cpu_s:.1f} | {r.client_cpu_s:.1f} | {r.rss_idle_mib:.0f} | "
            f"{r.rss_per_agent_kib:.1f} | {r.rss_per_agent_idle_kib:.1f} | "
            f"{r.peak_rss_mib:.0f} | {r.listen_overflows} / {r.syn_retransmits} | "
            f"{r.load:.1f} | {r.failures} | {r.gave_up} |"
        )
    base = {r.round: r for r in results if r.config == BASELINE}
    if not base:
        return
    print(f"\n| against {BASELINE} of the same run | run | storm | server CPU in storm |")
    print("|---|---|---|---|")
    for r in results:
        b = base.get(r.round)
        if r.config == BASELINE or b is None:
            continue
        print(
            f"| {r.config} | {r.round} | {r.storm_s / b.storm_s:.2f}x | "
            f"{r.server_cpu_s / b.server_cpu_s:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=["plain+uvloop", "tls+uvloop", "tls+asyncio"],
    )
    parser.add_argument(
        "--client-procs", type=int, default=1, help="client processes the agents are split over"
    )
    parser.add_argument(
        "--key",
        choices=["ec", "rsa2048"],
        default="ec",
        help="server (and CA) key: EC P-256 (the project's self-signed certificates) or "
        "RSA 2048 (cert-manager's default)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        help="what-if: serve with this --listen-backlog instead of its default",
    )
    parser.add_argument("--idle", type=float, default=5.0, help="idle seconds after the storm")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before the storm")
    parser.add_argument("--json", type=Path, help="also write the results here")
    # one client process (internal)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        run_client(args)
        return
    if args.agents // args.client_procs > 18_000:
        parser.error("more than 18,000 agents per client process: raise --client-procs")
    results: list[Result] = []
    with TemporaryDirectory(prefix="tls-storm-pki-") as tmp:
        pki = make_pki(Path(tmp), args.key)
        for round_ in range(1, args.repeat + 1):
            for config in args.configs:
                results.append(measure(config, round_, args, pki))
                print(results[-1], file=sys.stderr, flush=True)
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    main()
