"""A scriptable OpAMP agent over opentelemetry-opamp-client (PyPI), driven exactly like
test-deps/opamp-go's opamp-go-agent: the same flags, JSON commands on stdin and JSON events
on stdout, so one test helper (world.collector.JsonlProcess) drives every agent.

Run it as a script, never import it: world.peers.start_python_agent starts it with the
tests' interpreter. The library ships its own generated opamp_pb2 for the same proto
package as ours, and two such modules cannot share one process's descriptor pool.

What opentelemetry-opamp-client 0.5b0 cannot do, and so this agent does not either (read
from its source, opentelemetry/_opamp/):

- Health: no message it builds has a `health` field and ReportsHealth is not among its
  capabilities; `--unhealthy` is a fatal error and the `health` command answers `error`.
- Description after start: the AgentDescription is fixed in OpAMPClient's constructor; the
  `description` command answers `error`.
- Available components, own telemetry, packages, connection settings, commands, custom
  messages: not implemented; `--components` is a fatal error.
- Only HTTP: there is no WebSocket transport; a ws:// URL is a fatal error.
- The instance uid can be neither chosen nor read through its API; this harness sets and
  reads `OpAMPClient._instance_uid`. A server-assigned uid (AgentIdentification) is never
  adopted and never reaches the callbacks: MessageData carries only `remote_config`.
- Effective config is sent only inside a full-state message, with one content type for
  every file; a JSON file is re-serialised with json.dumps, not passed byte for byte.
- decode_remote_config parses JSON files only and raises on anything else (text/yaml,
  what the reference server offers), so this harness reads the raw bodies instead.
- on_connect runs after every successful request; this harness prints `connected` only on
  the first one and on the first after a failure, as opamp-go's HTTP client does.
- Sequence numbers are taken when a message is built, not when it is sent, and are spent
  on failed attempts too: messages queued together can repeat a number or skip one.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import FrameType
from typing import Any, NoReturn

from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import MessageData, OpAMPCallbacks
from opentelemetry._opamp.client import OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2

NAME = "pyclient-agent"
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
Statuses = opamp_pb2.RemoteConfigStatuses


class CommandError(Exception):
    """A stdin command that cannot be run; it is answered with an `error` event."""


class UnsupportedError(CommandError):
    """Something opamp-go-agent does that this client library cannot."""


class StopRequestedError(Exception):
    """SIGTERM or SIGINT: leave the stdin loop and stop the agent cleanly."""


class Emitter:
    """One JSON object per line, {"event": ..., "time": ..., fields...}, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def emit(self, event: str, fields: Mapping[str, Any] | None = None) -> None:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        line = json.dumps({**(fields or {}), "event": event, "time": now})
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


class LogEvents(logging.Handler):
    """The library's log records as `log` events, like the Go harness's Logger."""

    def __init__(self, out: Emitter, level: int) -> None:
        super().__init__(level)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.emit("log", {"level": record.levelname.lower(), "message": record.getMessage()})


