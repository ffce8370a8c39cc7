"""The Helm chart rendered with `helm lint` and `helm template`: what each value set
produces (objects, RBAC rules per mode — the namespaced default watching the release
namespace, listed namespaces, cluster-wide only when asked for — operator args, security
context, probes, the webhook's certificate, the API Service and ServiceMonitor, the
NetworkPolicy, TLS for agents from cert-manager or a Secret), that values.schema.json
refuses bad values, and that the chart's CRDs are the generated ones in deploy/crds/."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from kopf._cogs.structs.references import Resource
from kopf._core.engines.admission import build_webhooks

from opamp_operator.api.models import GROUP, VERSION
from opamp_operator.cli import LIMIT_FLAGS, build_parser, run_options
from opamp_operator.k8s.handlers import register
from opamp_operator.k8s.settings import HandlerSettings
from opamp_operator.k8s.state import OperatorState
from opamp_operator.opamp.session import CoreSettings, ServerCore
from opamp_operator.server.api import ApiListen
from opamp_operator.server.app import Limits, OpAMPServer
from opamp_operator.server.tls import ClientAuth, ReloadingTLS, TLSFiles
from world import binaries
from world.chart import CHART, helm_environment, run_helm
from world.pki import CertificateAuthority

pytestmark = pytest.mark.world

KIND_VALUES = binaries.REPO_ROOT / "deploy" / "kind" / "values.yaml"
KIND_CONFIG = binaries.REPO_ROOT / "kind-config.yaml"
CRDS = binaries.REPO_ROOT / "deploy" / "crds"
RELEASE, NS = "rel", "obs"
FULL = f"{RELEASE}-opamp-operator"
TMP = "/tmp"  # noqa: S108 - the pod's writable mount, not a file used here
Rule = tuple[str, str, str, tuple[str, ...]]  # group, resource, verb, resourceNames

# The rules every watched namespace needs (docs/helm.md says why, one by one).
NAMESPACED_RULES: set[Rule] = {
    *(("opampoperator.io", "collectorfleets", v, ()) for v in ("get", "list", "watch", "patch")),
    *(("opampoperator.io", "configrollouts", v, ()) for v in ("list", "watch", "patch")),
    ("opampoperator.io", "collectorfleets/status", "patch", ()),
    ("opampoperator.io", "configrollouts/status", "patch", ()),
    ("opampoperator.io", "collectorfleets/finalizers", "update", ()),
    ("", "pods", "list", ()),
    ("", "pods", "watch", ()),
    ("", "pods/status", "patch", ()),
    *(("", "configmaps", v, ()) for v in ("get", "list", "watch")),
    ("", "secrets", "get", ()),
    ("", "events", "create", ()),
    *(("apps", "controllerrevisions", v, ()) for v in ("get", "list", "create", "delete")),
}
TEMPLATE_RULES: set[Rule] = {
    *(("", "configmaps", v, ()) for v in ("create", "patch", "delete")),
    *(
        ("apps", r, v, ())
        for r in ("deployments", "daemonsets")
        for v in ("get", "create", "patch", "delete")
    ),
    ("", "pods", "delete", ()),  # a staged template rollout replaces chosen pods
}
KOPF_CLUSTER_RULES: set[Rule] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list", ()),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch", ()),
}
NAMESPACE_RULES: set[Rule] = {("", "namespaces", "list", ()), ("", "namespaces", "watch", ())}
# The API listener's reviews: who a token is, what its user may read (cluster-scoped).
AUTH_RULES: set[Rule] = {
    ("authentication.k8s.io", "tokenreviews", "create", ()),
    ("authorization.k8s.io", "subjectaccessreviews", "create", ()),
}
TLS_DIR = "/opamp-tls"
API_PORT = ApiListen().port


def _peering_rules(plural: str) -> set[Rule]:
    return {("kopf.dev", plural, v, ()) for v in ("get", "list", "watch", "create", "patch")}


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return helm_environment(tmp_path_factory.mktemp("helm"))


class Rendered:
    """The objects `helm template` made from one value set, looked up by kind and name."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
        return found[0]

    def container(self) -> dict[str, Any]:
        spec = self.one("Deployment")["spec"]["template"]["spec"]
        containers: list[dict[str, Any]] = spec["containers"]
        assert len(containers) == 1
        return containers[0]

    def args(self) -> list[str]:
        args: list[str] = self.container()["args"]
        return args

    def bound(self, kind: str) -> set[tuple[str, str]]:
        """(namespace, name) of the `kind`s a binding gives the operator's ServiceAccount
        (namespace "" for a ClusterRole)."""
        binding_kind = "ClusterRoleBinding" if kind == "ClusterRole" else "RoleBinding"
        sa = {"kind": "ServiceAccount", "name": FULL, "namespace": NS}
        return {
            (b["metadata"].get("namespace", "") if kind == "Role" else "", b["roleRef"]["name"])
            for b in self.all(binding_kind)
            if b["roleRef"]["kind"] == kind and sa in b["subjects"]
        }

    def rules(self, kind: str, namespace: str | None = None) -> set[Rule]:
        """The resource rules of the (Cluster)Roles bound to the operator."""
        found: set[Rule] = set()
        bound = self.bound(kind)
        for role in self.all(kind):
            meta = role["metadata"]
            if (meta.get("namespace", "") if kind == "Role" else "", meta["name"]) not in bound:
                continue
            if namespace is not None and meta.get("namespace") != namespace:
                continue
            found |= role_rules(role)
        return found

    def watched(self) -> list[str]:
        """The namespaces the rendered args watch (`--namespace`); empty: every one."""
        args = self.args()
        return [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]


def role_rules(role: dict[str, Any]) -> set[Rule]:
    """The resource rules of one (Cluster)Role, bound or not."""
    found: set[Rule] = set()
    for rule in role["rules"]:
        names = tuple(rule.get("resourceNames", ()))
        for group in rule.get("apiGroups", ()):
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    found.add((group, resource, verb, names))
    return found


