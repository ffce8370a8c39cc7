"""scripts/test-deps' bookkeeping (--check, --pins, envtest assets) and the console
script, run as processes: the tools tier."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from samples import executable
from world import binaries

REPO = binaries.REPO_ROOT


def _test_deps(
    *args: str, cache: Path, assets: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPAMP_OPERATOR_CACHE": str(cache)}
    env.pop("KUBEBUILDER_ASSETS", None)
    if assets is not None:
        env["KUBEBUILDER_ASSETS"] = str(assets)
    return subprocess.run(
        [str(REPO / "scripts" / "test-deps"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_test_deps_check_lists_every_missing_component(tmp_path: Path) -> None:
    result = _test_deps("--check", cache=tmp_path)
    assert result.returncode == 1
    missing = result.stderr.split("missing or stale:")[1].split("(")[0].split()
    assert missing == [
        "etcd",
        "kubernetes",
        "kwok",
        "otelcol",
        "otelcol-next",
        "supervisor",
        "opamp-go",
        "node-agent",
        "helm",
        "kstatus",
        "kind",
        "argocd-lua",
    ]


def test_test_deps_check_compares_the_stamp_with_the_pin(tmp_path: Path) -> None:
    """Fresh means: the binary is there and its stamp says the current pin."""
    executable(tmp_path / "bin" / "kwok")
    (tmp_path / "stamps").mkdir()
    pin = _test_deps("--pins", "kwok", cache=tmp_path).stdout.split("\t")[1]
    versions = (REPO / "test-deps" / "versions.env").read_text()
    assert pin.startswith("kwok=v")
    assert f"KWOK_VERSION={pin.split()[0].removeprefix('kwok=')}\n" in versions
    (tmp_path / "stamps" / "kwok").write_text(pin)
    assert _test_deps("--check", "kwok", cache=tmp_path).returncode == 0
    (tmp_path / "stamps" / "kwok").write_text("kwok=v0.0.1 go0\n")
    assert _test_deps("--check", "kwok", cache=tmp_path).returncode == 1
    (tmp_path / "stamps" / "kwok").write_text(pin)
    (tmp_path / "bin" / "kwok").unlink()
    assert _test_deps("--check", "kwok", cache=tmp_path).returncode == 1


def test_the_second_collector_is_the_first_stamped_with_a_test_version(tmp_path: Path) -> None:
    """otelcol-opamp-next: the same manifest and modules as otelcol-opamp (so its pin
    changes with theirs), with a version no release has: OTELCOL_VERSION's patch + 1, a
    "next" pre-release."""
    out = _test_deps("--pins", "otelcol", "otelcol-next", cache=tmp_path).stdout
    pins = dict(line.split("\t") for line in out.splitlines())
    first, second = pins["otelcol"].split(), pins["otelcol-next"].split()
    assert second[0] == f"otelcol-next={binaries.pin('OTELCOL_NEXT_VERSION')}"
    assert second[1:] == ["from", first[0].removeprefix("otelcol="), *first[1:]]
    major, minor, patch = binaries.collector_version("otelcol-opamp").split(".")
    next_version = binaries.collector_version("otelcol-opamp-next")
    assert next_version == f"{major}.{minor}.{int(patch) + 1}-next"


def test_test_deps_rejects_unknown_components(tmp_path: Path) -> None:
    result = _test_deps("--check", "docker", cache=tmp_path)
    assert result.returncode == 1
    assert "unknown component 'docker'" in result.stderr


def test_console_script_reports_its_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "opamp_operator", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.startswith("opamp-operator ")


def test_envtest_assets_shrink_what_test_deps_builds(tmp_path: Path) -> None:
    """With setup-envtest's directory, etcd needs no build and Kubernetes only the
    controller-manager and scheduler, which envtest does not ship."""
    assets = tmp_path / "assets"
    for name in ("etcd", "kube-apiserver", "kubectl"):
        executable(assets / name)
    pins = _test_deps("--pins", "kubernetes", cache=tmp_path, assets=assets)
    assert pins.stdout.split("\t")[1].split()[2:] == ["kube-controller-manager", "kube-scheduler"]
    check = _test_deps("--check", "etcd", cache=tmp_path, assets=assets)
    assert check.returncode == 0, check.stderr
