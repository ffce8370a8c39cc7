"""Template mode rendering: what a fleet's template becomes, checked field by field, and
read back the way the operator reads pods and the supervisor reads its config."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
import yaml
from pydantic import ValidationError

from opamp_operator.api.models import (
    AGENT_READY_CONDITION,
    DEFAULT_TOKEN_EXPIRATION,
    CollectorFleetSpec,
    FleetTemplate,
)
from opamp_operator.fleet.mapping import FleetSelector
from opamp_operator.fleet.pod_rollout import PodStaging
from opamp_operator.fleet.rollout import Membership
from opamp_operator.k8s.gates import pod_view
from opamp_operator.k8s.settings import AgentTokenSettings
from opamp_operator.k8s.state import FleetRecord, Governance
from opamp_operator.k8s.workload import (
    AUTH_TOKEN_ENV,
    CANARY_LABEL,
    CONFIG_HASH_ANNOTATION,
    CONFIG_KEY,
    MANAGED_BY_LABEL,
    TEMPLATE_LABEL,
    TOKEN_AUDIENCE,
    WORKLOAD_LABEL,
    Ownership,
    Rendered,
    Split,
    TemplateError,
    config_map_name,
    merge,
    ownership,
    render,
    supervisor_config,
    workload_name,
)

ENDPOINT = "ws://opamp-operator.opamp-system.svc:4320/v1/opamp"
UID = "0b7c2a4e-5f51-4c1e-9d3a-2f6a1c7e8b90"


def _record(
    template: dict[str, Any] | None = None,
    selector: dict[str, Any] | None = None,
    name: str = "gateways",
    **spec: Any,
) -> FleetRecord:
    parsed = CollectorFleetSpec.model_validate(
        {
            "selector": selector or {"matchLabels": {"app": "gateway"}},
            "config": {"inline": "receivers: {}"},
            "template": {"image": "otel/opentelemetry-collector-opampsupervisor:0.149.0"}
            if template is None
            else template,
            **spec,
        }
    )
    fleet_selector = FleetSelector.from_label_selector(
        "observability", name, 0.0, parsed.selector.model_dump(by_alias=True)
    )
    return FleetRecord("observability", name, UID, 1, fleet_selector, parsed)


def _pod_template(rendered: Rendered) -> dict[str, Any]:
    pod: dict[str, Any] = rendered.workload["spec"]["template"]
    return pod


def _container(rendered: Rendered) -> dict[str, Any]:
    (container,) = _pod_template(rendered)["spec"]["containers"]
    return cast(dict[str, Any], container)


def _supervisor(rendered: Rendered) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(rendered.config_map["data"][CONFIG_KEY])
    return loaded


def _as_pod(rendered: Rendered, name: str = "gateways-collector-abc12") -> kopf.Body:
    """A pod of the rendered template, as the API would return it."""
    pod = _pod_template(rendered)
    raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**pod["metadata"], "name": name, "namespace": "observability"},
        "spec": pod["spec"],
    }
    return kopf.Body(cast(kopf.RawBody, raw))


def test_deployment_is_owned_by_the_fleet_with_its_replicas_image_and_resources() -> None:
    resources = {"limits": {"cpu": "500m", "memory": "512Mi"}}
    rendered = render(
        _record(
            {
                "image": "example.com/otelcol-supervised:1.2.3",
                "replicas": 4,
                "resources": resources,
                "serviceAccountName": "collector",
            }
        ),
        ENDPOINT,
    )
    deployment = rendered.workload
    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    assert deployment["metadata"]["name"] == workload_name("gateways") == "gateways-collector"
    assert deployment["metadata"]["namespace"] == "observability"
    assert deployment["spec"]["replicas"] == 4
    for obj in rendered.objects:
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "opampoperator.io/v1alpha1",
            "kind": "CollectorFleet",
            "name": "gateways",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    container = _container(rendered)
    assert container["image"] == "example.com/otelcol-supervised:1.2.3"
    assert container["resources"] == resources
    assert _pod_template(rendered)["spec"]["serviceAccountName"] == "collector"


def test_defaults_leave_out_optional_pod_fields() -> None:
    rendered = render(_record(), ENDPOINT)
    assert rendered.workload["spec"]["replicas"] == 1
    assert "resources" not in _container(rendered)
    assert "serviceAccountName" not in _pod_template(rendered)["spec"]


def test_daemon_set_has_no_replicas() -> None:
    rendered = render(_record({"kind": "DaemonSet", "image": "img", "replicas": 7}), ENDPOINT)
    assert rendered.workload["kind"] == "DaemonSet"
    assert "replicas" not in rendered.workload["spec"]
    assert rendered.workload["spec"]["template"]["spec"]["readinessGates"] == [
        {"conditionType": AGENT_READY_CONDITION}
    ]


def test_rendered_pods_are_selected_by_the_fleet_and_declare_the_gate() -> None:
    record = _record(
        selector={
            "matchLabels": {"app": "gateway", "tier": "edge"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["edge", "core"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "app", "operator": "NotIn", "values": ["agent"]},
            ],
        }
    )
    rendered = render(record, ENDPOINT)
    view = pod_view(_as_pod(rendered))
    assert record.selector.selects(view)
    assert AGENT_READY_CONDITION in view.readiness_gates
    assert dict(view.labels) == {
        "app": "gateway",
        "tier": "edge",
        MANAGED_BY_LABEL: "opamp-operator",
        WORKLOAD_LABEL: "gateways",
        # Which revision's template the pod runs: what a staged rollout selects by.
        TEMPLATE_LABEL: record.template_hash,
    }
    # The workload's own selector does not follow the fleet's (it is immutable).
    assert rendered.workload["spec"]["selector"] == {
        "matchLabels": {MANAGED_BY_LABEL: "opamp-operator", WORKLOAD_LABEL: "gateways"}
    }
    other = render(_record(selector={"matchLabels": {"app": "other"}}), ENDPOINT)
    assert other.workload["spec"]["selector"] == rendered.workload["spec"]["selector"]


def test_pod_identity_reaches_the_agent_attributes_through_the_downward_api() -> None:
    rendered = render(_record(), ENDPOINT)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in _container(rendered)["env"]}
    attributes = _supervisor(rendered)["agent"]["description"]["non_identifying_attributes"]
    from_pod = {}
    for attr, value in attributes.items():
        assert value.startswith("${env:"), attr
        assert value.endswith("}"), attr
        from_pod[attr] = env[value[len("${env:") : -1]]
    assert from_pod == {
        "k8s.pod.name": "metadata.name",
        "k8s.namespace.name": "metadata.namespace",
        "k8s.pod.uid": "metadata.uid",
        "k8s.node.name": "spec.nodeName",
    }
    # Not an attribute, but there for configs that listen on the pod's own address.
    assert env["K8S_POD_IP"] == "status.podIP"


def test_supervisor_config_points_at_the_operator_and_accepts_remote_config() -> None:
    rendered = render(_record(), ENDPOINT)
    config = _supervisor(rendered)
    assert config["server"] == {"endpoint": ENDPOINT}
    caps = config["capabilities"]
    for cap in (
        "accepts_remote_config",
        "reports_remote_config",
        "reports_effective_config",
        "reports_health",
    ):
        assert caps[cap] is True, cap
    assert config["agent"]["executable"] == "/otelcontribcol"
    assert config["agent"]["bootstrap_timeout"] == "30s"
    # The supervisor reads the mounted ConfigMap and keeps its state on the emptyDir.
    pod = _pod_template(rendered)["spec"]
    mounts = {m["name"]: m["mountPath"] for m in _container(rendered)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["supervisor-config"]["configMap"]["name"] == config_map_name("gateways")
    assert rendered.config_map["metadata"]["name"] == "gateways-supervisor"
    assert _container(rendered)["args"] == [
        "--config",
        f"{mounts['supervisor-config']}/{CONFIG_KEY}",
    ]
    assert volumes["supervisor-storage"] == {"name": "supervisor-storage", "emptyDir": {}}
    assert config["storage"]["directory"] == mounts["supervisor-storage"]


def test_a_new_supervisor_config_rolls_the_pods_and_replicas_do_not() -> None:
    def digest(rendered: Rendered) -> str:
        value: str = _pod_template(rendered)["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        return value

    base = render(_record(), ENDPOINT)
    text = base.config_map["data"][CONFIG_KEY]
    assert digest(base) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert digest(render(_record({"image": "x", "replicas": 9}), ENDPOINT)) == digest(base)
    assert digest(render(_record(), "wss://elsewhere:4320/v1/opamp")) != digest(base)


def test_executable_and_supervisor_config_can_be_overridden() -> None:
    record = _record(
        {
            "image": "img",
            "agentExecutable": "/usr/bin/otelcol-custom",
            "supervisorConfig": {
                "server": {"tls": {"ca_file": "/etc/ca/ca.crt"}},
                "agent": {"args": ["--feature-gates=x"], "bootstrap_timeout": "1m"},
                "capabilities": {"reports_own_metrics": True},
            },
        }
    )
    config = supervisor_config(record.spec, ENDPOINT)
    assert config["server"] == {"endpoint": ENDPOINT, "tls": {"ca_file": "/etc/ca/ca.crt"}}
    assert config["agent"]["executable"] == "/usr/bin/otelcol-custom"
    assert config["agent"]["args"] == ["--feature-gates=x"]
    assert config["agent"]["bootstrap_timeout"] == "1m"
    assert "k8s.pod.uid" in config["agent"]["description"]["non_identifying_attributes"]
    assert config["capabilities"]["reports_own_metrics"] is True
    assert config["capabilities"]["accepts_remote_config"] is True


def test_merge_replaces_non_maps_and_leaves_its_inputs_alone() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    override = {"a": {"c": [2], "e": {"f": 3}}, "d": {"g": 4}}
    assert merge(base, override) == {"a": {"b": 1, "c": [2], "e": {"f": 3}}, "d": {"g": 4}}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 2}


def test_an_auth_secret_becomes_a_bearer_header_from_the_secret() -> None:
    rendered = render(_record(authSecretRef={"name": "fleet-token"}), ENDPOINT)
    (token,) = [e for e in _container(rendered)["env"] if "secretKeyRef" in e["valueFrom"]]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "fleet-token", "key": "token"}
    headers = _supervisor(rendered)["server"]["headers"]
    assert headers == {"Authorization": [f"Bearer ${{env:{token['name']}}}"]}


def test_without_an_endpoint_template_mode_says_how_to_give_one() -> None:
    with pytest.raises(ValueError, match="--agent-endpoint"):
        render(_record(), None)
    given = _record({"image": "img", "supervisorConfig": {"server": {"endpoint": ENDPOINT}}})
    assert _supervisor(render(given, None))["server"]["endpoint"] == ENDPOINT


@pytest.mark.parametrize("endpoint", ["grpc://op:4320", "op:4320", "/v1/opamp"])
def test_an_endpoint_that_is_not_an_opamp_url_is_refused(endpoint: str) -> None:
    with pytest.raises(TemplateError, match="is not a ws/wss/http/https URL"):
        render(_record(), endpoint)


def test_match_expressions_the_pods_cannot_satisfy_are_an_error() -> None:
    record = _record(
        selector={
            "matchLabels": {"app": "gateway"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["edge"]}],
        }
    )
    with pytest.raises(TemplateError, match=r"matchExpressions tier In \['edge'\]"):
        render(record, ENDPOINT)
    exists = _record(selector={"matchExpressions": [{"key": "zone", "operator": "Exists"}]})
    with pytest.raises(TemplateError, match="zone Exists does not select"):
        render(exists, ENDPOINT)
    excluded = _record(
        selector={
            "matchLabels": {"app": "gateway"},
            "matchExpressions": [
                {"key": MANAGED_BY_LABEL, "operator": "NotIn", "values": ["opamp-operator"]}
            ],
        }
    )
    with pytest.raises(TemplateError, match="NotIn"):
        render(excluded, ENDPOINT)


def test_match_labels_that_clash_with_the_workload_labels_are_an_error() -> None:
    record = _record(selector={"matchLabels": {MANAGED_BY_LABEL: "helm"}})
    with pytest.raises(TemplateError, match=re.escape(MANAGED_BY_LABEL)):
        render(record, ENDPOINT)


def test_a_fleet_name_too_long_for_a_label_value_is_an_error() -> None:
    with pytest.raises(TemplateError, match="at most 63 characters"):
        render(_record(name="f" * 64), ENDPOINT)
    assert render(_record(name="f" * 63), ENDPOINT).workload["metadata"]["name"].startswith("f")


def test_a_fleet_without_template_renders_nothing() -> None:
    record = _record()
    record.spec.template = None
    with pytest.raises(TemplateError, match=r"no spec\.template"):
        render(record, ENDPOINT)


def _ref(**fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "opampoperator.io/v1alpha1",
        "kind": "CollectorFleet",
        "name": "gateways",
        "uid": UID,
        "controller": True,
        **fields,
    }


def test_ownership_tells_ours_from_an_earlier_fleet_and_from_others() -> None:
    record = _record()
    assert ownership([_ref()], record) == Ownership.OURS
    assert ownership([_ref(uid="old")], record) == Ownership.STALE
    assert ownership([_ref(uid="old", name="other")], record) == Ownership.FOREIGN
    assert ownership([_ref(controller=False)], record) == Ownership.FOREIGN
    assert ownership([], record) == Ownership.FOREIGN
    helm = _ref(apiVersion="apps/v1", kind="ReplicaSet", uid="x")
    assert ownership([helm], record) == Ownership.FOREIGN


# ---- restricted pods ----------------------------------------------------------------


def _volumes(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _pod_template(rendered)["spec"]["volumes"]}


def _mounts(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in _container(rendered)["volumeMounts"]}


def test_pods_run_restricted_and_write_only_to_the_supervisor_storage() -> None:
    for kind in ("Deployment", "DaemonSet"):
        rendered = render(_record({"image": "img", "kind": kind}), ENDPOINT)
        assert _pod_template(rendered)["spec"]["securityContext"] == {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert _container(rendered)["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        # With a read-only root, what the supervisor writes (its state, the Collector's
        # config and log, configs it validates: all under storage.directory) must be on a
        # writable volume: the one writable mount, an emptyDir.
        writable = [m for m in _mounts(rendered).values() if not m.get("readOnly")]
        assert [m["mountPath"] for m in writable] == [_supervisor(rendered)["storage"]["directory"]]
        assert _volumes(rendered)[writable[0]["name"]]["emptyDir"] == {}


def test_the_templates_security_contexts_win_key_by_key() -> None:
    rendered = render(
        _record(
            {
                "image": "img",
                "podSecurityContext": {
                    "runAsUser": 10001,
                    "fsGroup": 10001,
                    "seccompProfile": {"type": "Localhost", "localhostProfile": "otel.json"},
                },
                "securityContext": {
                    "capabilities": {"add": ["NET_BIND_SERVICE"]},
                    "readOnlyRootFilesystem": False,
                    "allowPrivilegeEscalation": None,  # null: leave the default out
                },
            }
        ),
        ENDPOINT,
    )
    assert _pod_template(rendered)["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "otel.json"},
    }
    assert _container(rendered)["securityContext"] == {
        "readOnlyRootFilesystem": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
    }


# ---- ServiceAccount tokens ----------------------------------------------------------


def _sa_record(template: dict[str, Any] | None = None, **auth: Any) -> FleetRecord:
    return _record(
        template or {"image": "img", "serviceAccountName": "collector"},
        agentAuth={"mode": "ServiceAccountToken", **auth},
    )


def test_service_account_token_mode_mounts_a_pod_bound_token_the_supervisor_sends() -> None:
    rendered = render(_sa_record(serviceAccounts=["collector"]), ENDPOINT)
    volume = _volumes(rendered)["agent-token"]
    (source,) = volume["projected"]["sources"]
    token = source["serviceAccountToken"]
    # The audience the operator's TokenReviews require by default: one definition.
    assert token["audience"] == TOKEN_AUDIENCE == AgentTokenSettings().audiences[0]
    assert token["audience"] == "opamp-operator"
    assert token["expirationSeconds"] == DEFAULT_TOKEN_EXPIRATION == 365 * 24 * 3600
    mount = _mounts(rendered)["agent-token"]
    assert mount["readOnly"] is True
    path = f"{mount['mountPath']}/{token['path']}"
    # The supervisor expands ${file:...} with its confmap file provider when it loads its
    # config: the header carries the file's content.
    assert _supervisor(rendered)["server"]["headers"] == {
        "Authorization": [f"Bearer ${{file:{path}}}"]
    }
    assert _pod_template(rendered)["spec"]["serviceAccountName"] == "collector"


def test_the_token_lifetime_and_audience_are_configurable_within_kubernetes_bounds() -> None:
    record = _sa_record({"image": "img", "serviceAccountToken": {"expirationSeconds": 600}})
    rendered = render(record, ENDPOINT, audience="opamp.example.com")
    (source,) = _volumes(rendered)["agent-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["expirationSeconds"] == 600
    assert source["serviceAccountToken"]["audience"] == "opamp.example.com"
    for seconds in (599, (1 << 32) + 1):
        with pytest.raises(ValidationError):
            _sa_record({"image": "img", "serviceAccountToken": {"expirationSeconds": seconds}})


def test_the_service_account_token_replaces_the_fleet_token() -> None:
    record = _record(
        {"image": "img"},
        authSecretRef={"name": "fleet-token"},
        agentAuth={"mode": "ServiceAccountToken"},
    )
    rendered = render(record, ENDPOINT)
    (header,) = _supervisor(rendered)["server"]["headers"]["Authorization"]
    assert header.startswith("Bearer ${file:")
    assert AUTH_TOKEN_ENV not in {e["name"] for e in _container(rendered)["env"]}


@pytest.mark.parametrize(
    "spec",
    [{}, {"authSecretRef": {"name": "fleet-token"}}, {"agentAuth": {"mode": "None"}}],
    ids=["none", "token", "explicit-none"],
)
def test_other_modes_mount_no_service_account_token(spec: dict[str, Any]) -> None:
    rendered = render(_record(**spec), ENDPOINT)
    assert "agent-token" not in _volumes(rendered)
    assert "agent-token" not in _mounts(rendered)
    headers = _supervisor(rendered)["server"].get("headers", {})
    assert all("${file:" not in h for h in headers.get("Authorization", []))


def test_pods_of_a_service_account_the_fleet_does_not_admit_are_an_error() -> None:
    with pytest.raises(TemplateError, match=r"'default'.*does not admit"):
        render(_sa_record({"image": "img"}, serviceAccounts=["collector"]), ENDPOINT)
    with pytest.raises(TemplateError, match="'other'"):
        render(
            _sa_record({"image": "img", "serviceAccountName": "other"}, serviceAccounts=["a"]),
            ENDPOINT,
        )
    # Any account when the fleet names none; the default one when the template names none.
    assert render(_sa_record({"image": "img"}), ENDPOINT).workload["kind"] == "Deployment"


# ---- wss:// and the CA --------------------------------------------------------------

WSS = "wss://opamp-operator.opamp-system.svc:4320/v1/opamp"


def test_a_ca_config_map_is_mounted_and_verifies_the_wss_endpoint() -> None:
    record = _record({"image": "img", "caConfigMapRef": {"name": "opamp-ca", "key": "bundle.pem"}})
    rendered = render(record, WSS)
    volume = _volumes(rendered)["server-ca"]
    assert volume["configMap"] == {
        "name": "opamp-ca",
        "items": [{"key": "bundle.pem", "path": "ca.crt"}],
    }
    mount = _mounts(rendered)["server-ca"]
    assert mount["readOnly"] is True
    server = _supervisor(rendered)["server"]
    assert server == {"endpoint": WSS, "tls": {"ca_file": f"{mount['mountPath']}/ca.crt"}}
    # The key defaults to cert-manager's and trust-manager's name.
    default = render(_record({"image": "img", "caConfigMapRef": {"name": "opamp-ca"}}), WSS)
    assert _volumes(default)["server-ca"]["configMap"]["items"] == [
        {"key": "ca.crt", "path": "ca.crt"}
    ]


def test_without_a_ca_a_wss_endpoint_is_verified_against_the_system_roots() -> None:
    rendered = render(_record(), WSS)
    server = _supervisor(rendered)["server"]
    assert server == {"endpoint": WSS}  # no tls: verification on, system roots
    assert "server-ca" not in _volumes(rendered)
    # supervisorConfig still has the last word (a client certificate, say).
    tls = {"ca_file": "/x/ca.crt", "cert_file": "/x/tls.crt", "key_file": "/x/tls.key"}
    overridden = _record(
        {
            "image": "img",
            "caConfigMapRef": {"name": "opamp-ca"},
            "supervisorConfig": {"server": {"tls": tls}},
        }
    )
    assert _supervisor(render(overridden, WSS))["server"]["tls"] == tls


OPERATOR_CA = "-----BEGIN CERTIFICATE-----\nthe operator's CA\n-----END CERTIFICATE-----\n"


def test_the_operators_ca_goes_beside_the_supervisor_config_for_its_own_wss_endpoint() -> None:
    rendered = render(_record(), WSS, agent_ca=OPERATOR_CA)
    data = rendered.config_map["data"]
    assert data["ca.crt"] == OPERATOR_CA
    mount = _mounts(rendered)["supervisor-config"]
    assert _supervisor(rendered)["server"] == {
        "endpoint": WSS,
        "tls": {"ca_file": f"{mount['mountPath']}/ca.crt"},
    }
    assert "server-ca" not in _volumes(rendered)

    def digest(r: Rendered) -> str:
        value: str = _pod_template(r)["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        return value

    # A new CA rolls the pods (the supervisor reads its ca_file once); no CA, no change.
    assert digest(render(_record(), WSS, agent_ca=OPERATOR_CA + "\n")) != digest(rendered)
    assert digest(render(_record(), WSS)) == digest(render(_record(), WSS, agent_ca=None))


@pytest.mark.parametrize(
    ("why", "spec", "endpoint"),
    [
        ("plaintext", {}, ENDPOINT),
        ("the fleet's own CA", {"caConfigMapRef": {"name": "opamp-ca"}}, WSS),
        (
            "another endpoint",
            {"supervisorConfig": {"server": {"endpoint": "wss://elsewhere:4320/v1/opamp"}}},
            WSS,
        ),
        (
            "a ca_file of the fleet's",
            {"supervisorConfig": {"server": {"tls": {"ca_file": "/x/ca.crt"}}}},
            WSS,
        ),
    ],
)
def test_the_operators_ca_is_left_out(why: str, spec: dict[str, Any], endpoint: str) -> None:
    rendered = render(_record({"image": "img", **spec}), endpoint, agent_ca=OPERATOR_CA)
    assert "ca.crt" not in rendered.config_map["data"], why
    tls = _supervisor(rendered)["server"].get("tls", {})
    assert tls.get("ca_file") != "/etc/opampsupervisor/ca.crt", why


def test_the_node_agents_example_renders_with_a_token_the_fleet_admits() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "node-agents-template.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    (fleet,) = [d for d in docs if d["kind"] == "CollectorFleet"]
    spec = CollectorFleetSpec.model_validate(fleet["spec"])
    selector = FleetSelector.from_label_selector(
        "observability", "node-agents", 0.0, spec.selector.model_dump(by_alias=True)
    )
    rendered = render(FleetRecord("observability", "node-agents", UID, 1, selector, spec), ENDPOINT)
    assert rendered.workload["kind"] == "DaemonSet"
    assert _pod_template(rendered)["spec"]["serviceAccountName"] == "otel-node-agent"
    assert "agent-token" in _volumes(rendered)


def _staged(
    record: FleetRecord, stable: dict[str, Any], members: int = 0, back: bool = False
) -> FleetRecord:
    """`record` governed by a rollout staging its template over `stable`'s."""
    old = FleetTemplate.model_validate(stable)
    template = record.spec.template
    assert template is not None
    slots = frozenset(f"replica-{i}" for i in range(members))
    pods = PodStaging(
        template.kind == "DaemonSet",
        record.template_hash,
        old.digest(),
        back,
        frozenset() if back else slots,
    )
    record.governance = Governance(
        rollout="observability/upgrade",
        membership=Membership.nobody("rev"),
        stable_revision="gateways-1",
        stable_hash="old",
        stable_template=old,
        pods=pods,
    )
    return record


