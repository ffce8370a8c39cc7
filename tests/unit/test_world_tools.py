"""The test world's own tools, checked without starting it: the PKI, binary lookup, the
test-deps script's bookkeeping, and the console script."""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from world import binaries
from world.pki import CertificateAuthority

REPO = binaries.REPO_ROOT


def test_issued_certificate_chains_to_the_ca_with_sans_and_usages() -> None:
    ca = CertificateAuthority()
    pair = ca.issue(
        "webhook", organizations=("system:masters",), hosts=("127.0.0.1", "svc.ns"), server=True
    )
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["svc.ns"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == ["system:masters"]


def test_key_files_are_private(tmp_path: Path) -> None:
    _, key = CertificateAuthority().issue("x", client=True).write(tmp_path, "x")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_find_prefers_envtest_assets_for_envtest_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPAMP_OPERATOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path / "assets"))
    ours = _executable(tmp_path / "cache" / "bin" / "kube-apiserver")
    assert binaries.find("kube-apiserver") == ours
    envtest = _executable(tmp_path / "assets" / "kube-apiserver")
    assert binaries.find("kube-apiserver") == envtest
    # envtest has no scheduler; a file of that name there is not used.
    _executable(tmp_path / "assets" / "kube-scheduler")
    sched = _executable(tmp_path / "cache" / "bin" / "kube-scheduler")
    assert binaries.find("kube-scheduler") == sched


def test_missing_binary_is_an_error_that_says_how_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPAMP_OPERATOR_CACHE", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    with pytest.raises(binaries.MissingBinaryError, match=r"scripts/test-deps"):
        binaries.find("kwok")


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
    _executable(tmp_path / "bin" / "kwok")
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


def test_test_deps_rejects_unknown_components(tmp_path: Path) -> None:
    result = _test_deps("--check", "docker", cache=tmp_path)
    assert result.returncode == 1
    assert "unknown component 'docker'" in result.stderr


def test_console_script_reports_its_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "opamp_operator.cli", "--version"],
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
        _executable(assets / name)
    pins = _test_deps("--pins", "kubernetes", cache=tmp_path, assets=assets)
    assert pins.stdout.split("\t")[1].split()[2:] == ["kube-controller-manager", "kube-scheduler"]
    check = _test_deps("--check", "etcd", cache=tmp_path, assets=assets)
    assert check.returncode == 0, check.stderr
