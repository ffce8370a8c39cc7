"""The shell scripts: shellcheck-clean, and scripts/kind-e2e — which needs Docker, so
cannot run to the end here — stops before it builds or creates anything when Docker is
missing, saying why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"
KIND_E2E = ROOT / "scripts" / "kind-e2e"


def _shell_scripts() -> list[Path]:
    found = [ROOT / ".ci" / "run", ROOT / "scripts" / "lib" / "common.sh"]
    for path in sorted((ROOT / "scripts").iterdir()):
        if path.is_file() and path.read_bytes().startswith(b"#!/usr/bin/env bash"):
            found.append(path)
    return found


def test_the_scripts_are_found() -> None:
    names = {p.name for p in _shell_scripts()}
    assert {"run", "common.sh", "check", "test-deps", "dev-cluster", "kind-e2e"} <= names


@pytest.mark.parametrize("script", _shell_scripts(), ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script: Path) -> None:
    done = subprocess.run(
        [str(SHELLCHECK), "--severity=warning", str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _kind_e2e(tmp_path: Path, docker: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "OPAMP_OPERATOR_CACHE": str(tmp_path / "cache"),
        "OPAMP_VENV": str(tmp_path / "venv"),
        "DOCKER": docker,
    }
    (tmp_path / "tmp").mkdir()
    return subprocess.run(
        [str(KIND_E2E), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("docker", "message"),
    [
        ("/nonexistent/docker", "/nonexistent/docker is not on PATH"),
        ("/bin/false", "'/bin/false info' failed: is the Docker daemon running"),
    ],
    ids=["no-docker", "docker-not-running"],
)
def test_kind_e2e_without_docker_stops_before_building_anything(
    tmp_path: Path, docker: str, message: str
) -> None:
    done = _kind_e2e(tmp_path, docker)
    assert done.returncode == 1
    assert message in done.stderr
    # Nothing made: no virtualenv, no build cache, no work dir.
    assert not (tmp_path / "venv").exists()
    assert not (tmp_path / "cache").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_kind_e2e_help_says_what_it_does(tmp_path: Path) -> None:
    done = _kind_e2e(tmp_path, "/nonexistent/docker", "--help")
    assert done.returncode == 0
    for step in ("kind create cluster", "kind load", "helm install", "pytest tests/e2e"):
        assert step in done.stdout