def _image(workload: dict[str, Any]) -> str:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


def test_a_staged_deployment_is_the_stable_one_beside_a_canary_of_the_desired_template() -> None:
    record = _staged(_record({"image": "otelcol:b", "replicas": 4}), {"image": "otelcol:a"}, 1)
    # The stable Deployment gives up a pod only once the canary's is available: a surge.
    starting = render(record, ENDPOINT)
    assert starting.workload["spec"]["replicas"] == 4
    rendered = render(record, ENDPOINT, split=Split(canary_available=1))
    assert render(record, ENDPOINT, split=Split(3)).workload == rendered.workload
    assert rendered.canary is not None
    main, canary = rendered.workload, rendered.canary
    assert (main["metadata"]["name"], _image(main), main["spec"]["replicas"]) == (
        "gateways-collector",
        "otelcol:a",
        3,
    )
    assert (canary["metadata"]["name"], _image(canary), canary["spec"]["replicas"]) == (
        "gateways-collector-canary",
        "otelcol:b",
        1,
    )
    # Selectors that do not overlap: the stable one's is immutable and must not count
    # the canary's pods as its own.
    canary_labels = canary["spec"]["template"]["metadata"]["labels"]
    main_selector = main["spec"]["selector"]["matchLabels"]
    assert not all(canary_labels.get(k) == v for k, v in main_selector.items())
    assert canary_labels[CANARY_LABEL] == "gateways"
    assert WORKLOAD_LABEL not in canary_labels
    assert canary_labels[TEMPLATE_LABEL] == record.template_hash
    assert main["spec"]["template"]["metadata"]["labels"][TEMPLATE_LABEL] != record.template_hash
    assert record.selector.selects(pod_view(_as_pod(Rendered(rendered.config_map, canary))))
    # An image change gives the supervisor the same config: one ConfigMap serves both.
    assert rendered.canary_config_map is None
    assert [o["kind"] for o in rendered.objects] == ["ConfigMap", "Deployment", "Deployment"]


