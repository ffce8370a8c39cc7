"""The `opamp-operator` command: one entry point for every mode the operator runs in."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from opamp_operator import __version__
from opamp_operator.opamp.wire import protobuf_backend

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


def build_parser() -> argparse.ArgumentParser:
    """Subcommands (run, serve, simulate) register here as they are built."""
    parser = argparse.ArgumentParser(
        prog="opamp-operator",
        description="Manages fleets of OpenTelemetry Collectors through OpAMP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    warn_if_slow_protobuf()
    return 0


if __name__ == "__main__":
    sys.exit(main())
