"""The `opamp-operator` command: one entry point for every mode the operator runs in."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvloop

from opamp_operator import __version__
from opamp_operator.api.crd import render_all
from opamp_operator.api.reference import render_reference
from opamp_operator.fleet.rollout_status import RolloutTiming
from opamp_operator.k8s.run import RunOptions
from opamp_operator.k8s.run import run as run_operator
from opamp_operator.k8s.settings import PeeringSettings
from opamp_operator.k8s.webhook import WebhookOptions
from opamp_operator.opamp.session import AgentLimits
from opamp_operator.opamp.wire import protobuf_backend
from opamp_operator.server import gc_policy
from opamp_operator.server.api import ApiListen
from opamp_operator.server.app import Limits, Listen
from opamp_operator.server.tls import ClientAuth, TLSConfigError, TLSFiles
from opamp_operator.simulator.command import add_parser as _add_simulate
from opamp_operator.standalone.fleets import FleetFileError
from opamp_operator.standalone.serve import (
    ApiExposedError,
    ServeOptions,
    serve,
    serve_core_settings,
)

log = logging.getLogger("opamp_operator")


def warn_if_slow_protobuf() -> None:
    """The pure-Python protobuf backend is 20-140x slower than upb; say so loudly."""
    backend = protobuf_backend()
    if backend != "upb":
        log.warning(
            "protobuf is using the %r backend, not upb: decoding agent messages will be "
            "20-140x slower. Install a protobuf wheel for this platform and unset "
            "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION.",
            backend,
        )


Command = Callable[[argparse.Namespace], int]

# Flag defaults are read from the settings dataclasses that own them (never written here);
# help texts show them with %(default)s.
_LISTEN = Listen()
_API = ApiListen()
_TLS = TLSFiles()
_LIMITS = Limits()
_AGENT_LIMITS = AgentLimits()

# (flag, the dataclass owning its default, its field, help). One table for `run` and
# `serve`, the chart's opamp.limits.* values and docs/opamp-server.md's table.
_MIB = f"{_LIMITS.max_message_bytes / 2**20:g} MiB"
LIMIT_FLAGS: tuple[tuple[str, Limits | AgentLimits, str, str], ...] = (
    (
        "--max-message-bytes",
        _LIMITS,
        "max_message_bytes",
        f"largest message either way, after decompression (default %(default)s, {_MIB}); "
        "past it HTTP 413, WebSocket close 1009",
    ),
    (
        "--max-in-flight-bytes",
        _LIMITS,
        "max_in_flight_bytes",
        "bytes of messages being received or handled at once, both transports; HTTP bodies "
        "are admitted by Content-Length before they are read; past it 503 + Retry-After or "
        "WebSocket close 1013 (default %(default)s)",
    ),
    (
        "--max-websockets",
        _LIMITS,
        "max_websockets",
        "open WebSockets; past it, 503 + Retry-After (default %(default)s)",
    ),
    (
        "--max-http-in-flight",
        _LIMITS,
        "max_http_in_flight",
        "HTTP requests handled at once, counted once their body is read; past it, "
        "503 + Retry-After (default %(default)s)",
    ),
    (
        "--listen-backlog",
        _LIMITS,
        "listen_backlog",
        "connections queued before they are accepted, for reconnect storms; capped by "
        "net.core.somaxconn (default %(default)s)",
    ),
    (
        "--retry-after-min-seconds",
        _LIMITS,
        "retry_after_min_seconds",
        "shed requests are told to retry after a whole number of seconds drawn from "
        "[min, max), in Retry-After and retry_info (default %(default)s)",
    ),
    (
        "--retry-after-max-seconds",
        _LIMITS,
        "retry_after_max_seconds",
        "see --retry-after-min-seconds (default %(default)s)",
    ),
    (
        "--header-timeout-seconds",
        _LIMITS,
        "header_timeout_seconds",
        "a connection that has not completed its TLS handshake, then its request headers, "
        "within this (each) is closed (default %(default)s)",
    ),
    (
        "--body-timeout-seconds",
        _LIMITS,
        "body_timeout_seconds",
        "an HTTP body, or a WebSocket message once begun, must arrive within this: 408 or "
        "WebSocket close 1008 (default %(default)s)",
    ),
    (
        "--keepalive-seconds",
        _LIMITS,
        "keepalive_seconds",
        "idle kept-alive HTTP connections are closed after this (default %(default)s)",
    ),
    (
        "--first-message-timeout-seconds",
        _LIMITS,
        "first_message_timeout_seconds",
        "a WebSocket without an AgentToServer within this is closed, 1008 (default %(default)s)",
    ),
    (
        "--ws-ping-seconds",
        _LIMITS,
        "ws_ping_seconds",
        "a silent WebSocket is pinged after this and closed without a pong within half "
        "of it (default %(default)s)",
    ),
    (
        "--shutdown-seconds",
        _LIMITS,
        "shutdown_seconds",
        "on shutdown, WebSockets are closed (1001) at once and requests finish, each "
        "within this (default %(default)s)",
    ),
    (
        "--config-workers",
        _LIMITS,
        "config_workers",
        "worker processes per pool (drift judging; rendering for readers) that parse agents' "
        "configs, never on the event loop's process (default %(default)s)",
    ),
    (
        "--config-budget-seconds",
        _LIMITS,
        "config_budget_seconds",
        "one comparison or render of an agent's config must finish within this, else its "
        "worker is killed and the config reported as not comparable (default %(default)s)",
    ),
    (
        "--config-worker-memory-bytes",
        _LIMITS,
        "config_worker_memory_bytes",
        "address space of each config worker; past it a call fails and the config is "
        "reported as not comparable (default %(default)s)",
    ),
    (
        "--max-agents",
        _AGENT_LIMITS,
        "max_agents",
        "agent records kept; the oldest not held by a WebSocket is forgotten first, else a "
        "new agent gets UNAVAILABLE + retry (default %(default)s)",
    ),
    (
        "--forget-undescribed-after-seconds",
        _AGENT_LIMITS,
        "forget_undescribed_after_seconds",
        "an agent that never sent its description is forgotten this long after it was "
        "last seen (default %(default)s)",
    ),
    (
        "--max-agent-attributes",
        _AGENT_LIMITS,
        "max_attributes",
        "attributes in an AgentDescription; more: 413 or WebSocket close 1009 "
        "(default %(default)s)",
    ),
    (
        "--max-agent-description-bytes",
        _AGENT_LIMITS,
        "max_description_bytes",
        "bytes of an AgentDescription; more: 413 or WebSocket close 1009 (default %(default)s)",
    ),
    (
        "--max-effective-config-bytes",
        _AGENT_LIMITS,
        "max_effective_config_bytes",
        "a larger effective config is kept as its hash only (default %(default)s)",
    ),
    (
        "--max-agent-components",
        _AGENT_LIMITS,
        "max_components",
        "more available components are kept as their hash only (default %(default)s)",
    ),
    (
        "--max-kept-bytes",
        _AGENT_LIMITS,
        "max_kept_bytes",
        "effective configs and component lists kept, all agents together; one that would "
        f"take the total past it is kept as its hash only (default %(default)s, {_MIB})",
    ),
)


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    """The OpAMP server's listeners and limits, shared by `serve` and `run`."""
    p.add_argument(
        "--host", default=_LISTEN.host, help="agents' listen address (default %(default)s)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=_LISTEN.port,
        help="agents' listen port: OpAMP (/v1/opamp) only (default %(default)s)",
    )
    tls = p.add_argument_group("TLS for agents (wss:// and https:// on --port)")
    tls.add_argument("--tls-cert-file", type=Path, help="server certificate chain (PEM)")
    tls.add_argument("--tls-key-file", type=Path, help="its private key (PEM)")
    tls.add_argument(
        "--client-ca-file", type=Path, help="CAs agents' client certificates must chain to"
    )
    tls.add_argument(
        "--client-auth",
        choices=[c.value for c in ClientAuth],
        default=_TLS.client_auth.value,
        help="ask agents for a client certificate: none, optional (verified when given) "
        "or require (default %(default)s)",
    )
    tls.add_argument(
        "--tls-reload-seconds",
        type=float,
        default=_TLS.reload_seconds,
        help="how often certificate files are checked for rotation; connected agents "
        "stay connected (default %(default)s)",
    )
    api = p.add_argument_group("API listener: read API, /metrics, /healthz, /readyz")
    api.add_argument("--api-host", default=_API.host, help="listen address (default %(default)s)")
    api.add_argument("--api-port", type=int, default=_API.port, help="(default %(default)s)")
    api.add_argument("--api-tls-cert-file", type=Path, help="certificate (PEM) for the API")
    api.add_argument("--api-tls-key-file", type=Path, help="its private key (PEM)")
    limits = p.add_argument_group("OpAMP server limits and timeouts (docs/opamp-server.md)")
    for flag, owner, name, text in LIMIT_FLAGS:
        default = getattr(owner, name)
        limits.add_argument(flag, type=type(default), default=default, help=text)