def _unnamed(rules: set[Rule]) -> set[Rule]:
    """The rules without their resourceNames, to compare grants whatever the names."""
    return {(group, resource, verb, ()) for group, resource, verb, _ in rules}


Render = Callable[..., Rendered]


@pytest.fixture(scope="module")
def render(helm_env: dict[str, str]) -> Render:
    def run(*sets: str) -> Rendered:
        done = run_helm(
            helm_env,
            "template",
            RELEASE,
            str(CHART),
            f"--namespace={NS}",
            *(f"--set={s}" for s in sets),
        )
        assert done.returncode == 0, done.stderr
        return Rendered([o for o in yaml.safe_load_all(done.stdout) if o])

    return run


VALUE_SETS = {
    "defaults": (),
    "plaintext": ("opamp.tls.enabled=false",),
    "opamp-tls-cert-manager": (
        "opamp.tls.enabled=true",
        "opamp.tls.certManager.enabled=true",
        "opamp.tls.clientAuth=require",
    ),
    "opamp-tls-existing-secret": ("opamp.tls.enabled=true", "opamp.tls.existingSecret=agents-tls"),
    "network-policy-narrowed": (
        "networkPolicy.agentsFrom[0].namespaceSelector.matchLabels.agents=yes",
        "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=monitoring",
        "networkPolicy.apiFrom[1].ipBlock.cidr=10.0.0.0/8",
    ),
    "namespaced": ("watchNamespaces[0]=team-a", "watchNamespaces[1]=team-b"),
    "clusterwide": ("clusterWide=true",),
    "clusterwide-replicas-2": ("clusterWide=true", "replicas=2"),
    "replicas-2": ("replicas=2", "podDisruptionBudget.enabled=true"),
    "webhook-self-signed": ("webhook.enabled=true",),
    "webhook-cert-manager": ("webhook.certManager.enabled=true",),
    "service-monitor": ("metrics.serviceMonitor.enabled=true",),
    "no-webhook-no-templates": ("webhook.enabled=false", "templateMode.enabled=false"),
}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict_passes_for_every_value_set(helm_env: dict[str, str], name: str) -> None:
    sets = [f"--set={s}" for s in VALUE_SETS[name]]
    for strict in ((), ("--strict",)):
        done = run_helm(helm_env, "lint", str(CHART), *strict, *sets)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
        assert "[WARNING]" not in done.stdout
        assert "[ERROR]" not in done.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_rendered_args_are_accepted_by_the_operator_cli(render: Render, name: str) -> None:
    rendered = render(*VALUE_SETS[name])
    args = rendered.args()
    parsed = build_parser().parse_args(args)
    assert parsed.command == "run"
    assert parsed.port == 4320
    options = run_options(parsed)
    assert (options.api.host, options.api.port) == ("0.0.0.0", API_PORT)  # noqa: S104
    tls = "opamp.tls.enabled=false" not in VALUE_SETS[name]
    scheme = "wss" if tls else "ws"
    assert parsed.agent_endpoint == f"{scheme}://{FULL}.{NS}.svc:4320/v1/opamp"
    assert options.listen.tls.enabled is tls
    options.listen.tls.check()  # what the operator refuses at start
    options.api.tls.check()
    # The namespaced default watches the release namespace; cluster-wide only when asked.
    watched = {"namespaced": ("team-a", "team-b"), "clusterwide": (), "clusterwide-replicas-2": ()}
    assert options.namespaces == watched.get(name, (NS,))


def test_defaults_are_one_replica_watching_its_namespace_with_a_hardened_pod(
    render: Render,
) -> None:
    r = render()
    assert r.kinds() == sorted(
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Secret",
            "Secret",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "ValidatingWebhookConfiguration",
        ]
    )
    deployment = r.one("Deployment", FULL)
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FULL
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = r.container()
    assert c["image"] == "ghcr.io/opamp-operator/opamp-operator:0.1.0.dev0"
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for probe, path in (
        ("liveness", "/healthz"),
        ("readiness", "/readyz"),
        ("startup", "/healthz"),
    ):
        assert c[f"{probe}Probe"]["httpGet"] == {"path": path, "port": "api", "scheme": "HTTPS"}
    assert {"name": "opamp", "containerPort": 4320, "protocol": "TCP"} in c["ports"]
    assert {"name": "api", "containerPort": API_PORT, "protocol": "TCP"} in c["ports"]
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[TMP]] == {"name": "tmp", "emptyDir": {}}
    assert volumes[mounts["/certs"]]["secret"]["secretName"] == f"{FULL}-webhook-tls"

    assert c["command"] == ["opamp-operator"]
    args = r.args()
    assert args[:4] == ["--log-level=INFO", "run", "--port", "4320"]
    assert args[args.index("--api-host") + 1] == "0.0.0.0"  # noqa: S104
    assert args[args.index("--api-port") + 1] == str(API_PORT)
    # TLS for agents, Helm's certificate (test_tls_for_agents_from_helms_own_ca).
    assert args[args.index("--tls-cert-file") + 1] == f"{TLS_DIR}/tls.crt"
    assert args[args.index("--agent-ca-file") + 1] == f"{TLS_DIR}/ca.crt"
    assert not [a for a in args if a.startswith("--client")]
    assert r.watched() == [NS]  # the release namespace only
    assert "--peering" not in args
    assert args[args.index("--webhook-port") + 1] == "9443"
    assert args[args.index("--webhook-host") + 1] == f"{FULL}-webhook.{NS}.svc"
    assert args[args.index("--webhook-cert-dir") + 1] == "/certs"
    assert "--webhook-configuration" not in args

    # Least privilege (issue 13): the namespaced rules in a Role in the release namespace
    # and nowhere else; no ClusterRole, bound or not, holds any of them.
    assert [role["metadata"]["namespace"] for role in r.all("Role")] == [NS]
    assert r.rules("Role", NS) == NAMESPACED_RULES | TEMPLATE_RULES
    assert sorted(b["metadata"]["namespace"] for b in r.all("RoleBinding")) == sorted(
        ["kube-system", NS]
    )
    for role in r.all("ClusterRole"):
        assert not _unnamed(role_rules(role)) & (NAMESPACED_RULES | TEMPLATE_RULES), role
    assert r.rules("ClusterRole") == KOPF_CLUSTER_RULES | NAMESPACE_RULES | AUTH_RULES
    binding = r.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == f"{FULL}-cluster"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULL, "namespace": NS}]
    [hook] = r.one("ValidatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [NS]}
    ]

    opamp = r.one("Service", FULL)
    assert opamp["spec"]["ports"][0] | {} == {
        "name": "opamp",
        "port": 4320,
        "targetPort": "opamp",
        "protocol": "TCP",
        "appProtocol": "https",
    }
    assert len(opamp["spec"]["ports"]) == 1  # OpAMP only: the API has its own Service
    api = r.one("Service", f"{FULL}-api")
    assert api["spec"]["type"] == "ClusterIP"
    assert api["spec"]["ports"] == [
        {
            "name": "api",
            "port": API_PORT,
            "targetPort": "api",
            "protocol": "TCP",
            "appProtocol": "https",
        }
    ]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for service in (opamp, api):
        assert service["spec"]["selector"].items() <= labels.items()
    assert not r.all("PodDisruptionBudget")
    assert not r.all("ServiceMonitor")