def parse_duration(text: str) -> float:
    """A Go duration such as `1s`, `500ms` or `1m30s`, in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want key=value, got {text!r}")
    return key, value


def new_instance_uid() -> bytes:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = value & ~(0xF << 76) | 0x7 << 76
    value = value & ~(0x3 << 62) | 0x2 << 62
    return value.to_bytes(16)


def config_files_json(config_map: opamp_pb2.AgentConfigMap) -> dict[str, Any]:
    return {
        name: {"content_type": f.content_type, "body": f.body.decode(errors="replace")}
        for name, f in config_map.config_map.items()
    }


class Harness(OpAMPCallbacks):
    """The agent's side of the library's callbacks, and the stdin commands."""

    def __init__(self, out: Emitter, apply_mode: str) -> None:
        self.out = out
        self.apply_mode = apply_mode
        self.connected = False
        self.last_hash = b""
        # Callbacks run on the library's worker thread, commands on the main thread.
        self.lock = threading.Lock()

    def on_connect(self, agent: OpAMPAgent, client: OpAMPClient) -> None:
        if not self.connected:
            self.connected = True
            self.out.emit("connected")

    def on_connect_failed(self, agent: OpAMPAgent, client: OpAMPClient, error: Exception) -> None:
        self.connected = False
        self.out.emit("connect_failed", {"error": str(error)})

    def on_error(
        self,
        agent: OpAMPAgent,
        client: OpAMPClient,
        error_response: opamp_pb2.ServerErrorResponse,
    ) -> None:
        self.out.emit(
            "server_error",
            {
                "type": opamp_pb2.ServerErrorResponseType.Name(error_response.type),
                "message": error_response.error_message,
            },
        )

    def on_message(self, agent: OpAMPAgent, client: OpAMPClient, message: MessageData) -> None:
        rc = message.remote_config
        if rc is None:
            return
        self.out.emit(
            "message",
            {
                "remote_config": {
                    "config_hash": rc.config_hash.hex(),
                    "files": config_files_json(rc.config),
                }
            },
        )
        with self.lock:
            self.last_hash = rc.config_hash
            self._apply(agent, client, rc)

    def _apply(
        self, agent: OpAMPAgent, client: OpAMPClient, rc: opamp_pb2.AgentRemoteConfig
    ) -> None:
        """Accept the offered config as the effective one, report it FAILED, or ignore it."""
        if self.apply_mode == "ignore":
            return
        if self.apply_mode == "fail":
            status = Statuses.RemoteConfigStatuses_FAILED
            changed = client.update_remote_config_status(
                rc.config_hash, status, f"rejected by {NAME} --apply=fail"
            )
            if changed is not None:
                agent.send(client.build_remote_config_status_response_message(changed))
        else:
            status = Statuses.RemoteConfigStatuses_APPLIED
            if client.update_remote_config_status(rc.config_hash, status) is not None:
                set_effective_config(client, rc.config)
                # The full state carries both the new status and the effective config.
                agent.send(client.build_full_state_message())
        self.out.emit(
            "remote_config_status",
            {"status": Statuses.Name(status), "config_hash": rc.config_hash.hex()},
        )

    def handle(self, agent: OpAMPAgent, client: OpAMPClient, command: dict[str, Any]) -> bool:
        """Run one stdin command; False when the agent should stop."""
        match command.get("cmd"):
            case "stop":
                return False
            case "health":
                raise UnsupportedError("opentelemetry-opamp-client cannot report health")
            case "description":
                raise UnsupportedError(
                    "opentelemetry-opamp-client cannot change the description after start"
                )
            case "effective_config":
                body = command.get("body")
                if not isinstance(body, str):
                    raise CommandError("effective_config needs body")
                with self.lock:
                    client.update_effective_config({"": body}, "text/yaml")
                    agent.send(client.build_full_state_message())
            case "remote_config_status":
                try:
                    status = Statuses.Value(f"RemoteConfigStatuses_{command.get('status')}")
                except ValueError:
                    raise CommandError(
                        f"unknown remote config status {command.get('status')!r}"
                    ) from None
                with self.lock:
                    changed = client.update_remote_config_status(
                        self.last_hash, status, str(command.get("error", ""))
                    )
                    if changed is not None:
                        agent.send(client.build_remote_config_status_response_message(changed))
            case other:
                raise CommandError(f"unknown command {other!r}")
        return True


def set_effective_config(client: OpAMPClient, config: opamp_pb2.AgentConfigMap) -> None:
    files = dict(config.config_map)
    content_type = next(iter(files.values())).content_type if files else "text/yaml"
    values: dict[str, Any] = {
        name: json.loads(f.body) if content_type == "application/json" else f.body
        for name, f in files.items()
    }
    client.update_effective_config(values, content_type or "text/yaml")


class _Parser(argparse.ArgumentParser):
    """Bad flags become the `fatal` event, as in the Go harness, not a usage text on stderr."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def arguments() -> argparse.ArgumentParser:
    p = _Parser(prog=NAME, description="An OpAMP agent over opentelemetry-opamp-client.")
    p.add_argument("--url", default="http://127.0.0.1:4320/v1/opamp", help="http(s):// only")
    p.add_argument("--instance-uid", default="", help="32 hex digits (default: a new UUIDv7)")
    p.add_argument("--service-name", default=NAME, help="service.name identifying attribute")
    p.add_argument("--heartbeat", type=parse_duration, default=30.0, help="polling interval")
    p.add_argument("--apply", choices=["accept", "fail", "ignore"], default="accept")
    p.add_argument("--effective-config", default="", help="initial effective config (YAML)")
    p.add_argument("--unhealthy", action="store_true", help="unsupported: fails")
    p.add_argument("--components", default="", help="unsupported: fails")
    p.add_argument("--verbose", action="store_true", help="also print the library's debug log")
    p.add_argument("--attr", type=key_value, action="append", default=[])
    p.add_argument("--non-identifying", type=key_value, action="append", default=[])
    p.add_argument("--header", type=key_value, action="append", default=[])
    return p


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequestedError


def run(out: Emitter, args: argparse.Namespace) -> None:
    if not args.url.startswith(("http://", "https://")):
        raise UnsupportedError(
            f"--url {args.url}: opentelemetry-opamp-client speaks plain HTTP only"
        )
    if args.unhealthy:
        raise UnsupportedError("--unhealthy: opentelemetry-opamp-client cannot report health")
    if args.components:
        raise UnsupportedError("--components: opentelemetry-opamp-client cannot report components")
    uid = bytes.fromhex(args.instance_uid) if args.instance_uid else new_instance_uid()
    if len(uid) != 16:
        raise ValueError("--instance-uid must be 32 hex digits")

    logger = logging.getLogger("opentelemetry._opamp")
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    logger.addHandler(LogEvents(out, logger.level))
    logger.propagate = False

    identifying = {
        **dict(args.attr),
        "service.name": args.service_name,
        "service.instance.id": str(uuid.UUID(bytes=uid)),
    }
    client = OpAMPClient(
        endpoint=args.url,
        headers=dict(args.header),
        agent_identifying_attributes=identifying,
        agent_non_identifying_attributes=dict(args.non_identifying) or None,
    )
    client._instance_uid = uid  # no public way to choose the uid (see the module docstring)
    if args.effective_config:
        client.update_effective_config({"": args.effective_config}, "text/yaml")
    harness = Harness(out, args.apply)
    agent = OpAMPAgent(interval=args.heartbeat, callbacks=harness, client=client)

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    agent.start()
    out.emit("started", {"instance_uid": client._instance_uid.hex(), "transport": "http"})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            command: dict[str, Any] = {}
            try:
                command = json.loads(line)
                if not isinstance(command, dict):
                    command = {"cmd": "stdin"}
                    raise CommandError("a command is a JSON object")  # noqa: TRY301
                more = harness.handle(agent, client, command)
            except (ValueError, CommandError) as exc:
                out.emit("error", {"op": str(command.get("cmd", "stdin")), "error": str(exc)})
                continue
            out.emit("done", {"cmd": command.get("cmd")})
            if not more:
                break
    except StopRequestedError:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        agent.stop(timeout=5)
        # start() registered stop() with atexit, which would send a second AgentDisconnect.
        atexit.unregister(agent.stop)
        out.emit("stopped")


def main() -> int:
    out = Emitter()
    try:
        run(out, arguments().parse_args())
    except Exception as exc:  # noqa: BLE001 - any failure is reported as the `fatal` event
        out.emit("fatal", {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
