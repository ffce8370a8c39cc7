"""kind-config.yaml, judged by kind's own config loading and validation.

`kind create cluster` checks for a container runtime before it reads its config, so the
file cannot be tried with kind itself here. `kind-config-check` (built by
scripts/test-deps from sigs.k8s.io/kind) runs the same code `kind create cluster
--config` runs on the file: the strict decode, the apiVersion/kind check, the defaults
and Validate. The negative cases prove the checker refuses what kind would refuse.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from world import binaries

pytestmark = pytest.mark.world

KIND_CONFIG = binaries.REPO_ROOT / "kind-config.yaml"

Config = dict[str, Any]


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries.find("kind-config-check")), str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def summary(path: Path) -> dict[str, Any]:
    """What kind makes of a file it accepts."""
    done = check(path)
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def test_the_repository_kind_config_is_what_kind_would_create() -> None:
    cfg = summary(KIND_CONFIG)
    assert cfg["name"] == "opamp-operator"
    assert [n["role"] for n in cfg["nodes"]] == ["control-plane", "worker", "worker"]
    control_plane, *workers = cfg["nodes"]
    assert control_plane["extraPortMappings"] == [
        {"containerPort": 30320, "hostPort": 4320, "listenAddress": "127.0.0.1", "protocol": "TCP"}
    ]
    assert all(w["extraPortMappings"] == [] for w in workers)
    assert all(n["image"].startswith("kindest/node:") for n in cfg["nodes"])


def variant(tmp_path: Path, change: Callable[[Config], None]) -> Path:
    """The repository's file, parsed, changed in one way and written out again."""
    cfg: Config = yaml.safe_load(KIND_CONFIG.read_text())
    change(cfg)
    path = tmp_path / "kind-config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def unchanged(cfg: Config) -> None:
    pass


def typo_in_field(cfg: Config) -> None:
    cfg["nodes"][0]["extraPortMapping"] = cfg["nodes"][0].pop("extraPortMappings")


def old_api_version(cfg: Config) -> None:
    cfg["apiVersion"] = "kind.x-k8s.io/v1alpha3"


def duplicate_host_port(cfg: Config) -> None:
    mappings = cfg["nodes"][0]["extraPortMappings"]
    mappings.append({**mappings[0], "containerPort": 30321})


def host_port_out_of_range(cfg: Config) -> None:
    cfg["nodes"][0]["extraPortMappings"][0]["hostPort"] = 70000


def unknown_role(cfg: Config) -> None:
    cfg["nodes"][1]["role"] = "master"


def only_workers(cfg: Config) -> None:
    cfg["nodes"][0] = {"role": "worker"}


def upper_case_name(cfg: Config) -> None:
    cfg["name"] = "OpAMP-Operator"


def test_the_round_tripped_copy_still_loads(tmp_path: Path) -> None:
    """The refusals below come from each change, not from rewriting the file."""
    assert summary(variant(tmp_path, unchanged))["name"] == "opamp-operator"


# Each change, and the words kind refuses it with.
REFUSALS: list[tuple[Callable[[Config], None], str]] = [
    (typo_in_field, "field extraPortMapping not found in type v1alpha4.Node"),
    (old_api_version, "unknown apiVersion: kind.x-k8s.io/v1alpha3"),
    (
        duplicate_host_port,
        "port mapping with same listen address, port and protocol already configured: "
        "127.0.0.1:4320/TCP",
    ),
    (host_port_out_of_range, "invalid hostPort: invalid port number: 70000"),
    (unknown_role, '"master" is not a valid node role'),
    (only_workers, "must have at least one control-plane node"),
    (upper_case_name, "'OpAMP-Operator' is not a valid cluster name"),
]


@pytest.mark.parametrize(
    ("change", "refusal"), [pytest.param(c, r, id=c.__name__) for c, r in REFUSALS]
)
def test_kind_refuses_a_broken_config(
    tmp_path: Path, change: Callable[[Config], None], refusal: str
) -> None:
    path = variant(tmp_path, change)
    done = check(path)
    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    assert done.stderr.startswith(f"{path}: "), done.stderr
    assert refusal in done.stderr