def test_a_namespaced_install_gets_a_role_per_watched_namespace(render: Render) -> None:
    r = render(*VALUE_SETS["namespaced"])
    assert r.watched() == ["team-a", "team-b"]  # and not the release namespace
    assert sorted(role["metadata"]["namespace"] for role in r.all("Role")) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in r.all("RoleBinding")) == [
        "kube-system",
        "team-a",
        "team-b",
    ]
    for ns in ("team-a", "team-b"):
        assert r.rules("Role", ns) == NAMESPACED_RULES | TEMPLATE_RULES
        binding = next(b for b in r.all("RoleBinding") if b["metadata"]["namespace"] == ns)
        assert binding["roleRef"]["name"] == FULL
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULL, "namespace": NS}]
        assert binding["roleRef"]["kind"] == "Role"
    # Cluster-wide, only what kopf reads to discover its resources and the namespaces, and
    # the API's reviews (cluster-scoped: a ClusterRole even here, as kube-rbac-proxy's).
    assert r.rules("ClusterRole") == KOPF_CLUSTER_RULES | NAMESPACE_RULES | AUTH_RULES
    hook = r.one("ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]


def test_clusterwide_is_asked_for_and_grants_the_namespaced_rules_everywhere(
    render: Render,
) -> None:
    r = render(*VALUE_SETS["clusterwide"])
    assert r.watched() == []
    assert r.rules("ClusterRole") == (
        NAMESPACED_RULES | TEMPLATE_RULES | KOPF_CLUSTER_RULES | AUTH_RULES
    )
    assert not r.all("Role")
    assert [b["metadata"]["namespace"] for b in r.all("RoleBinding")] == ["kube-system"]
    binding = r.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == f"{FULL}-cluster"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULL, "namespace": NS}]
    [hook] = r.one("ValidatingWebhookConfiguration")["webhooks"]
    assert "namespaceSelector" not in hook
    # Everything else is the default's.
    default = render()
    assert [o["kind"] for o in r.objects if "Role" not in o["kind"]] == [
        o["kind"] for o in default.objects if "Role" not in o["kind"]
    ]


@pytest.mark.parametrize("extra", [(), ("rbac.create=false", "webhook.enabled=false")])
def test_clusterwide_with_watch_namespaces_is_refused(
    helm_env: dict[str, str], extra: tuple[str, ...]
) -> None:
    """Both at once cannot mean anything: refused with what to change, whichever
    templates render (the helper deciding the namespaces is what refuses)."""
    sets = ("clusterWide=true", "watchNamespaces[0]=team-a", *extra)
    done = run_helm(helm_env, "template", RELEASE, str(CHART), *(f"--set={s}" for s in sets))
    assert done.returncode != 0
    assert "clusterWide=true watches every namespace, so watchNamespaces must be empty" in (
        done.stderr
    ), done.stderr
    assert '["team-a"]' in done.stderr


