"""Run `opamp-operator run` against the local cluster, as a process, the way users do."""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from world.processes import ProcessRecord, free_port, spawn, terminate, wait_until


@dataclass
class OperatorProcess:
    record: ProcessRecord
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/opamp"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/opamp"

    def stop(self) -> None:
        terminate(self.record)

    def __enter__(self) -> OperatorProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_operator(kubeconfig: Path, workdir: Path, *args: str) -> OperatorProcess:
    port = free_port()
    record, _ = spawn(
        f"operator-{port}",
        [
            sys.executable,
            "-m",
            "opamp_operator.cli",
            "run",
            "--host=127.0.0.1",
            f"--port={port}",
            "--status-interval=1",
            *args,
        ],
        workdir,
        env={"KUBECONFIG": str(kubeconfig)},
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until("opamp-operator run to listen", listening, timeout=60, watch=[record])
    time.sleep(1.0)  # kopf lists resources right after; let it start watching
    return OperatorProcess(record, port)