def _limit_args(args: argparse.Namespace) -> tuple[Limits, AgentLimits]:
    """The limit flags as the two dataclasses that own them; ValueError when a value is
    out of range."""

    def given(owner: Limits | AgentLimits) -> dict[str, Any]:
        return {
            name: getattr(args, flag.removeprefix("--").replace("-", "_"))
            for flag, of, name, _ in LIMIT_FLAGS
            if of is owner
        }

    return replace(_LIMITS, **given(_LIMITS)), replace(_AGENT_LIMITS, **given(_AGENT_LIMITS))


def _server_settings(args: argparse.Namespace) -> tuple[Listen, ApiListen, Limits, AgentLimits]:
    listen = Listen(
        host=args.host,
        port=args.port,
        tls=TLSFiles(
            cert_file=args.tls_cert_file,
            key_file=args.tls_key_file,
            client_ca_file=args.client_ca_file,
            client_auth=ClientAuth(args.client_auth),
            reload_seconds=args.tls_reload_seconds,
        ),
    )
    api = ApiListen(
        host=args.api_host,
        port=args.api_port,
        tls=TLSFiles(
            cert_file=args.api_tls_cert_file,
            key_file=args.api_tls_key_file,
            reload_seconds=args.tls_reload_seconds,
        ),
        token_file=getattr(args, "api_token_file", None),
    )
    limits, agent_limits = _limit_args(args)
    return listen, api, limits, agent_limits


