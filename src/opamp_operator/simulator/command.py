"""`opamp-operator simulate`: the argument parser and the command's main."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from opamp_operator.simulator.runner import run_simulation
from opamp_operator.simulator.settings import (
    TRANSPORTS,
    SimulationSettings,
    transport_of,
)
from opamp_operator.simulator.stats import STOP_CONDITIONS

log = logging.getLogger("opamp_operator.simulator")

DESCRIPTION = """\
Simulate N OpAMP agents (OpenTelemetry Collectors in Kubernetes pods) in one process:
they connect to ENDPOINT, report status and heartbeats, apply offered remote configs and
reconnect with backoff. Progress goes to stderr every few seconds; one JSON summary goes to
stdout at the end (after --duration, when --stop-when holds, or on SIGINT/SIGTERM)."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("may not be negative")
    return value


# Flag defaults are SimulationSettings' own (endpoint and agents have none).
_D = SimulationSettings(endpoint="ws://127.0.0.1/v1/opamp", agents=1)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `simulate` on the main parser's subparsers."""
    p = subparsers.add_parser(
        "simulate",
        help="run many simulated OpAMP agents against a server (load generator)",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--endpoint", required=True, help="OpAMP URL, e.g. ws://127.0.0.1:4320/v1/opamp")
    p.add_argument("--agents", type=_positive_int, required=True, help="how many agents")
    p.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="ws or http; default: from the endpoint's scheme (the scheme is adapted to it)",
    )
    p.add_argument(
        "--fail-configs-matching",
        metavar="TEXT",
        default=None,
        help="report FAILED for any offered config whose body contains TEXT",
    )
    p.add_argument(
        "--pod-names", metavar="PREFIX", default=_D.pod_prefix, help="pods are PREFIX-<i>"
    )
    p.add_argument("--namespace", metavar="NS", default=_D.namespace, help="k8s.namespace.name")
    p.add_argument("--service-name", default=_D.service_name, help="service.name")
    p.add_argument(
        "--heartbeat",
        metavar="SECONDS",
        type=_non_negative,
        default=_D.heartbeat,
        help="heartbeat / HTTP polling interval until the server offers one (0: no WS heartbeats)",
    )
    p.add_argument(
        "--duration", metavar="SECONDS", type=float, default=None, help="stop after this long"
    )
    p.add_argument(
        "--stop-when",
        choices=STOP_CONDITIONS,
        default=None,
        help="stop once all agents are connected / have their full state acknowledged / "
        "have reported APPLIED for one config / have reported APPLIED or FAILED for one / "
        "have installed the package offered last",
    )
    p.add_argument(
        "--connect-rate",
        metavar="PER_SECOND",
        type=_non_negative,
        default=_D.connect_rate,
        help="agents started per second (0: all at once)",
    )
    p.add_argument(
        "--progress-interval",
        metavar="SECONDS",
        type=float,
        default=_D.progress_interval,
        help="progress lines",
    )
    p.add_argument("--backoff-initial", metavar="SECONDS", type=float, default=_D.backoff_initial)
    p.add_argument("--backoff-max", metavar="SECONDS", type=float, default=_D.backoff_max)
    p.add_argument(
        "--apply-delay",
        metavar="SECONDS",
        type=_non_negative,
        default=_D.apply_delay,
        help="time an agent takes to apply a config (reports APPLYING meanwhile)",
    )
    p.add_argument(
        "--report-applying", action="store_true", help="report APPLYING before APPLIED/FAILED"
    )
    p.add_argument("--open-timeout", metavar="SECONDS", type=float, default=_D.open_timeout)
    p.add_argument("--request-timeout", metavar="SECONDS", type=float, default=_D.request_timeout)
    p.add_argument("--shutdown-timeout", metavar="SECONDS", type=float, default=_D.shutdown_timeout)
    p.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=_D.max_message_bytes,
        help="largest ServerToAgent accepted",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for backoff jitter")
    p.add_argument(
        "--accept-packages",
        action="store_true",
        help="accept offered packages (AcceptsPackages, ReportsPackageStatuses): download each "
        "new one, check its SHA-256 against the offered content hash, report Installed or "
        "InstallFailed; a top-level package's version becomes the agents' service.version",
    )
    p.add_argument(
        "--service-version",
        default=None,
        help="service.version the agents report until a top-level package replaces it "
        "(default: none)",
    )
    p.add_argument(
        "--package-downloads",
        metavar="N",
        type=_positive_int,
        default=_D.package_downloads,
        help="package downloads at once in this process",
    )
    p.add_argument(
        "--package-download-timeout",
        metavar="SECONDS",
        type=float,
        default=_D.package_download_timeout,
        help="the longest one package download may take",
    )
    p.add_argument(
        "--max-package-bytes",
        type=_positive_int,
        default=_D.max_package_bytes,
        help="largest package file accepted",
    )
    p.add_argument(
        "--ca-file",
        metavar="PEM",
        default=None,
        help="CA certificates to verify a wss:// or https:// server by (default: the system's)",
    )
    p.set_defaults(func=main)


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    return SimulationSettings(
        endpoint=args.endpoint,
        agents=args.agents,
        transport=args.transport or transport_of(args.endpoint),
        fail_configs_matching=args.fail_configs_matching,
        pod_prefix=args.pod_names,
        namespace=args.namespace,
        service_name=args.service_name,
        heartbeat=args.heartbeat,
        duration=args.duration,
        connect_rate=args.connect_rate,
        stop_when=args.stop_when,
        progress_interval=args.progress_interval,
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        open_timeout=args.open_timeout,
        request_timeout=args.request_timeout,
        shutdown_timeout=args.shutdown_timeout,
        apply_delay=args.apply_delay,
        report_applying=args.report_applying,
        max_message_bytes=args.max_message_bytes,
        seed=args.seed,
        ca_file=args.ca_file,
        accept_packages=args.accept_packages,
        service_version=args.service_version,
        package_downloads=args.package_downloads,
        package_download_timeout=args.package_download_timeout,
        max_package_bytes=args.max_package_bytes,
    )


async def _simulate(settings: SimulationSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    summary = await run_simulation(settings, stop)
    sys.stdout.write(summary.to_json() + "\n")
    sys.stdout.flush()
    missed = settings.stop_when is not None and summary.stopped_by == "duration"
    return 1 if missed else 0


def main(args: argparse.Namespace) -> int:
    """Exit status 0, or 1 when --stop-when did not come true before --duration ran out;
    2 for invalid settings. Logging (stderr) is set up by the main command."""
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"opamp-operator simulate: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_simulate(settings))
