"""The committed generated protobuf modules are what scripts/gen-proto makes (protoc from
grpcio-tools, run as a process)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = ["anyvalue_pb2.py", "anyvalue_pb2.pyi", "opamp_pb2.py", "opamp_pb2.pyi"]


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    subprocess.run([str(REPO / "scripts" / "gen-proto"), str(tmp_path)], check=True, timeout=120)
    committed = REPO / "src" / "opamp_operator" / "opamp" / "proto"
    for name in GENERATED:
        fresh = tmp_path / "opamp_operator" / "opamp" / "proto" / name
        assert fresh.read_text() == (committed / name).read_text(), (
            f"{name} is stale: run scripts/gen-proto"
        )