def _add_heartbeat_flag(p: argparse.ArgumentParser, default: int | None) -> None:
    p.add_argument(
        "--heartbeat-seconds",
        type=int,
        default=default,
        help="heartbeat interval offered to agents that accept OpAMP connection settings, "
        "report heartbeats and connected over plaintext without an Authorization header, "
        "unless their fleet names its own; 0: none offered "
        f"(default {'none offered' if default is None else '%(default)s'})",
    )


def _add_rollout_flags(p: argparse.ArgumentParser, timing: RolloutTiming) -> None:
    """How often rollouts are planned; `run`'s ConfigRollouts and `serve`'s fleets alike."""
    p.add_argument(
        "--rollout-interval",
        type=float,
        default=timing.interval,
        help="seconds between rollout gate evaluations (default %(default)s)",
    )
    p.add_argument(
        "--rollout-startup-grace",
        type=float,
        default=timing.startup_grace,
        help="seconds after a start during which rollouts hold their persisted progress "
        "while agents reconnect, before gates and steps are evaluated again "
        "(default %(default)s)",
    )


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """`serve`'s arguments as ServeOptions; only --config gives ServeOptions(config)."""
    listen, api, limits, agent_limits = _server_settings(args)
    return ServeOptions(
        config=args.config,
        listen=listen,
        api=api,
        limits=limits,
        core=replace(serve_core_settings(args.heartbeat_seconds), limits=agent_limits),
        reload_seconds=args.reload_seconds,
        state_dir=args.state_dir,
        rollout=RolloutTiming(args.rollout_interval, args.rollout_startup_grace),
    )


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Every long-running mode runs on uvloop: its TLS transport keeps a connected agent
    at a fraction of the stdlib's per-connection buffers (docs/benchmarks.md); and with
    the garbage collector set for many long-lived connections (server/gc_policy.py)."""
    gc_policy.settle()
    uvloop.run(main)


def _start(
    start: Callable[[], Coroutine[Any, Any, None]], refused: tuple[type[Exception], ...]
) -> int:
    """Exit 2 with one line, no traceback, for settings the mode refuses: `start` builds
    the options (ValueError) and the coroutine; `refused`, what it raises at start."""
    try:
        main = start()
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        run_loop(main)
    except refused as exc:
        log.error("%s", exc)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    return _start(
        lambda: serve(serve_options(args)), (FleetFileError, TLSConfigError, ApiExposedError)
    )


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the OpAMP server with fleets defined in a file (no Kubernetes)",
        description="Serve OpAMP on /v1/opamp (WebSocket and HTTP) with fleets from a file, "
        "reloaded when it changes; read API on /api/v1/agents, /healthz, /readyz, /metrics.",
    )
    p.add_argument("--config", type=Path, required=True, help="fleets file (YAML)")
    _add_server_flags(p)
    p.add_argument(
        "--api-token-file",
        type=Path,
        help="bearer token the API requires; without it the API listens on loopback only",
    )
    _add_heartbeat_flag(p, serve_core_settings(None).offer_heartbeat_seconds)
    p.add_argument(
        "--reload-seconds",
        type=float,
        default=ServeOptions.reload_seconds,
        help="how often to check the fleets file (default %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where each fleet's stable revision and its rollout's progress are kept "
        "across restarts; fleets may have a `rollout` only with one",
    )
    _add_rollout_flags(p, RolloutTiming())
    p.set_defaults(func=_serve)


_RUN = RunOptions()


def run_options(args: argparse.Namespace) -> RunOptions:
    """`run`'s arguments as RunOptions; no arguments give RunOptions()."""
    listen, api, limits, agent_limits = _server_settings(args)
    handlers = _RUN.handlers
    return RunOptions(
        namespaces=tuple(args.namespace),
        listen=listen,
        api=api,
        access=replace(_RUN.access, audiences=tuple(args.api_token_audience)),
        agent_tokens=replace(
            _RUN.agent_tokens,
            audiences=tuple(args.agent_token_audience or _RUN.agent_tokens.audiences),
        ),
        limits=limits,
        core=replace(
            _RUN.core, offer_heartbeat_seconds=args.heartbeat_seconds, limits=agent_limits
        ),
        handlers=replace(
            handlers,
            status_interval=args.status_interval,
            rollout_interval=args.rollout_interval,
            rollout_startup_grace=args.rollout_startup_grace,
            gate_startup_grace=args.gate_startup_grace,
            token_refresh_seconds=args.token_refresh_seconds,
            agent_endpoint=args.agent_endpoint,
            agent_ca_file=args.agent_ca_file,
            remediation=replace(handlers.remediation, wait_seconds=args.remediation_wait_seconds),
        ),
        peering=PeeringSettings(
            name=args.peering, priority=args.peering_priority, lifetime=args.peering_lifetime
        ),
        webhook=(
            WebhookOptions(
                port=args.webhook_port,
                host=args.webhook_host,
                cert_dir=args.webhook_cert_dir,
                configuration=args.webhook_configuration or None,
            )
            if args.webhook_port
            else None
        ),
    )