def test_a_staged_supervisor_config_change_gives_the_canary_its_own_config_map() -> None:
    desired = {"image": "otelcol:b", "supervisorConfig": {"agent": {"args": ["--x"]}}}
    rendered = render(_staged(_record(desired), {"image": "otelcol:a"}, 1), ENDPOINT)
    assert rendered.canary is not None
    assert rendered.canary_config_map is not None
    assert rendered.canary_config_map["metadata"]["name"] == "gateways-supervisor-canary"
    volumes = {
        v["name"]: v["configMap"]["name"]
        for v in rendered.canary["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }
    assert volumes["supervisor-config"] == "gateways-supervisor-canary"
    assert "--x" not in rendered.config_map["data"][CONFIG_KEY]


def test_no_canary_before_the_first_member_and_none_after_a_rollback() -> None:
    for members, back in ((0, False), (2, True)):
        record = _staged(_record({"image": "b", "replicas": 2}), {"image": "a"}, members, back)
        rendered = render(record, ENDPOINT)
        assert rendered.canary is None
        assert (_image(rendered.workload), rendered.workload["spec"]["replicas"]) == ("a", 2)


def test_a_staged_daemon_set_waits_on_delete_with_the_desired_template_until_rolled_back() -> None:
    desired = {"kind": "DaemonSet", "image": "otelcol:b"}
    stable = {"kind": "DaemonSet", "image": "otelcol:a"}
    rendered = render(_staged(_record(desired), stable), ENDPOINT)
    assert rendered.workload["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert _image(rendered.workload) == "otelcol:b"
    assert rendered.canary is None
    back = render(_staged(_record(desired), stable, back=True), ENDPOINT)
    assert back.workload["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert _image(back.workload) == "otelcol:a"
    plain = render(_record(desired), ENDPOINT)  # no rollout stages it: Kubernetes' default
    assert "updateStrategy" not in plain.workload["spec"]


def test_the_stable_deployment_never_takes_a_pod_back_while_the_rollout_goes_on() -> None:
    """4 replicas, a step of 2 canary pods: it gives up one per available canary pod,
    takes none back when a canary pod is unready for a moment (or the operator restarts
    and reads it so), and never holds fewer than the step leaves it."""
    assert Split(0, 4).stable(4, 2) == 4
    assert Split(1, 4).stable(4, 2) == 3
    assert Split(2, 3).stable(4, 2) == 2
    assert Split(0, 2).stable(4, 2) == 2  # a canary pod unready again: still 2
    assert Split(0, 1).stable(4, 2) == 2  # below what the step leaves: back to 2
    assert Split(0, 4).stable(6, 2) == 4  # replicas raised mid-rollout
    assert Split(1).stable(4, 2) == 3  # no stable Deployment yet


def test_a_promoted_template_reaches_the_stable_deployment_before_its_replicas() -> None:
    """The rollout over, the stable Deployment takes the canary's template at the pods
    it has, then, once they all run it, its replicas: scaling while old pods are left
    would scale them up too."""
    record = _record({"image": "otelcol:b", "replicas": 3})
    before = Split(3, 1, "old-template", canary=True)
    assert render(record, ENDPOINT, split=before).workload["spec"]["replicas"] == 1
    taking = Split(3, 1, record.template_hash, canary=True, stable_rolled_out=False)
    assert render(record, ENDPOINT, split=taking).workload["spec"]["replicas"] == 1
    taken = Split(3, 1, record.template_hash, canary=True)
    assert render(record, ENDPOINT, split=taken).workload["spec"]["replicas"] == 3
    gone = Split(0, 1, "old-template", canary=False)  # no canary: nothing to wait for
    assert render(record, ENDPOINT, split=gone).workload["spec"]["replicas"] == 3
