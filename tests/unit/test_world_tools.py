"""The test world's own tools, checked without starting anything: the PKI and binary
lookup. The test-deps script and the console script run in the tools tier
(tests/tools/test_test_deps.py)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samples import executable
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


def test_find_prefers_envtest_assets_for_envtest_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPAMP_OPERATOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path / "assets"))
    ours = executable(tmp_path / "cache" / "bin" / "kube-apiserver")
    assert binaries.find("kube-apiserver") == ours
    envtest = executable(tmp_path / "assets" / "kube-apiserver")
    assert binaries.find("kube-apiserver") == envtest
    # envtest has no scheduler; a file of that name there is not used.
    executable(tmp_path / "assets" / "kube-scheduler")
    sched = executable(tmp_path / "cache" / "bin" / "kube-scheduler")
    assert binaries.find("kube-scheduler") == sched


def test_missing_binary_is_an_error_that_says_how_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPAMP_OPERATOR_CACHE", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    with pytest.raises(binaries.MissingBinaryError, match=r"scripts/test-deps"):
        binaries.find("kwok")