def test_one_helper_decides_the_watched_namespaces(render: Render) -> None:
    """`clusterWide` and `watchNamespaces` are read in one place, the helper every
    template asks, so the args, the Roles, the ClusterRole, the peering rules, the webhook
    and NOTES.txt cannot disagree about the mode."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    start = helpers.index('{{- define "opamp-operator.watchedNamespaces" -}}')
    end = helpers.index("{{- end }}\n\n", start)
    inside = helpers[start:end]
    outside = helpers[:start] + helpers[end:]
    for value in (".Values.clusterWide", ".Values.watchNamespaces"):
        assert value in inside
        assert value not in outside
        for path in (CHART / "templates").iterdir():
            if path.name != "_helpers.tpl":
                assert value not in path.read_text(), path.name
    users = {
        p.name
        for p in (CHART / "templates").iterdir()
        if 'include "opamp-operator.watchedNamespaces"' in p.read_text()
    }
    assert {"deployment.yaml", "rbac.yaml", "webhook.yaml", "NOTES.txt"} <= users
    # And the modes agree with each other in every rendered variant.
    for sets in ((), VALUE_SETS["namespaced"], VALUE_SETS["clusterwide"], ("replicas=2",)):
        r = render(*sets)
        watched = r.watched()
        roles = sorted(role["metadata"]["namespace"] for role in r.all("Role"))
        assert roles == sorted(watched), sets
        [hook] = r.one("ValidatingWebhookConfiguration")["webhooks"]
        selector = hook.get("namespaceSelector", {}).get("matchExpressions", [{}])[0]
        assert selector.get("values", []) == watched, sets
        cluster = r.rules("ClusterRole")
        assert bool(cluster & NAMESPACED_RULES) is (not watched), sets
        assert bool(cluster & NAMESPACE_RULES) is bool(watched), sets


def test_two_replicas_run_active_standby_with_kopf_peering(render: Render) -> None:
    r = render(*VALUE_SETS["replicas-2"])
    assert r.one("Deployment")["spec"]["replicas"] == 2
    # A new pod comes up as a standby before an old one leaves (issue 14).
    assert r.one("Deployment")["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    # One replica has no peering: the old pod stops before the new one starts.
    assert render().one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    args = r.args()
    assert args[args.index("--peering") + 1] == RELEASE
    # The namespaced default: a KopfPeering in the release namespace, nothing cluster-wide.
    assert r.rules("Role", NS) >= _peering_rules("kopfpeerings")
    assert not r.rules("ClusterRole") & _peering_rules("clusterkopfpeerings")
    wide = render(*VALUE_SETS["clusterwide-replicas-2"])
    assert wide.rules("ClusterRole") >= _peering_rules("clusterkopfpeerings")
    assert not wide.rules("ClusterRole") & _peering_rules("kopfpeerings")
    pdb = r.one("PodDisruptionBudget", FULL)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        r.one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )

    scoped = render("replicas=2", "watchNamespaces[0]=team-a")
    assert scoped.rules("Role", "team-a") >= _peering_rules("kopfpeerings")
    assert not scoped.rules("ClusterRole") & _peering_rules("clusterkopfpeerings")

    single = render("podDisruptionBudget.enabled=true")
    assert "--peering" not in single.args()
    assert not single.all("PodDisruptionBudget")
    assert not single.rules("Role") & _peering_rules("kopfpeerings")
    single_wide = render("clusterWide=true")
    assert not single_wide.rules("ClusterRole") & _peering_rules("clusterkopfpeerings")


def _verify(issuer: x509.Certificate, cert: x509.Certificate) -> None:
    """Raises unless `issuer` signed `cert`."""
    key = issuer.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            cert.signature_hash_algorithm,
        )
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )


def test_the_webhook_has_a_self_signed_certificate_for_its_service(render: Render) -> None:
    r = render(*VALUE_SETS["webhook-self-signed"])
    secret = r.one("Secret", f"{FULL}-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert base64.b64decode(secret["data"]["tls.key"]).startswith(b"-----BEGIN")
    _verify(ca, cert)
    host = f"{FULL}-webhook.{NS}.svc"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert host in sans.get_values_for_type(x509.DNSName)

    hook_config = r.one("ValidatingWebhookConfiguration", FULL)
    assert "annotations" not in hook_config["metadata"]
    [hook] = hook_config["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert hook["clientConfig"]["service"] == {
        "name": f"{FULL}-webhook",
        "namespace": NS,
        "port": 443,
        "path": "/validate",
    }
    assert hook["rules"] == [
        {
            "apiGroups": ["opampoperator.io"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["collectorfleets"],
            "scope": "Namespaced",
        }
    ]
    service = r.one("Service", f"{FULL}-webhook")
    assert service["spec"]["ports"][0]["port"] == 443
    target = service["spec"]["ports"][0]["targetPort"]
    assert {"name": target, "containerPort": 9443, "protocol": "TCP"} in r.container()["ports"]
    # The operator never manages the configuration the chart owns: no admission RBAC.
    for kind in ("ClusterRole", "Role"):
        assert not {rule[0] for rule in r.rules(kind)} & {"admissionregistration.k8s.io"}


def test_the_webhook_certificate_can_come_from_cert_manager(render: Render) -> None:
    r = render(*VALUE_SETS["webhook-cert-manager"])
    assert [s["metadata"]["name"] for s in r.all("Secret")] == [f"{FULL}-opamp-tls"]
    certificate = r.one("Certificate", f"{FULL}-webhook")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["secretName"] == f"{FULL}-webhook-tls"
    assert f"{FULL}-webhook.{NS}.svc" in certificate["spec"]["dnsNames"]
    issuer = r.one("Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
    }
    hook_config = r.one("ValidatingWebhookConfiguration")
    assert hook_config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NS}/{FULL}-webhook"
    }
    assert "caBundle" not in hook_config["webhooks"][0]["clientConfig"]

    own = render(
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not own.all("Issuer")
    assert own.one("Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
    }


def test_the_service_monitor_scrapes_the_api_service_over_https_with_a_token(
    render: Render,
) -> None:
    r = render(*VALUE_SETS["service-monitor"], "metrics.serviceMonitor.labels.team=obs")
    monitor = r.one("ServiceMonitor", FULL)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["team"] == "obs"
    api = r.one("Service", f"{FULL}-api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= api["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= (
        r.one("Service", FULL)["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {
        "port": "api",
        "path": "/metrics",
        "scheme": "https",
        # Prometheus's own ServiceAccount token, as kube-rbac-proxy users scrape.
        "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "tlsConfig": {"insecureSkipVerify": True},
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
    assert endpoint["port"] in [p["name"] for p in api["spec"]["ports"]]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NS]}

    verified = render(
        *VALUE_SETS["service-monitor"],
        f"metrics.serviceMonitor.tlsConfig.ca.secret.name={FULL}-opamp-tls",
        "metrics.serviceMonitor.tlsConfig.ca.secret.key=ca\\.crt",
        f"metrics.serviceMonitor.tlsConfig.serverName={FULL}-api.{NS}.svc",
    )
    assert verified.one("ServiceMonitor")["spec"]["endpoints"][0]["tlsConfig"] == {
        "ca": {"secret": {"name": f"{FULL}-opamp-tls", "key": "ca.crt"}},
        "serverName": f"{FULL}-api.{NS}.svc",
    }


def test_the_metrics_reader_role_grants_get_on_metrics_and_is_bound_to_nobody(
    render: Render,
) -> None:
    for sets in ((), VALUE_SETS["namespaced"], VALUE_SETS["clusterwide"]):
        r = render(*sets)
        reader = r.one("ClusterRole", f"{FULL}-metrics-reader")
        assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
        assert not [
            b
            for b in r.all("ClusterRoleBinding")
            if b["roleRef"]["name"] == f"{FULL}-metrics-reader"
        ]
    assert not render("rbac.create=false").all("ClusterRole")


@pytest.mark.parametrize("name", ["defaults", "namespaced", "clusterwide"])
def test_the_operator_may_review_tokens_and_access_and_read_the_client_ca(
    render: Render, name: str
) -> None:
    """What the API listener asks Kubernetes: TokenReview and SubjectAccessReview
    (cluster-scoped, in both modes), and the cluster's client CA in kube-system through
    the built-in Role aggregated API servers are bound to."""
    r = render(*VALUE_SETS[name])
    assert r.rules("ClusterRole") >= AUTH_RULES
    assert all(
        rule[0] not in {"authentication.k8s.io", "authorization.k8s.io"}
        for rule in (r.rules("Role"))
    )
    [reader] = [b for b in r.all("RoleBinding") if b["metadata"]["namespace"] == "kube-system"]
    assert reader["metadata"]["name"] == f"{FULL}-auth-reader"
    assert reader["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "extension-apiserver-authentication-reader",
    }
    assert reader["subjects"] == [{"kind": "ServiceAccount", "name": FULL, "namespace": NS}]
    # The chart makes no Role in kube-system: the bound one is the apiserver's own.
    assert not [o for o in r.all("Role") if o["metadata"]["namespace"] == "kube-system"]


def test_the_api_has_its_own_port_service_and_audiences(render: Render) -> None:
    r = render(
        "api.port=9090",
        "api.tokenAudiences[0]=opamp-operator",
        "api.service.annotations.team=obs",
        "service.type=NodePort",
        "service.nodePort=30320",
    )
    c = r.container()
    args = r.args()
    assert args[args.index("--api-port") + 1] == "9090"
    options = run_options(build_parser().parse_args(args))
    assert options.api.port == 9090
    assert options.access.audiences == ("opamp-operator",)
    assert {"name": "api", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    api = r.one("Service", f"{FULL}-api")
    assert api["metadata"]["annotations"] == {"team": "obs"}
    # The agents' Service may be a NodePort; the API's never is.
    assert r.one("Service", FULL)["spec"]["type"] == "NodePort"
    assert api["spec"]["type"] == "ClusterIP"
    assert [(p["port"], p["targetPort"], p.get("nodePort")) for p in api["spec"]["ports"]] == [
        (9090, "api", None)
    ]
    ingress = r.one("NetworkPolicy")["spec"]["ingress"]
    assert [rule["ports"][0]["port"] for rule in ingress] == [4320, 9090, 9443]

    off = render("api.service.enabled=false")
    assert [s["metadata"]["name"] for s in off.all("Service")] == [FULL, f"{FULL}-webhook"]
    assert off.args()[off.args().index("--api-port") + 1] == str(API_PORT)


def test_without_webhook_and_template_mode_the_grants_shrink(render: Render) -> None:
    r = render(*VALUE_SETS["no-webhook-no-templates"])
    assert not r.all("ValidatingWebhookConfiguration")
    assert [s["metadata"]["name"] for s in r.all("Secret")] == [f"{FULL}-opamp-tls"]
    assert not any(a.startswith("--webhook") for a in r.args())
    assert "volumeMounts" in r.container()
    assert [m["mountPath"] for m in r.container()["volumeMounts"]] == [TMP, TLS_DIR]
    assert r.rules("Role", NS) == NAMESPACED_RULES
    assert r.rules("ClusterRole") == KOPF_CLUSTER_RULES | NAMESPACE_RULES | AUTH_RULES
    wide = render(*VALUE_SETS["no-webhook-no-templates"], "clusterWide=true")
    assert wide.rules("ClusterRole") == NAMESPACED_RULES | KOPF_CLUSTER_RULES | AUTH_RULES


@pytest.mark.parametrize(("mode", "kind"), [((), "Role"), (("clusterWide=true",), "ClusterRole")])
def test_token_secrets_can_be_limited_by_name(
    render: Render, mode: tuple[str, ...], kind: str
) -> None:
    r = render("tokenSecrets.resourceNames[0]=agent-token", *mode)
    secrets = {rule for rule in r.rules("ClusterRole") | r.rules("Role") if rule[1] == "secrets"}
    assert secrets == {("", "secrets", "get", ("agent-token",))}
    assert secrets <= r.rules(kind)


def test_pod_placement_and_annotations_come_from_values(render: Render) -> None:
    r = render(
        "podAnnotations.team=obs",
        "nodeSelector.disk=ssd",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "resources.limits.memory=1Gi",
        "image.tag=1.2.3",
        "image.pullPolicy=Always",
    )
    template = r.one("Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"] == {"team": "obs"}
    assert template["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert template["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert r.container()["resources"]["limits"] == {"memory": "1Gi"}
    assert r.container()["image"].endswith(":1.2.3")
    assert r.container()["imagePullPolicy"] == "Always"


def test_the_network_policy_admits_the_three_ports_and_leaves_egress_open(
    render: Render,
) -> None:
    r = render()
    policy = r.one("NetworkPolicy", FULL)
    spec = policy["spec"]
    pod_labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Ingress"]  # egress (the apiserver) unrestricted
    assert "egress" not in spec
    ports = {p["name"]: p["containerPort"] for p in r.container()["ports"]}
    # No `from`: any source, for agents anywhere, the authenticated API, the apiserver.
    assert spec["ingress"] == [
        {"ports": [{"port": ports["opamp"], "protocol": "TCP"}]},
        {"ports": [{"port": ports["api"], "protocol": "TCP"}]},
        {"ports": [{"port": ports["webhook"], "protocol": "TCP"}]},
    ]
    assert sorted(ports.values()) == [4320, API_PORT, 9443]

    narrowed = render(*VALUE_SETS["network-policy-narrowed"]).one("NetworkPolicy")["spec"]
    agents, api, webhook = narrowed["ingress"]
    assert agents["from"] == [{"namespaceSelector": {"matchLabels": {"agents": "yes"}}}]
    assert api["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}},
        {"ipBlock": {"cidr": "10.0.0.0/8"}},
    ]
    assert "from" not in webhook  # the apiserver is not a pod

    no_hook = render("webhook.enabled=false").one("NetworkPolicy")["spec"]["ingress"]
    assert [rule["ports"][0]["port"] for rule in no_hook] == [4320, API_PORT]
    assert not render("networkPolicy.enabled=false").all("NetworkPolicy")


def _tls_mount(r: Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    """The opamp-tls volume mount and its volume."""
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    [mount] = [m for m in r.container()["volumeMounts"] if m["mountPath"] == TLS_DIR]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_tls_for_agents_from_cert_manager_with_the_charts_own_ca(render: Render) -> None:
    r = render(
        *VALUE_SETS["opamp-tls-cert-manager"],
        "opamp.tls.dnsNames[0]=x.io",
        "opamp.tls.ipAddresses[0]=10.1.2.3",
    )
    # A self-signed Issuer signs a CA; a CA Issuer signs the agents' port certificate.
    selfsigned = r.one("Issuer", f"{FULL}-selfsigned")
    assert selfsigned["spec"] == {"selfSigned": {}}
    ca = r.one("Certificate", f"{FULL}-opamp-ca")
    assert ca["spec"]["isCA"] is True
    assert ca["spec"]["issuerRef"] == {"name": f"{FULL}-selfsigned", "kind": "Issuer"}
    ca_issuer = r.one("Issuer", f"{FULL}-opamp-ca")
    assert ca_issuer["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    cert = r.one("Certificate", f"{FULL}-opamp")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["secretName"] == f"{FULL}-opamp-tls"
    assert cert["spec"]["issuerRef"] == {"name": f"{FULL}-opamp-ca", "kind": "Issuer"}
    assert cert["spec"]["duration"] == "2160h"
    assert "server auth" in cert["spec"]["usages"]
    names = cert["spec"]["dnsNames"]
    for service in (FULL, f"{FULL}-api"):  # the API reuses it (api.useOpampCertificate)
        for suffix in ("", f".{NS}", f".{NS}.svc", f".{NS}.svc.cluster.local"):
            assert f"{service}{suffix}" in names
    assert "localhost" in names
    assert "x.io" in names
    assert cert["spec"]["ipAddresses"] == ["127.0.0.1", "10.1.2.3"]
    # Mounted read-only; the operator serves it on both ports and asks agents for theirs.
    mount, volume = _tls_mount(r)
    assert mount["readOnly"] is True
    assert volume["secret"] == {"secretName": f"{FULL}-opamp-tls"}
    options = run_options(build_parser().parse_args(r.args()))
    assert options.listen.tls == TLSFiles(
        cert_file=Path(TLS_DIR, "tls.crt"),
        key_file=Path(TLS_DIR, "tls.key"),
        client_ca_file=Path(TLS_DIR, "ca.crt"),
        client_auth=ClientAuth.REQUIRE,
    )
    assert options.api.tls == TLSFiles(
        cert_file=Path(TLS_DIR, "tls.crt"), key_file=Path(TLS_DIR, "tls.key")
    )
    assert options.handlers.agent_endpoint == f"wss://{FULL}.{NS}.svc:4320/v1/opamp"
    # The chart's own CA: template-mode pods are given it.
    assert options.handlers.agent_ca_file == Path(TLS_DIR, "ca.crt")
    assert r.one("Service", FULL)["spec"]["ports"][0]["appProtocol"] == "https"

    # With the webhook's certificate from cert-manager too: one self-signed Issuer.
    both = render(*VALUE_SETS["opamp-tls-cert-manager"], "webhook.certManager.enabled=true")
    assert both.one("Issuer", f"{FULL}-selfsigned")
    assert both.one("Certificate", f"{FULL}-webhook")["spec"]["issuerRef"]["name"] == (
        f"{FULL}-selfsigned"
    )


def test_tls_for_agents_from_cert_manager_with_an_issuer_of_yours(render: Render) -> None:
    r = render(
        "opamp.tls.enabled=true",
        "opamp.tls.certManager.enabled=true",
        "opamp.tls.certManager.issuerRef.name=corp-ca",
        "opamp.tls.certManager.issuerRef.kind=ClusterIssuer",
        "opamp.tls.certManager.duration=720h",
        "api.useOpampCertificate=false",
    )
    assert not r.all("Issuer")
    [cert] = r.all("Certificate")
    assert cert["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}
    assert cert["spec"]["duration"] == "720h"
    assert not [n for n in cert["spec"]["dnsNames"] if "-api" in n]
    options = run_options(build_parser().parse_args(r.args()))
    assert options.handlers.agent_ca_file is None  # your CA: caConfigMapRef, or the roots
    assert options.listen.tls.enabled
    assert options.listen.tls.client_auth is ClientAuth.NONE
    assert options.listen.tls.client_ca_file is None
    assert not options.api.tls.enabled  # self-signed at start


def test_tls_for_agents_from_helms_own_ca(render: Render, tmp_path: Path) -> None:
    """The default: Helm makes an EC P-256 CA and a certificate for the Services,
    localhost and 127.0.0.1 (and the names asked for); the operator serves it and gives
    template-mode pods the CA. The certificate chains to the Secret's ca.crt and loads
    with the operator's own TLS code."""
    r = render("opamp.tls.dnsNames[0]=x.io", "opamp.tls.selfSigned.validityDays=30")
    assert not r.all("Certificate")
    secret = r.one("Secret", f"{FULL}-opamp-tls")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (cert.public_key(), ca.public_key()):
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=31)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName)
    for service in (FULL, f"{FULL}-api"):
        assert f"{service}.{NS}.svc" in names
    assert {"localhost", "x.io"} <= set(names)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    _, volume = _tls_mount(r)
    assert volume["secret"] == {"secretName": f"{FULL}-opamp-tls"}
    options = run_options(build_parser().parse_args(r.args()))
    assert options.handlers.agent_ca_file == Path(TLS_DIR, "ca.crt")
    assert options.listen.tls.client_auth is ClientAuth.NONE
    for key, value in data.items():
        (tmp_path / key).write_bytes(value)
    served = ReloadingTLS(TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key"))
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_end = client.wrap_bio(c_in, c_out, server_hostname=f"{FULL}.{NS}.svc")
    server_end = served.context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(4):
        for end in (client_end, server_end):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert client_end.version() == "TLSv1.3"
    # Each render without a cluster makes new ones (lookup keeps them on an upgrade).
    again = render().one("Secret", f"{FULL}-opamp-tls")["data"]["ca.crt"]
    assert again != secret["data"]["ca.crt"]


def test_tls_for_agents_from_an_existing_secret(render: Render) -> None:
    r = render(*VALUE_SETS["opamp-tls-existing-secret"], "opamp.tls.clientAuth=optional")
    assert not r.all("Certificate")
    assert not r.all("Issuer")
    mount, volume = _tls_mount(r)
    assert mount["readOnly"] is True
    assert volume["secret"] == {"secretName": "agents-tls"}
    args = r.args()
    assert args[args.index("--client-auth") + 1] == "optional"
    assert args[args.index("--client-ca-file") + 1] == f"{TLS_DIR}/ca.crt"
    assert args[args.index("--agent-endpoint") + 1] == f"wss://{FULL}.{NS}.svc:4320/v1/opamp"
    assert "--agent-ca-file" not in args
    # An explicit endpoint is kept as given.
    own = render(
        *VALUE_SETS["opamp-tls-existing-secret"], "operator.agentEndpoint=wss://o.io/v1/opamp"
    )
    assert own.args()[own.args().index("--agent-endpoint") + 1] == "wss://o.io/v1/opamp"


def test_the_mounted_secrets_files_load_with_the_rendered_flags(
    render: Render, tmp_path: Path
) -> None:
    """The Secret's keys (tls.crt, tls.key, ca.crt) as the pod sees them under the mount,
    loaded by the operator's own TLS code with the rendered flags: a certificate it
    serves to a client that trusts the Secret's ca.crt, which asks for agents' certificates."""
    ca = CertificateAuthority("agents CA")
    ca.issue(f"{FULL}.{NS}.svc", hosts=(f"{FULL}.{NS}.svc",), server=True).write(tmp_path, "tls")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    options = run_options(
        build_parser().parse_args(render(*VALUE_SETS["opamp-tls-cert-manager"]).args())
    )

    def here(path: Path | None) -> Path | None:
        return None if path is None else tmp_path / path.relative_to(TLS_DIR)

    files = options.listen.tls
    local = TLSFiles(
        here(files.cert_file), here(files.key_file), here(files.client_ca_file), files.client_auth
    )
    server = ReloadingTLS(local)
    assert server.context.verify_mode == ssl.CERT_REQUIRED
    api = ReloadingTLS(TLSFiles(here(options.api.tls.cert_file), here(options.api.tls.key_file)))
    assert api.context.verify_mode == ssl.CERT_NONE  # the API adds the cluster's CA itself


def test_template_logic_refuses_tls_values_that_cannot_work(helm_env: dict[str, str]) -> None:
    for sets, message in (
        (
            ("opamp.tls.clientAuth=require",),
            "opamp.tls.clientAuth needs opamp.tls.certManager.enabled=true or",
        ),
        (
            (
                "opamp.tls.enabled=true",
                "opamp.tls.certManager.enabled=true",
                "opamp.tls.existingSecret=x",
            ),
            "not both",
        ),
        (
            ("opamp.tls.enabled=false", "opamp.tls.clientAuth=require"),
            "opamp.tls.clientAuth needs opamp.tls.enabled",
        ),
        (
            ("metrics.serviceMonitor.enabled=true", "api.service.enabled=false"),
            "metrics.serviceMonitor.enabled needs api.service.enabled",
        ),
        (
            ("opamp.limits.retryAfterMinSeconds=90",),
            "opamp.limits.retryAfterMinSeconds must not be above",
        ),
    ):
        done = run_helm(helm_env, "template", RELEASE, str(CHART), *(f"--set={s}" for s in sets))
        assert done.returncode != 0, sets
        assert message in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicass=2", "additional properties 'replicass' not allowed"),
        ("replicas=two", "/replicas"),
        ("webhook.failurePolicy=Sometimes", "/webhook/failurePolicy"),
        ("webhook.certManager.issuer=x", "additional properties 'issuer' not allowed"),
        ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("clusterWide=yes", "/clusterWide"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.agentEndpoint=tcp://x", "/operator/agentEndpoint"),
        ("service.nodePort=4320", "/service/nodePort"),
        ("opamp.tls.clientAuth=sometimes", "/opamp/tls/clientAuth"),
        ("opamp.tls.certManager.duration=90d", "/opamp/tls/certManager/duration"),
        ("opamp.tls.certManager.issuer=x", "additional properties 'issuer' not allowed"),
        ("api.port=4320", "/api/port"),
        ("api.port=0", "/api/port"),
        ("metrics.service.enabled=true", "additional properties 'service' not allowed"),
        ("networkPolicy.apiFrom[0].podSelectr.a=b", "additional properties 'podSelectr'"),
        ("networkPolicy.agentsFrom[0].ipBlock.except[0]=1.2.3.4/32", "missing property 'cidr'"),
        ("opamp.limits.maxWebsocket=10", "additional properties 'maxWebsocket' not allowed"),
        ("opamp.limits.maxMessageBytes=0", "/opamp/limits/maxMessageBytes"),
        ("opamp.limits.headerTimeoutSeconds=0", "/opamp/limits/headerTimeoutSeconds"),
        ("opamp.limits.shutdownSeconds=20", "/opamp/limits/shutdownSeconds"),
    ],
)
def test_the_schema_refuses_bad_values(helm_env: dict[str, str], value: str, message: str) -> None:
    done = run_helm(helm_env, "template", RELEASE, str(CHART), f"--set={value}")
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


