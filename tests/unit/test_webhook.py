"""The admission webhook's checks and its self-signed certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from opamp_operator.k8s.webhook import WebhookOptions, fleet_problems
from opamp_operator.server.tls import self_signed

GOOD = """\
receivers: {otlp: {protocols: {grpc: {}}}}
exporters: {debug: {}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}
"""
SELECTOR = {"matchLabels": {"app": "otel"}}


def _no_config_maps(namespace: str, name: str, key: str) -> str | None:
    return None


def test_a_valid_inline_fleet_passes() -> None:
    spec = {"selector": SELECTOR, "config": {"inline": GOOD}}
    assert fleet_problems(spec, "obs", "f", _no_config_maps) is None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"selector": SELECTOR, "config": {"inline": GOOD.replace("[debug]", "[kafka]")}},
            'service.pipelines.traces.exporters[0]: references exporter "kafka"',
        ),
        ({"selector": SELECTOR, "config": {"inline": "a: [\n"}}, "not valid YAML"),
        ({"selector": SELECTOR, "config": {"inline": GOOD}, "driftPolicy": "Fix"}, "invalid spec"),
        (
            {
                "selector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                "config": {"inline": GOOD},
            },
            "invalid spec",
        ),
    ],
)
def test_broken_fleets_are_refused_with_the_reason(spec: dict[str, object], expected: str) -> None:
    problem = fleet_problems(spec, "obs", "f", _no_config_maps)
    assert problem is not None
    assert expected in problem


def test_config_map_sources_are_checked_when_the_config_map_exists() -> None:
    spec = {"selector": SELECTOR, "config": {"configMapRef": {"name": "cm"}}}
    assert fleet_problems(spec, "obs", "f", _no_config_maps) is None
    seen: list[tuple[str, str, str]] = []

    def broken(namespace: str, name: str, key: str) -> str | None:
        seen.append((namespace, name, key))
        return GOOD.replace("[otlp]", "[jaeger]")

    problem = fleet_problems(spec, "obs", "f", broken)
    assert seen == [("obs", "cm", "collector.yaml")]
    assert problem is not None
    assert problem.startswith("ConfigMap obs/cm key 'collector.yaml': ")
    assert "receivers[0]" in problem


def test_self_signed_certificate_verifies_for_its_hosts(tmp_path: Path) -> None:
    certfile, keyfile, ca_pem = self_signed(
        tmp_path, ["opamp-operator.ops.svc", "127.0.0.1"], "webhook"
    )
    cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["opamp-operator.ops.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert keyfile.stat().st_mode & 0o077 == 0
    # The pair loads as a server identity and the CA verifies it (what the apiserver does).
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert.verify_directly_issued_by(ca)


def test_the_configuration_name_must_be_a_domain() -> None:
    with pytest.raises(ValueError, match="must be a domain name"):
        WebhookOptions(port=9443, host="x", configuration="fleets")
    assert WebhookOptions(port=9443, host="x", configuration="fleets.example.io").configuration
