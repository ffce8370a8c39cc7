"""The Helm chart rendered with `helm lint` and `helm template`: what each value set
produces (objects, RBAC rules per mode, operator args, security context, probes, the
webhook's certificate), that values.schema.json refuses bad values, and that the chart's
CRDs are the generated ones in deploy/crds/."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import kopf
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from kopf._cogs.structs.references import Resource
from kopf._core.engines.admission import build_webhooks

from opamp_operator.api.models import GROUP, VERSION
from opamp_operator.cli import build_parser
from opamp_operator.k8s.handlers import register
from opamp_operator.k8s.settings import HandlerSettings
from opamp_operator.k8s.state import OperatorState
from opamp_operator.opamp.session import CoreSettings, ServerCore
from opamp_operator.server.app import Limits, OpAMPServer
from world import binaries
from world.chart import CHART, helm_environment, run_helm

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
}
KOPF_CLUSTER_RULES: set[Rule] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list", ()),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch", ()),
}
NAMESPACE_RULES: set[Rule] = {("", "namespaces", "list", ()), ("", "namespaces", "watch", ())}


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

    def rules(self, kind: str, namespace: str | None = None) -> set[Rule]:
        found: set[Rule] = set()
        for role in self.all(kind):
            if namespace is not None and role["metadata"].get("namespace") != namespace:
                continue
            for rule in role["rules"]:
                names = tuple(rule.get("resourceNames", ()))
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            found.add((group, resource, verb, names))
        return found


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
    "namespaced": ("watchNamespaces[0]=team-a", "watchNamespaces[1]=team-b"),
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
    assert parsed.agent_endpoint == f"ws://{FULL}.{NS}.svc:4320/v1/opamp"


def test_defaults_are_one_clusterwide_replica_with_a_hardened_pod(render: Render) -> None:
    r = render()
    assert r.kinds() == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
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
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "opamp"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "opamp"}
    assert {"name": "opamp", "containerPort": 4320, "protocol": "TCP"} in c["ports"]
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[TMP]] == {"name": "tmp", "emptyDir": {}}
    assert volumes[mounts["/certs"]]["secret"]["secretName"] == f"{FULL}-webhook-tls"

    assert c["command"] == ["opamp-operator"]
    args = r.args()
    assert args[:4] == ["--log-level=INFO", "run", "--port", "4320"]
    assert "--namespace" not in args
    assert "--peering" not in args
    assert args[args.index("--webhook-port") + 1] == "9443"
    assert args[args.index("--webhook-host") + 1] == f"{FULL}-webhook.{NS}.svc"
    assert args[args.index("--webhook-cert-dir") + 1] == "/certs"
    assert "--webhook-configuration" not in args

    assert r.rules("ClusterRole") == NAMESPACED_RULES | TEMPLATE_RULES | KOPF_CLUSTER_RULES
    assert not r.all("Role")
    assert not r.all("RoleBinding")
    binding = r.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == r.one("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULL, "namespace": NS}]

    opamp = r.one("Service", FULL)
    assert opamp["spec"]["ports"][0] | {} == {
        "name": "opamp",
        "port": 4320,
        "targetPort": "opamp",
        "protocol": "TCP",
        "appProtocol": "http",
    }
    metrics = r.one("Service", f"{FULL}-metrics")
    assert [(p["name"], p["port"]) for p in metrics["spec"]["ports"]] == [("metrics", 4320)]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for service in (opamp, metrics):
        assert service["spec"]["selector"].items() <= labels.items()
    assert not r.all("PodDisruptionBudget")
    assert not r.all("ServiceMonitor")


def test_a_namespaced_install_gets_a_role_per_watched_namespace(render: Render) -> None:
    r = render(*VALUE_SETS["namespaced"])
    args = r.args()
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["team-a", "team-b"]
    assert sorted(role["metadata"]["namespace"] for role in r.all("Role")) == ["team-a", "team-b"]
    for ns in ("team-a", "team-b"):
        assert r.rules("Role", ns) == NAMESPACED_RULES | TEMPLATE_RULES
        binding = next(b for b in r.all("RoleBinding") if b["metadata"]["namespace"] == ns)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULL, "namespace": NS}]
        assert binding["roleRef"]["kind"] == "Role"
    # Cluster-wide, only what kopf reads to discover its resources and the namespaces.
    assert r.rules("ClusterRole") == KOPF_CLUSTER_RULES | NAMESPACE_RULES
    hook = r.one("ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]


def test_two_replicas_run_active_standby_with_kopf_peering(render: Render) -> None:
    r = render(*VALUE_SETS["replicas-2"])
    assert r.one("Deployment")["spec"]["replicas"] == 2
    args = r.args()
    assert args[args.index("--peering") + 1] == RELEASE
    assert r.rules("ClusterRole") >= _peering_rules("clusterkopfpeerings")
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
    assert not single.rules("ClusterRole") & _peering_rules("clusterkopfpeerings")


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
    assert not {rule[0] for rule in r.rules("ClusterRole")} & {"admissionregistration.k8s.io"}


def test_the_webhook_certificate_can_come_from_cert_manager(render: Render) -> None:
    r = render(*VALUE_SETS["webhook-cert-manager"])
    assert not r.all("Secret")
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


def test_the_service_monitor_scrapes_the_metrics_service(render: Render) -> None:
    r = render(*VALUE_SETS["service-monitor"], "metrics.serviceMonitor.labels.team=obs")
    monitor = r.one("ServiceMonitor", FULL)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["team"] == "obs"
    metrics = r.one("Service", f"{FULL}-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    )
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= (
        r.one("Service", FULL)["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NS]}


def test_without_webhook_and_template_mode_the_grants_shrink(render: Render) -> None:
    r = render(*VALUE_SETS["no-webhook-no-templates"])
    assert not r.all("ValidatingWebhookConfiguration")
    assert not r.all("Secret")
    assert not any(a.startswith("--webhook") for a in r.args())
    assert "volumeMounts" in r.container()
    assert [m["mountPath"] for m in r.container()["volumeMounts"]] == [TMP]
    assert r.rules("ClusterRole") == NAMESPACED_RULES | KOPF_CLUSTER_RULES


def test_token_secrets_can_be_limited_by_name(render: Render) -> None:
    r = render("tokenSecrets.resourceNames[0]=agent-token")
    secrets = {rule for rule in r.rules("ClusterRole") if rule[1] == "secrets"}
    assert secrets == {("", "secrets", "get", ("agent-token",))}


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


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicass=2", "additional properties 'replicass' not allowed"),
        ("replicas=two", "/replicas"),
        ("webhook.failurePolicy=Sometimes", "/webhook/failurePolicy"),
        ("webhook.certManager.issuer=x", "additional properties 'issuer' not allowed"),
        ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.agentEndpoint=tcp://x", "/operator/agentEndpoint"),
        ("service.nodePort=4320", "/service/nodePort"),
    ],
)
def test_the_schema_refuses_bad_values(helm_env: dict[str, str], value: str, message: str) -> None:
    done = run_helm(helm_env, "template", RELEASE, str(CHART), f"--set={value}")
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


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
