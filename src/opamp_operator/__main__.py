"""`opamp-operator` and `python -m opamp_operator`.

The command's entry point imports nothing heavy until it runs: the config worker
processes (server/workers.py) are spawned, and a spawned process imports the main
module of its parent, here only this one, not kopf and the Kubernetes client.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from opamp_operator.cli import main as cli_main  # noqa: PLC0415 - see the docstring

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