def test_the_limits_values_reach_the_operator_as_given(render: Render) -> None:
    """Every opamp.limits value, set to something else than its default, arrives in the
    operator's Limits or AgentLimits: rendered by helm, parsed by the operator's CLI."""
    sets = {
        "maxMessageBytes": 33554432,
        "maxInFlightBytes": 134217728,
        "maxWebsockets": 20000,
        "maxHttpInFlight": 2000,
        "listenBacklog": 8192,
        "retryAfterMinSeconds": 40,
        "retryAfterMaxSeconds": 90,
        "headerTimeoutSeconds": 5,
        "bodyTimeoutSeconds": 45,
        "keepaliveSeconds": 75,
        "firstMessageTimeoutSeconds": 20,
        "wsPingSeconds": 15,
        "shutdownSeconds": 12,
        "maxAgents": 50000,
        "forgetUndescribedAfterSeconds": 30,
        "maxAgentAttributes": 256,
        "maxAgentDescriptionBytes": 131072,
        "maxEffectiveConfigBytes": 4194304,
        "maxAgentComponents": 5000,
        "maxKeptBytes": 268435456,
        "configWorkers": 2,
        "configBudgetSeconds": 60,
        "configWorkerMemoryBytes": 536870912,
    }
    rendered = render(*(f"opamp.limits.{k}={v}" for k, v in sets.items()))
    options = run_options(build_parser().parse_args(rendered.args()))
    got = {**vars(options.limits), **vars(options.core.limits)}
    for flag, owner, name, _ in LIMIT_FLAGS:
        camel = "".join(w if i == 0 else w.capitalize() for i, w in enumerate(flag[2:].split("-")))
        assert got[name] == sets[camel] != getattr(owner, name), flag


