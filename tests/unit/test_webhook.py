"""The admission webhook's checks — who wrote the fleet, what it says — and its
self-signed certificate."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes.client.exceptions import ApiException

from opamp_operator.k8s import webhook
from opamp_operator.k8s.access import admission_user
from opamp_operator.k8s.webhook import (
    WebhookOptions,
    author_checks,
    author_refusal,
    check_author,
    fleet_problems,
)
from opamp_operator.server.api import Access, ResourceAccess, User
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


# --- Who wrote the fleet: the permissions its author must hold (author_checks) ---------

NS = "obs"
BASE = {"selector": SELECTOR, "config": {"inline": GOOD}}
SECRET_REF = {"authSecretRef": {"name": "agent-token", "key": "token"}}
TEMPLATE = {"template": {"kind": "Deployment", "image": "collector:1", "replicas": 1}}
WITH_ACCOUNT = {"template": {**TEMPLATE["template"], "serviceAccountName": "collector"}}

GET_SECRET = ResourceAccess("get", "", "secrets", NS, "agent-token")
CREATE_DEPLOYMENTS = ResourceAccess("create", "apps", "deployments", NS)
CREATE_DAEMONSETS = ResourceAccess("create", "apps", "daemonsets", NS)
GET_ACCOUNT = ResourceAccess("get", "", "serviceaccounts", NS, "collector")
GET_CONFIG_MAP = ResourceAccess("get", "", "configmaps", NS, "collector-config")


def _asked(spec: dict[str, Any], old: dict[str, Any] | None = None) -> list[ResourceAccess]:
    return [check.access for check in author_checks(NS, spec, old)]


def test_a_fleet_that_names_nothing_asks_nothing() -> None:
    assert _asked(BASE) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (SECRET_REF, [GET_SECRET]),
        (TEMPLATE, [CREATE_DEPLOYMENTS]),
        ({"template": {**TEMPLATE["template"], "kind": "DaemonSet"}}, [CREATE_DAEMONSETS]),
        (WITH_ACCOUNT, [CREATE_DEPLOYMENTS, GET_ACCOUNT]),
        ({**SECRET_REF, **WITH_ACCOUNT}, [GET_SECRET, CREATE_DEPLOYMENTS, GET_ACCOUNT]),
        ({"config": {"configMapRef": {"name": "collector-config"}}}, [GET_CONFIG_MAP]),
    ],
)
def test_create_asks_for_everything_the_spec_names(
    extra: dict[str, Any], expected: list[ResourceAccess]
) -> None:
    assert _asked({**BASE, **extra}) == expected


def test_a_template_without_a_kind_is_a_deployment() -> None:
    template = {"template": {"image": "collector:1"}}
    assert _asked({**BASE, **template}) == [CREATE_DEPLOYMENTS]


def test_an_update_that_changes_none_of_it_asks_nothing() -> None:
    """GitOps re-applies, `kubectl edit` of the config, kopf's own annotation patches."""
    old = {**BASE, **SECRET_REF, **WITH_ACCOUNT}
    assert _asked(old, old) == []
    new_config = {**old, "config": {"inline": GOOD.replace("debug: {}", "debug: {x: 1}")}}
    assert _asked(new_config, old) == []
    assert _asked({**new_config, "driftPolicy": "Remediate"}, old) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"authSecretRef": {"name": "other", "key": "token"}},
            [ResourceAccess("get", "", "secrets", NS, "other")],
        ),
        # Another key of the same Secret is other data: asked again.
        ({"authSecretRef": {"name": "agent-token", "key": "password"}}, [GET_SECRET]),
    ],
)
def test_an_update_that_changes_the_secret_reference_asks_for_it(
    change: dict[str, Any], expected: list[ResourceAccess]
) -> None:
    old = {**BASE, **SECRET_REF}
    assert _asked({**old, **change}, old) == expected


def test_adding_a_secret_reference_asks_for_it_and_removing_one_asks_nothing() -> None:
    assert _asked({**BASE, **SECRET_REF}, BASE) == [GET_SECRET]
    assert _asked(BASE, {**BASE, **SECRET_REF}) == []


@pytest.mark.parametrize(
    "change",
    [
        {"image": "attacker/collector:1"},
        {"serviceAccountName": "collector"},
        {"kind": "DaemonSet"},
        {"replicas": 3},
        {"supervisorConfig": {"server": {"endpoint": "wss://elsewhere.example/v1/opamp"}}},
    ],
)
def test_an_update_that_changes_the_template_asks_for_the_workload(
    change: dict[str, Any],
) -> None:
    old = {**BASE, **TEMPLATE}
    new = {**BASE, "template": {**TEMPLATE["template"], **change}}
    asked = _asked(new, old)
    assert asked[0] in {CREATE_DEPLOYMENTS, CREATE_DAEMONSETS}
    assert (GET_ACCOUNT in asked) == ("serviceAccountName" in change)


