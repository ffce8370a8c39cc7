"""The `opamp-operator` command: one entry point for every mode the operator runs in."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from opamp_operator import __version__


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