def test_the_kind_values_expose_opamp_where_kind_config_maps_it(helm_env: dict[str, str]) -> None:
    """deploy/kind/values.yaml and kind-config.yaml agree: the OpAMP Service's node port
    is the control plane's mapped container port, and the image is the one kind-e2e
    builds and loads (never pulled)."""
    values = ("-f", str(KIND_VALUES))
    lint = run_helm(helm_env, "lint", "--strict", str(CHART), *values)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    done = run_helm(
        helm_env, "template", "opamp-operator", str(CHART), "--namespace=opamp-system", *values
    )
    assert done.returncode == 0, done.stderr
    r = Rendered([o for o in yaml.safe_load_all(done.stdout) if o])
    service = r.one("Service", "opamp-operator")
    assert service["spec"]["type"] == "NodePort"
    (port,) = service["spec"]["ports"]
    kind = yaml.safe_load(KIND_CONFIG.read_text())
    (control_plane,) = [n for n in kind["nodes"] if n["role"] == "control-plane"]
    (mapping,) = control_plane["extraPortMappings"]
    assert port["nodePort"] == mapping["containerPort"] == 30320
    assert (mapping["hostPort"], mapping["listenAddress"]) == (4320, "127.0.0.1")
    assert r.container()["image"] == "opamp-operator:dev"
    assert r.container()["imagePullPolicy"] == "Never"
    # Cluster-wide, asked for explicitly: the e2e creates namespaces of random names.
    assert yaml.safe_load(KIND_VALUES.read_text())["clusterWide"] is True
    assert r.watched() == []
    assert not r.all("Role")
    cluster = role_rules(r.one("ClusterRole", "opamp-operator-cluster"))
    assert cluster >= NAMESPACED_RULES | TEMPLATE_RULES
    # The default ClusterIP Service never gets a node port, whatever the value says.
    plain = run_helm(helm_env, "template", RELEASE, str(CHART), "--set=service.nodePort=30320")
    assert plain.returncode == 0, plain.stderr
    assert "nodePort" not in plain.stdout


