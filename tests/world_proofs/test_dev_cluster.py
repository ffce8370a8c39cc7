"""`scripts/dev-cluster` as a developer runs it: up prints a kubeconfig with which
kubectl sees Ready kwok nodes, status tells the truth, down leaves no process behind."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from world import binaries
from world.processes import ProcessRecord

pytestmark = pytest.mark.world

SCRIPT = binaries.REPO_ROOT / "scripts" / "dev-cluster"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_up_status_down(tmp_path: Path) -> None:
    workdir = tmp_path / "dev"
    up = _run("up", "--dir", str(workdir), "--nodes", "2")
    assert up.returncode == 0, up.stderr
    export = up.stdout.strip().splitlines()[-1]
    assert export.startswith("export KUBECONFIG=")
    kubeconfig = Path(export.removeprefix("export KUBECONFIG="))
    # A fresh shell (no virtualenv, no test world on PATH) that evals what `up` printed
    # finds the commands README's "Running the operator" types.
    fresh = subprocess.run(
        ["/bin/bash", "-c", f"{up.stdout}\ncommand -v opamp-operator kubectl-opamp kubectl"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=30,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert fresh.stdout.splitlines()[2] == str(binaries.find("kubectl"))
    try:
        # `up` returns only once every node is Ready, so nothing waits here.
        nodes = subprocess.run(
            [str(binaries.find("kubectl")), f"--kubeconfig={kubeconfig}", "get", "nodes"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.splitlines()
        assert nodes[0].split()[:2] == ["NAME", "STATUS"]
        assert sorted((line.split()[0], line.split()[1]) for line in nodes[1:]) == [
            ("kwok-node-0", "Ready"),
            ("kwok-node-1", "Ready"),
        ]

        again = _run("up", "--dir", str(workdir))
        assert again.returncode == 0
        assert "already running" in again.stderr

        status = _run("status", "--dir", str(workdir))
        assert status.returncode == 0, status.stdout
        report = json.loads(status.stdout)
        assert report["readyz"] == "ok"
        assert set(report["processes"]) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }
        assert _run("kubeconfig", "--dir", str(workdir)).stdout.strip() == str(kubeconfig)
    finally:
        down = _run("down", "--dir", str(workdir))
    assert down.returncode == 0, down.stderr
    records = [
        ProcessRecord(name, p["pid"], [], p["log"]) for name, p in report["processes"].items()
    ]
    deadline = time.monotonic() + 10
    while any(r.alive() for r in records) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r.name for r in records if r.alive()] == []
    assert not workdir.exists()
    assert _run("status", "--dir", str(workdir)).returncode == 3