def _run(args: argparse.Namespace) -> int:
    return _start(lambda: run_operator(run_options(args)), (TLSConfigError,))


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the operator: kopf handlers and the OpAMP server in one process",
        description="Reconcile CollectorFleets and serve OpAMP on /v1/opamp. Credentials come "
        "from $KUBECONFIG / ~/.kube/config, or the in-cluster service account.",
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=list(_RUN.namespaces),
        help="watch only these (repeat); default: cluster-wide",
    )
    _add_server_flags(p)
    p.add_argument(
        "--api-token-audience",
        action="append",
        default=list(_RUN.access.audiences),
        help="an audience API users' tokens must carry (repeat); default: the apiserver's",
    )
    p.add_argument(
        "--agent-token-audience",
        action="append",
        default=None,
        help="the audience agents' projected ServiceAccount tokens must be issued for "
        f"(repeat; default {', '.join(_RUN.agent_tokens.audiences)})",
    )
    peering = _RUN.peering
    p.add_argument(
        "--peering",
        default=peering.name,
        help="kopf peering object name: replicas sharing it run active/standby "
        "(needs deploy/crds/kopf-peering.yaml); the standby fails /readyz",
    )
    p.add_argument(
        "--peering-priority",
        type=int,
        default=peering.priority,
        help="default: random per start",
    )
    p.add_argument(
        "--peering-lifetime",
        type=int,
        default=peering.lifetime,
        help="seconds before a silent replica is presumed dead and its standby takes over "
        "(default %(default)s)",
    )
    handlers = _RUN.handlers
    p.add_argument(
        "--status-interval",
        type=float,
        default=handlers.status_interval,
        help="seconds between status writes (default %(default)s)",
    )
    _add_rollout_flags(p, RolloutTiming(handlers.rollout_interval, handlers.rollout_startup_grace))
    p.add_argument(
        "--gate-startup-grace",
        type=float,
        default=handlers.gate_startup_grace,
        help="seconds after a start (or a standby taking over) during which gated pods "
        "whose agent has not reconnected yet keep their agent-ready condition instead of "
        "going False (default %(default)s)",
    )
    p.add_argument(
        "--token-refresh-seconds",
        type=float,
        default=handlers.token_refresh_seconds,
        help="how often a fleet's token Secret is read again; a token rotated, deleted or "
        "unreadable closes the sessions it authenticated within this (default %(default)s)",
    )
    _add_heartbeat_flag(p, _RUN.core.offer_heartbeat_seconds)
    p.add_argument(
        "--agent-endpoint",
        default=handlers.agent_endpoint,
        help="OpAMP URL given to template-mode Collectors, e.g. "
        f"ws://opamp-operator.opamp-system.svc:{_LISTEN.port}/v1/opamp",
    )
    p.add_argument(
        "--agent-ca-file",
        type=Path,
        default=handlers.agent_ca_file,
        help="CA certificates (PEM) template-mode Collectors verify a wss:// or https:// "
        "--agent-endpoint with; put into each template fleet's ConfigMap unless the fleet "
        "names its own (spec.template.caConfigMapRef). Read at start",
    )
    p.add_argument(
        "--remediation-wait-seconds",
        type=float,
        default=handlers.remediation.wait_seconds,
        help="drift policy Remediate: how long an agent gets to report after a re-offer or "
        "restart before the next step (default %(default)s)",
    )
    hook = p.add_argument_group("validating admission webhook (off unless --webhook-port)")
    hook.add_argument("--webhook-port", type=int, default=0, help="HTTPS port, e.g. 9443")
    hook.add_argument(
        "--webhook-host",
        default="127.0.0.1",
        help="name or IP the apiserver reaches the webhook at (in the certificate; "
        "default %(default)s)",
    )
    hook.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=None,
        help="directory with tls.crt, tls.key (and ca.crt); default: self-signed at start",
    )
    hook.add_argument(
        "--webhook-configuration",
        default="",
        help="name (a domain, e.g. collectorfleets.opampoperator.io) of a "
        "ValidatingWebhookConfiguration the operator creates and keeps pointed at itself "
        "with its CA; leave empty when the chart manages it",
    )
    p.set_defaults(func=_run)


def _crds(args: argparse.Namespace) -> int:
    """Write (or with --check, compare) the generated CRDs; --check fails on any difference."""
    out: Path = args.out
    stale = []
    for name, text in render_all().items():
        path = out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path)
    reference: Path | None = args.reference
    if reference is not None:
        text = render_reference()
        if args.check:
            if not reference.exists() or reference.read_text() != text:
                stale.append(str(reference))
        else:
            reference.parent.mkdir(parents=True, exist_ok=True)
            reference.write_text(text)
            print(reference)
    if stale:
        print(f"stale CRDs (run `opamp-operator crds`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


def _add_crds(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("crds", help="write the CRDs generated from the typed models")
    p.add_argument("--out", type=Path, default=Path("deploy/crds"), help="directory (deploy/crds)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    p.add_argument(
        "--reference",
        type=Path,
        default=Path("docs/reference.md"),
        help="also the configuration reference (docs/reference.md)",
    )
    p.set_defaults(func=_crds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opamp-operator",
        description="Manages fleets of OpenTelemetry Collectors through OpAMP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    _add_simulate(sub)
    _add_crds(sub)
    _add_run(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    warn_if_slow_protobuf()
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