def test_the_charts_crds_are_the_generated_ones() -> None:
    chart_crds = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    generated = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    assert sorted(chart_crds) == sorted(generated)
    for name, data in generated.items():
        assert chart_crds[name] == data, f"crds/{name} differs from deploy/crds/{name}"


def test_the_webhook_matches_what_kopf_would_register_for_the_operator(render: Render) -> None:
    """The chart owns the ValidatingWebhookConfiguration kopf would otherwise manage: its
    path, rules and policies must be what kopf builds from the operator's own handlers."""
    state = OperatorState()
    core = ServerCore(CoreSettings(), desired=state)
    state.core = core
    registry = kopf.OperatorRegistry()
    register(registry, state, OpAMPServer(core, Limits()), HandlerSettings(webhook=True))
    fleets = Resource(GROUP, VERSION, "collectorfleets", namespaced=True)
    [expected] = build_webhooks(
        registry._webhooks.get_all_handlers(),
        resources=[fleets],
        name_suffix="opampoperator.io",
        client_config={"service": {"name": f"{FULL}-webhook", "namespace": NS}},
    )
    [hook] = render().one("ValidatingWebhookConfiguration")["webhooks"]
    assert hook["clientConfig"]["service"]["path"] == expected["clientConfig"]["service"]["path"]
    assert hook["failurePolicy"] == expected["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == expected["sideEffects"]
    assert set(hook["admissionReviewVersions"]) <= set(expected["admissionReviewVersions"])
    [rule] = hook["rules"]
    [kopf_rule] = expected["rules"]
    for key in ("apiGroups", "apiVersions", "resources"):
        assert rule[key] == kopf_rule[key], key
    assert set(rule["operations"]) == set(kopf_rule["operations"])


def _value_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the chart's values; `resources` is documented as one value."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "resources":
            paths += _value_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def test_every_value_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    docs = (binaries.REPO_ROOT / "docs" / "helm.md").read_text()
    paths = _value_paths(values)
    assert len(paths) > 40
    assert [p for p in paths if f"`{p}`" not in docs] == []
    assert sorted(set(schema["properties"]) - {"global"}) == sorted(values)