def test_in_template_mode_what_the_pods_are_rendered_from_is_the_template() -> None:
    """The selector gives the pods their labels, authSecretRef their env: changing either
    changes the workload the operator writes."""
    old = {**BASE, **WITH_ACCOUNT}
    relabelled = {**old, "selector": {"matchLabels": {"app": "payments"}}}
    assert _asked(relabelled, old) == [CREATE_DEPLOYMENTS, GET_ACCOUNT]
    with_secret = {**old, **SECRET_REF}
    assert _asked(with_secret, old) == [GET_SECRET, CREATE_DEPLOYMENTS, GET_ACCOUNT]
    # Without a template the selector names no workload.
    assert _asked({**BASE, "selector": {"matchLabels": {"app": "payments"}}}, BASE) == []


def test_removing_the_template_asks_nothing() -> None:
    assert _asked(BASE, {**BASE, **WITH_ACCOUNT}) == []


def test_an_update_without_the_old_object_is_asked_as_a_create() -> None:
    spec = {**BASE, **SECRET_REF}
    assert _asked(spec, None) == _asked(spec) == [GET_SECRET]


# --- The answer the apiserver passes on (author_refusal, check_author) -----------------

ALICE = "system:serviceaccount:obs:alice"


def test_every_missing_permission_is_named_with_why() -> None:
    checks = author_checks(NS, {**BASE, **SECRET_REF, **WITH_ACCOUNT})
    refusal = author_refusal(ALICE, checks, [False, True, False])
    assert refusal is not None
    message, code = refusal
    assert code == 403
    assert message == (
        f"{ALICE} cannot get secrets agent-token in namespace obs: spec.authSecretRef names "
        f"a Secret you may not read; {ALICE} cannot get serviceaccounts collector in "
        "namespace obs: spec.template.serviceAccountName names a ServiceAccount you may not get"
    )
    assert author_refusal(ALICE, checks, [True, True, True]) is None
    assert author_refusal(ALICE, [], []) is None


def test_the_workload_refusal_names_the_kind() -> None:
    (check,) = author_checks(NS, {**BASE, "template": {"kind": "DaemonSet", "image": "c"}})
    refusal = author_refusal(ALICE, [check], [False])
    assert refusal == (
        f"{ALICE} cannot create daemonsets.apps in namespace obs: spec.template has the "
        "operator create a DaemonSet for you",
        403,
    )


def test_a_review_that_failed_refuses() -> None:
    """Fail closed: the reconciler cannot ask later, it never learns who wrote the fleet."""
    checks = author_checks(NS, {**BASE, **SECRET_REF, **TEMPLATE})
    refusal = author_refusal(ALICE, checks, [True, OSError("connection refused")])
    assert refusal is not None
    message, code = refusal
    assert code == 503
    assert message.startswith(
        f"could not check that {ALICE} may create deployments.apps in namespace obs "
        "(OSError: connection refused)"
    )
    assert "refused until it can be checked" in message
    # The apiserver's refusal to review, in one line (not the exception's headers and body).
    forbidden = ApiException(status=403, reason="Forbidden")
    refusal = author_refusal(ALICE, checks, [forbidden, True])
    assert refusal is not None
    assert refusal[0] == (
        f"could not check that {ALICE} may get secrets agent-token in namespace obs "
        "(the apiserver answered 403 Forbidden); refused until it can be checked, try again"
    )
    # A permission known to be missing is the better answer.
    refusal = author_refusal(ALICE, checks, [False, OSError("connection refused")])
    assert refusal is not None
    assert refusal[1] == 403


async def test_reviews_that_do_not_answer_in_time_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "AUTHOR_CHECK_TIMEOUT", 0.05)
    checks = author_checks(NS, {**BASE, **SECRET_REF})

    async def hangs(user: User, access: Access) -> bool:
        await asyncio.sleep(10)
        return True

    refusal = await check_author(hangs, User(ALICE), checks)
    assert refusal is not None
    assert refusal[1] == 503
    assert "no answer within 0.05 s" in refusal[0]


async def test_the_reviews_are_asked_for_the_author_all_at_once() -> None:
    asked: list[tuple[User, Access]] = []
    author = admission_user(
        {
            "username": ALICE,
            "uid": "u-1",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]},
        }
    )

    async def review(user: User, access: Access) -> bool:
        asked.append((user, access))
        await asyncio.sleep(0)
        return access != GET_ACCOUNT

    checks = author_checks(NS, {**BASE, **WITH_ACCOUNT})
    refusal = await check_author(review, author, checks)
    assert refusal is not None
    assert "cannot get serviceaccounts collector" in refusal[0]
    assert [a for _, a in asked] == [CREATE_DEPLOYMENTS, GET_ACCOUNT]
    assert {u for u, _ in asked} == {
        User(
            ALICE,
            "u-1",
            ("system:serviceaccounts", "system:authenticated"),
            (("authentication.kubernetes.io/credential-id", ("JTI=1",)),),
        )
    }
    assert await check_author(review, author, []) is None
