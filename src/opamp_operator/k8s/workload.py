"""Template mode: the Collector workload a fleet renders itself.

A fleet with `spec.template` gets, owned by the fleet (so deleting it garbage-collects
them), named after it:

- ConfigMap `<fleet>-supervisor`: the opampsupervisor config. The Collector config is not
  in it: it arrives over OpAMP, so the container runs the supervisor, which accepts remote
  config and runs the Collector (`agentExecutable`) with it.
- Deployment (or DaemonSet) `<fleet>-collector`: pods labelled with the fleet's
  `matchLabels` plus `app.kubernetes.io/managed-by: opamp-operator` and
  `opampoperator.io/fleet-workload: <fleet>` (the workload's own, immutable selector);
  the pod identity comes from the downward API into the agent's non-identifying
  attributes (`k8s.pod.uid` first, which the operator maps agents by); the pod template
  declares the `opampoperator.io/agent-ready` readiness gate. Pods run restricted (non-root,
  no privilege escalation, read-only root, no capabilities, seccomp RuntimeDefault): the
  supervisor writes only to its storage directory, an emptyDir.

What the agent proves follows what the fleet requires (spec.agentAuth): with
ServiceAccountToken a projected token (bound to the pod, for the operator's audience) is
mounted and the supervisor sends it as its bearer token (`${file:...}`, read when the
supervisor starts: opampsupervisor v0.149 has no way to re-read it, as
tests/world_proofs/test_operator_template.py shows; hence the long default lifetime);
with the fleet's token, that token from its Secret. With `caConfigMapRef` the supervisor
verifies a wss:// endpoint against that CA.

The pod label is not `opampoperator.io/fleet`: a DaemonSet copies its pod labels onto its
own ControllerRevisions, which would then be listed as the fleet's config revisions.

Rendering is pure (fleet, spec, endpoint -> manifests). Applying is server-side apply as
`opamp-operator`, so fields dropped from the template are dropped from the objects; an
object of the same name the fleet does not control is never taken over.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import kopf
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import (
    AGENT_READY_CONDITION,
    API_VERSION,
    DEFAULT_TOKEN_EXPIRATION,
    GROUP,
    CollectorFleetSpec,
    FleetTemplate,
    WorkloadKind,
)
from opamp_operator.fleet.mapping import ATTR_NAMESPACE, ATTR_POD_NAME, ATTR_POD_UID, AuthMode
from opamp_operator.fleet.pod_rollout import to_replace
from opamp_operator.fleet.views import PodView
from opamp_operator.k8s.reads import get_or_none
from opamp_operator.k8s.settings import AgentTokenSettings
from opamp_operator.k8s.state import FleetRecord

MANAGER = "opamp-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
WORKLOAD_LABEL = f"{GROUP}/fleet-workload"
# A canary Deployment's own selector label, in place of WORKLOAD_LABEL: the stable
# Deployment's (immutable) selector must not select the canary's pods.
CANARY_LABEL = f"{GROUP}/fleet-canary"
# The pod template's hash (fleet.pod_rollout.template_hash): which revision's template a
# pod runs, what a staged rollout's membership selects by.
TEMPLATE_LABEL = f"{GROUP}/template-hash"
CONFIG_HASH_ANNOTATION = f"{GROUP}/supervisor-config-hash"
CONTAINER = "collector"
CONFIG_DIR = "/etc/opampsupervisor"
CONFIG_KEY = "supervisor.yaml"
STORAGE_DIR = "/var/lib/opampsupervisor"
AUTH_TOKEN_ENV = "OPAMP_AUTH_TOKEN"  # noqa: S105 - the name of an env var
# agentAuth ServiceAccountToken: the projected token, and the audience it is issued for
# (the operator's default --agent-token-audience: one definition, in AgentTokenSettings).
TOKEN_VOLUME = "agent-token"  # noqa: S105 - a volume's name
TOKEN_DIR = "/var/run/secrets/opamp-operator"  # noqa: S105 - a path
TOKEN_PATH = "token"  # noqa: S105 - a file name in the volume
TOKEN_AUDIENCE = AgentTokenSettings().audiences[0]
# caConfigMapRef: the CA a wss:// endpoint is verified with. Without it, the operator's
# own --agent-ca-file goes into the fleet's ConfigMap beside the supervisor's config.
CA_VOLUME = "server-ca"
CA_DIR = "/etc/opamp-operator/ca"
CA_PATH = "ca.crt"
OPERATOR_CA_FILE = f"{CONFIG_DIR}/{CA_PATH}"
# Restricted defaults (the Pod Security Standard "restricted"); the template's
# podSecurityContext / securityContext are merged over them key by key.
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
ATTR_NODE_NAME = "k8s.node.name"
# Downward API env var -> pod field. The Collector inherits them too, so a remote config
# can say ${env:K8S_NODE_NAME} (a DaemonSet's kubeletstats receiver, for instance) or
# listen on ${env:K8S_POD_IP}:4317 rather than on every interface.
POD_ENV = {
    "K8S_POD_NAME": "metadata.name",
    "K8S_NAMESPACE": "metadata.namespace",
    "K8S_POD_UID": "metadata.uid",
    "K8S_NODE_NAME": "spec.nodeName",
    "K8S_POD_IP": "status.podIP",
}
# Agent attribute -> the env var its value comes from, expanded by the supervisor itself
# (it loads its config through the Collector's confmap resolver with the env provider).
POD_ATTRIBUTES = {
    ATTR_POD_NAME: "K8S_POD_NAME",
    ATTR_NAMESPACE: "K8S_NAMESPACE",
    ATTR_POD_UID: "K8S_POD_UID",
    ATTR_NODE_NAME: "K8S_NODE_NAME",
}
# opampsupervisor's defaults (3 s to start the Collector, 5 s for it to turn healthy on a
# new config) are too short for a Collector under a CPU limit; a timeout here means the
# supervisor exits or reports a good config as failed.
AGENT_TIMEOUT = "30s"
_MAX_LABEL_VALUE = 63
_SCHEMES = ("ws", "wss", "http", "https")


class TemplateError(ValueError):
    """The template cannot be rendered or applied as written; the message is for the
    fleet's status."""


@dataclass(frozen=True)
class Rendered:
    """What a template becomes: the supervisor's ConfigMap and the workload; while a
    rollout stages a template change, the canary Deployment of the desired template and
    its own ConfigMap when its supervisor config differs from the stable one's."""

    config_map: dict[str, Any]
    workload: dict[str, Any]
    canary_config_map: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None

    @property
    def objects(self) -> tuple[dict[str, Any], ...]:
        """In apply order: the pods mount the ConfigMaps."""
        found = (self.config_map, self.canary_config_map, self.workload, self.canary)
        return tuple(obj for obj in found if obj is not None)


def workload_name(fleet: str) -> str:
    return f"{fleet}-collector"


def config_map_name(fleet: str) -> str:
    return f"{fleet}-supervisor"


def canary_name(fleet: str) -> str:
    return f"{fleet}-collector-canary"


def canary_config_map_name(fleet: str) -> str:
    return f"{fleet}-supervisor-canary"


def selector_labels(fleet: str, canary: bool = False) -> dict[str, str]:
    """The workload's own selector: immutable, so not the fleet's (which may change)."""
    if len(fleet) > _MAX_LABEL_VALUE:
        raise TemplateError(
            f"template mode needs a fleet name of at most {_MAX_LABEL_VALUE} characters "
            f"(it is the value of the pod label {WORKLOAD_LABEL})"
        )
    return {MANAGED_BY_LABEL: MANAGER, CANARY_LABEL if canary else WORKLOAD_LABEL: fleet}


def is_workload_pod(pod: PodView, record: FleetRecord) -> bool:
    """A pod of the fleet's workload, stable or canary."""
    return pod.namespace == record.namespace and record.name in (
        pod.labels.get(WORKLOAD_LABEL),
        pod.labels.get(CANARY_LABEL),
    )


def template_of(pod: PodView) -> str:
    return pod.labels.get(TEMPLATE_LABEL, "")


def pod_labels(record: FleetRecord, canary: bool = False) -> dict[str, str]:
    """The fleet's matchLabels plus the workload's; the fleet's selector must select the
    result, or the fleet would not see its own pods."""
    own = selector_labels(record.name, canary)
    wanted = dict(record.selector.match_labels)
    clashes = sorted(k for k, v in own.items() if k in wanted and wanted[k] != v)
    if clashes:
        raise TemplateError(
            f"spec.selector.matchLabels sets {', '.join(clashes)}, which template mode "
            "sets on the pods it renders"
        )
    labels = {**wanted, **own}
    for req in record.selector.match_expressions:
        if not req.matches(labels):
            values = f" {list(req.values)}" if req.values else ""
            raise TemplateError(
                f"spec.selector.matchExpressions {req.key} {req.operator}{values} does not "
                f"select the template's pods (labels {labels}); select them with matchLabels"
            )
    return labels


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: maps merged key by key, any other value replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _without_nulls(value: Mapping[str, Any]) -> dict[str, Any]:
    """A merged map with the keys set to null left out: how a user removes a default."""
    return {
        k: _without_nulls(v) if isinstance(v, Mapping) else v
        for k, v in value.items()
        if v is not None
    }


def sends_service_account_token(spec: CollectorFleetSpec) -> bool:
    """Whether the pods' agents present a projected ServiceAccount token: exactly when the
    fleet requires one. Its Token mode needs the fleet's token in the same Authorization
    header instead; None asks for nothing (and the operator may run without TokenReview
    to check a token with: `serve`)."""
    return spec.auth_mode is AuthMode.SERVICE_ACCOUNT_TOKEN


def _sends_fleet_token(spec: CollectorFleetSpec) -> bool:
    return spec.auth_secret_ref is not None and not sends_service_account_token(spec)


def supervisor_config(
    spec: CollectorFleetSpec,
    agent_endpoint: str | None,
    agent_ca: str | None = None,
    template: FleetTemplate | None = None,
) -> dict[str, Any]:
    """The opampsupervisor config for the fleet's pods; `agent_ca`: the operator's CA,
    which pods verify a wss:// / https:// endpoint with unless the fleet names its own;
    `template`: another than spec.template (a staged rollout's stable one)."""
    template = template or _template(spec)
    server: dict[str, Any] = {"endpoint": agent_endpoint} if agent_endpoint else {}
    if sends_service_account_token(spec):
        # Expanded by the supervisor's file provider when it loads its config (once).
        token = f"{TOKEN_DIR}/{TOKEN_PATH}"
        server["headers"] = {"Authorization": [f"Bearer ${{file:{token}}}"]}
    elif _sends_fleet_token(spec):
        server["headers"] = {"Authorization": [f"Bearer ${{env:{AUTH_TOKEN_ENV}}}"]}
    if template.ca_config_map_ref is not None:
        server["tls"] = {"ca_file": f"{CA_DIR}/{CA_PATH}"}
    rendered = {
        "server": server,
        "capabilities": {
            "accepts_remote_config": True,
            "reports_remote_config": True,
            "reports_effective_config": True,
            "reports_health": True,
            "reports_heartbeat": True,
            "reports_own_metrics": False,
        },
        "agent": {
            "executable": template.agent_executable,
            "bootstrap_timeout": AGENT_TIMEOUT,
            "config_apply_timeout": AGENT_TIMEOUT,
            "description": {
                "non_identifying_attributes": {
                    attr: f"${{env:{var}}}" for attr, var in POD_ATTRIBUTES.items()
                }
            },
        },
        "storage": {"directory": STORAGE_DIR},
    }
    config = merge(rendered, template.supervisor_config or {})
    _check_endpoint(config)
    if agent_ca is not None and _trusts_operator_ca(config, template, agent_endpoint):
        config["server"] = merge(config["server"], {"tls": {"ca_file": OPERATOR_CA_FILE}})
    return config


def _trusts_operator_ca(
    config: Mapping[str, Any], template: FleetTemplate, agent_endpoint: str | None
) -> bool:
    """The pods verify the operator with the operator's own CA when they connect to the
    operator's endpoint over TLS and name no CA of their own."""
    server = config["server"]
    tls = server.get("tls")
    return (
        template.ca_config_map_ref is None
        and agent_endpoint is not None
        and server["endpoint"] == agent_endpoint
        and urlsplit(agent_endpoint).scheme in ("wss", "https")
        and not (isinstance(tls, Mapping) and tls.get("ca_file"))
    )


def operator_ca_data(config: Mapping[str, Any], agent_ca: str | None) -> dict[str, str]:
    """The ConfigMap entry the supervisor's ca_file reads, when it reads the operator's."""
    tls = config["server"].get("tls")
    uses = isinstance(tls, Mapping) and tls.get("ca_file") == OPERATOR_CA_FILE
    return {CA_PATH: agent_ca} if uses and agent_ca is not None else {}


def _check_endpoint(config: Mapping[str, Any]) -> None:
    server = config.get("server")
    endpoint = server.get("endpoint") if isinstance(server, Mapping) else None
    if not endpoint:
        raise TemplateError(
            "template mode needs the OpAMP URL its Collectors connect to: run the operator "
            "with --agent-endpoint=ws://<service>.<namespace>.svc:4320/v1/opamp, or set "
            "spec.template.supervisorConfig.server.endpoint"
        )
    if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in _SCHEMES:
        raise TemplateError(
            f"the agents' OpAMP endpoint {endpoint!r} is not a {'/'.join(_SCHEMES)} URL"
        )


def _template(spec: CollectorFleetSpec) -> FleetTemplate:
    if spec.template is None:
        raise TemplateError("the fleet has no spec.template")
    return spec.template


def owner_reference(record: FleetRecord) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "CollectorFleet",
        "name": record.name,
        "uid": record.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(record: FleetRecord, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": record.namespace,
        "labels": selector_labels(record.name),
        "ownerReferences": [owner_reference(record)],
    }


def _check_service_account(record: FleetRecord, template: FleetTemplate) -> None:
    """The pods' ServiceAccount must be one the fleet admits, or every agent is refused."""
    auth = record.spec.agent_auth
    admitted = auth.service_accounts if auth is not None else []
    account = template.service_account_name or "default"
    if sends_service_account_token(record.spec) and admitted and account not in admitted:
        raise TemplateError(
            f"the pods would run as ServiceAccount {account!r} "
            f"(template.serviceAccountName), which spec.agentAuth.serviceAccounts "
            f"{admitted} does not admit"
        )


def token_volume(template: FleetTemplate, audience: str) -> dict[str, Any]:
    """The projected ServiceAccount token: bound to the pod by the kubelet's TokenRequest."""
    projection = template.service_account_token
    expiration = (
        projection.expiration_seconds if projection is not None else DEFAULT_TOKEN_EXPIRATION
    )
    source = {"audience": audience, "expirationSeconds": expiration, "path": TOKEN_PATH}
    return {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": source}]}}


def pod_template(
    record: FleetRecord,
    template: FleetTemplate,
    config_data: Mapping[str, str],
    audience: str = TOKEN_AUDIENCE,
    *,
    config_map: str | None = None,
    canary: bool = False,
) -> dict[str, Any]:
    """`config_data`: the data of the ConfigMap `config_map` (the supervisor's config,
    the CA; default the fleet's); `canary`: a pod of the canary Deployment."""
    _check_service_account(record, template)
    env: list[dict[str, Any]] = [
        {"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for var, path in POD_ENV.items()
    ]
    ref = record.spec.auth_secret_ref
    if ref is not None and _sends_fleet_token(record.spec):
        env.append(
            {
                "name": AUTH_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    mounts: list[dict[str, Any]] = [
        {"name": "supervisor-config", "mountPath": CONFIG_DIR, "readOnly": True},
        # The one place the supervisor writes (the root filesystem is read-only): its
        # persistent state, the Collector's config and log, configs it validates.
        {"name": "supervisor-storage", "mountPath": STORAGE_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "supervisor-config",
            "configMap": {"name": config_map or config_map_name(record.name)},
        },
        # The supervisor keeps the agent's instance UID and last remote config here:
        # kept across container restarts, new for a new pod (a new pod is a new agent).
        {"name": "supervisor-storage", "emptyDir": {}},
    ]
    if sends_service_account_token(record.spec):
        mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
        volumes.append(token_volume(template, audience))
    if template.ca_config_map_ref is not None:
        ca = template.ca_config_map_ref
        mounts.append({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True})
        volumes.append(
            {
                "name": CA_VOLUME,
                "configMap": {"name": ca.name, "items": [{"key": ca.key, "path": CA_PATH}]},
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": template.image,
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": _without_nulls(
            merge(CONTAINER_SECURITY_CONTEXT, template.security_context or {})
        ),
    }
    if template.resources is not None:
        container["resources"] = template.resources
    spec: dict[str, Any] = {
        "securityContext": _without_nulls(
            merge(POD_SECURITY_CONTEXT, template.pod_security_context or {})
        ),
        "readinessGates": [{"conditionType": AGENT_READY_CONDITION}],
        "containers": [container],
        "volumes": volumes,
    }
    if template.service_account_name:
        spec["serviceAccountName"] = template.service_account_name
    files = "".join(config_data[key] for key in sorted(config_data))
    digest = hashlib.sha256(files.encode()).hexdigest()[:16]
    return {
        "metadata": {
            "labels": {
                **pod_labels(record, canary),
                TEMPLATE_LABEL: template.digest(),
            },
            # The supervisor reads its config and CA once: a new one must roll the pods.
            "annotations": {CONFIG_HASH_ANNOTATION: digest},
        },
        "spec": spec,
    }


def render(
    record: FleetRecord,
    agent_endpoint: str | None,
    audience: str = TOKEN_AUDIENCE,
    agent_ca: str | None = None,
    *,
    split: Split | None = None,
) -> Rendered:
    """The fleet's ConfigMap and workload; raises TemplateError for what the user must fix.
    `audience`: what the pods' ServiceAccount tokens are issued for (the operator's
    --agent-token-audience); `agent_ca`: the operator's --agent-ca-file (PEM);
    `split`: a staged Deployment's pods now (Split.read).

    While a rollout stages a template change (`record.governance.pods`), the workloads
    are those of docs/rollout.md "Template changes": a DaemonSet on OnDelete whose
    template is the desired one (the stable one after a rollback), or the stable
    Deployment scaled down by the canary Deployment's replicas of the desired template."""
    desired = _template(record.spec)
    side = _Side(record, agent_endpoint, audience, agent_ca)
    g = record.governance
    staging = g.pods if g is not None else None
    stable = g.stable_template if g is not None else None
    if staging is None or stable is None:
        config_map = side.config_map(desired, config_map_name(record.name))
        replicas = (split or Split()).promoted(desired.replicas, record.template_hash)
        return Rendered(config_map, side.workload(desired, config_map, replicas=replicas))
    stable = stable.model_copy(update={"replicas": desired.replicas, "kind": desired.kind})
    config_map = side.config_map(stable, config_map_name(record.name))
    # One ConfigMap while both templates give the supervisor the same config (an image
    # change); the desired one's own while they differ.
    ours, own = config_map, None
    if side.config_map(desired, config_map["metadata"]["name"])["data"] != config_map["data"]:
        ours = own = side.config_map(desired, canary_config_map_name(record.name))
    if staging.daemon_set:
        runs, mounts = (stable, config_map) if staging.back else (desired, ours)
        daemon_set = side.workload(runs, mounts, on_delete=True)
        return Rendered(config_map, daemon_set, own if not staging.back else None)
    canary = staging.canary_replicas
    main = side.workload(
        stable, config_map, replicas=(split or Split()).stable(desired.replicas, canary)
    )
    if not canary:
        return Rendered(config_map, main)
    return Rendered(config_map, main, own, side.workload(desired, ours, canary=canary))


@dataclass(frozen=True)
class _Side:
    """Renders one template's ConfigMap and workload for the fleet."""

    record: FleetRecord
    agent_endpoint: str | None
    audience: str
    agent_ca: str | None

    def config_map(self, template: FleetTemplate, name: str) -> dict[str, Any]:
        config = supervisor_config(self.record.spec, self.agent_endpoint, self.agent_ca, template)
        data = {
            CONFIG_KEY: yaml.safe_dump(config, sort_keys=False),
            **operator_ca_data(config, self.agent_ca),
        }
        meta = _metadata(self.record, name)
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}

    def workload(
        self,
        template: FleetTemplate,
        config_map: Mapping[str, Any],
        *,
        replicas: int | None = None,
        canary: int | None = None,
        on_delete: bool = False,
    ) -> dict[str, Any]:
        """`canary`: the canary Deployment of that many replicas; `on_delete`: a
        DaemonSet whose pods the operator replaces itself."""
        record = self.record
        is_canary = canary is not None
        pods = pod_template(
            record,
            template,
            config_map["data"],
            self.audience,
            config_map=config_map["metadata"]["name"],
            canary=is_canary,
        )
        spec: dict[str, Any] = {
            "selector": {"matchLabels": selector_labels(record.name, is_canary)},
            "template": pods,
        }
        if template.kind == WorkloadKind.DEPLOYMENT:
            count = canary if canary is not None else replicas
            spec = {"replicas": template.replicas if count is None else count, **spec}
        elif on_delete:
            spec["updateStrategy"] = {"type": "OnDelete"}
        name = canary_name(record.name) if is_canary else workload_name(record.name)
        metadata = _metadata(record, name)
        kind = str(template.kind)
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": metadata, "spec": spec}


class Ownership(StrEnum):
    OURS = "ours"
    # Controlled by an earlier fleet of the same name: garbage whose owner is gone.
    STALE = "stale"
    FOREIGN = "foreign"


def ownership(owner_references: Sequence[Mapping[str, Any]], record: FleetRecord) -> Ownership:
    controller = next((r for r in owner_references if r.get("controller")), None)
    if controller is None:
        return Ownership.FOREIGN
    if controller.get("uid") == record.uid:
        return Ownership.OURS
    if (
        controller.get("kind") == "CollectorFleet"
        and str(controller.get("apiVersion", "")).startswith(f"{GROUP}/")
        and controller.get("name") == record.name
    ):
        return Ownership.STALE
    return Ownership.FOREIGN


@dataclass(frozen=True)
class _Kind:
    read: Callable[..., Any]
    patch: Callable[..., Any]
    delete: Callable[..., Any]


def _kinds() -> dict[str, _Kind]:
    apps: Any = k8s.AppsV1Api()
    core: Any = k8s.CoreV1Api()
    return {
        "ConfigMap": _Kind(
            core.read_namespaced_config_map,
            core.patch_namespaced_config_map,
            core.delete_namespaced_config_map,
        ),
        "Deployment": _Kind(
            apps.read_namespaced_deployment,
            apps.patch_namespaced_deployment,
            apps.delete_namespaced_deployment,
        ),
        "DaemonSet": _Kind(
            apps.read_namespaced_daemon_set,
            apps.patch_namespaced_daemon_set,
            apps.delete_namespaced_daemon_set,
        ),
        "Pod": _Kind(
            core.read_namespaced_pod,
            core.patch_namespaced_pod,
            core.delete_namespaced_pod,
        ),
    }


def _read(kind: _Kind, name: str, namespace: str) -> Any | None:
    return get_or_none(kind.read, name, namespace)


def _owner_refs(obj: Any) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": r.api_version,
            "kind": r.kind,
            "name": r.name,
            "uid": r.uid,
            "controller": bool(r.controller),
        }
        for r in obj.metadata.owner_references or []
    ]


def _delete(kind: _Kind, obj: Any) -> bool:
    """Delete exactly this object (uid precondition); False if it was already gone."""
    return _delete_exactly(kind, obj.metadata.name, obj.metadata.namespace, obj.metadata.uid)


def _delete_exactly(kind: _Kind, name: str, namespace: str, uid: str) -> bool:
    """Delete the object of that name only if it is still the one of `uid`; False if it
    was already gone (or replaced)."""
    options = k8s.V1DeleteOptions(
        propagation_policy="Background",
        preconditions=k8s.V1Preconditions(uid=uid),
    )
    try:
        kind.delete(name, namespace, body=options)
    except ApiException as exc:
        if exc.status in (404, 409):
            return False
        raise
    return True


def _apply_one(kinds: Mapping[str, _Kind], record: FleetRecord, obj: dict[str, Any]) -> str | None:
    """Server-side apply one object; returns what changed, None when nothing did."""
    what = f"{obj['kind']} {obj['metadata']['name']}"
    kind = kinds[obj["kind"]]
    name = obj["metadata"]["name"]
    current = _read(kind, name, record.namespace)
    verb = "updated"
    if current is not None:
        owner = ownership(_owner_refs(current), record)
        if owner == Ownership.FOREIGN:
            raise TemplateError(f"{what} exists and is not controlled by this fleet")
        if current.metadata.deletion_timestamp is not None:
            raise kopf.TemporaryError(f"waiting for {what} to be deleted", delay=5)
        if owner == Ownership.STALE:
            _delete(kind, current)
            current, verb = None, "replaced"
    else:
        verb = "created"
    try:
        applied = kind.patch(
            name,
            record.namespace,
            obj,
            field_manager=MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
    except ApiException as exc:
        if exc.status in (400, 422):
            raise TemplateError(f"{what} was refused: {_reason(exc)}") from None
        raise
    if current is not None and applied.metadata.resource_version == (
        current.metadata.resource_version
    ):
        return None
    return f"{verb} {what}"


def _reason(exc: ApiException) -> str:
    try:
        body = yaml.safe_load(exc.body or "")
    except yaml.YAMLError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason)


@dataclass(frozen=True)
class Applied:
    changes: list[str]  # what changed, for Events
    settled: bool  # nothing staged or waiting: the workloads change only with the spec


def apply(record: FleetRecord, rendered: Rendered, pods: Sequence[PodView] = ()) -> Applied:
    """Create or update the rendered objects, remove a workload of the other kind and a
    canary no longer wanted, replace the DaemonSet pods a staged rollout names (`pods`:
    the pods the operator knows)."""
    kinds = _kinds()
    changes = [c for obj in rendered.objects if (c := _apply_one(kinds, record, obj))]
    other = "DaemonSet" if rendered.workload["kind"] == "Deployment" else "Deployment"
    targets = [(other, workload_name(record.name))]
    canary_kept = rendered.canary is not None or not _canary_may_go(kinds, record)
    if not canary_kept:
        targets.append(("Deployment", canary_name(record.name)))
    if rendered.canary_config_map is None and not canary_kept:
        targets.append(("ConfigMap", canary_config_map_name(record.name)))
    changes += _remove(kinds, record, targets)
    changes += _replace_pods(kinds, record, pods)
    g = record.governance
    staged = g is not None and g.pods is not None
    return Applied(changes, settled=not staged and not canary_kept)


@dataclass(frozen=True)
class Split:
    """A staged Deployment's pods as they are: what the stable Deployment's replicas are
    decided from."""

    canary_available: int = 0
    stable_replicas: int | None = None  # the stable Deployment's spec.replicas now
    stable_template: str = ""  # the template hash its pod template carries now
    canary: bool = False  # the canary Deployment exists
    stable_rolled_out: bool = True  # every pod of the stable Deployment runs its template

    def stable(self, replicas: int, canary: int) -> int:
        """The stable Deployment's replicas beside a canary of `canary`: it gives up a pod
        for each canary pod available (a surge: never fewer serving pods than
        `replicas`), and never takes one back while the rollout goes on (a canary pod
        unready for a moment, an operator restarting, would otherwise start stable pods
        only to stop them again); a rollback renders no canary, and all its pods."""
        wanted = replicas - min(canary, self.canary_available)
        if self.stable_replicas is None:
            return wanted
        return max(replicas - canary, min(self.stable_replicas, wanted))

    def promoted(self, replicas: int, template: str) -> int:
        """The stable Deployment's replicas as it takes the template its canary proved:
        the template first, at the replicas it has, and `replicas` once all its pods run
        it. Scaling while old pods are left would have the Deployment controller scale
        them up too (proportional scaling), starting pods of the old template only to
        replace them."""
        if not self.canary or self.stable_replicas is None:
            return replicas
        if self.stable_template != template or not self.stable_rolled_out:
            return self.stable_replicas
        return replicas

    @classmethod
    def read(cls, record: FleetRecord) -> Split | None:
        """The fleet's two Deployments as they are, while a rollout governs a Deployment
        fleet (None otherwise: nothing read)."""
        template = record.spec.template
        if (
            record.governance is None
            or template is None
            or template.kind != WorkloadKind.DEPLOYMENT
        ):
            return None
        deployment = _kinds()["Deployment"]
        canary = _read(deployment, canary_name(record.name), record.namespace)
        stable = _read(deployment, workload_name(record.name), record.namespace)
        available = canary.status.available_replicas if canary and canary.status else 0
        if stable is None:
            return cls(int(available or 0), canary=canary is not None)
        labels = stable.spec.template.metadata.labels or {}
        return cls(
            int(available or 0),
            stable.spec.replicas,
            labels.get(TEMPLATE_LABEL, ""),
            canary is not None,
            _rolled_out(stable),
        )


def _rolled_out(deployment: Any) -> bool:
    """Every pod of the Deployment runs its current template and is available."""
    status, wanted = deployment.status, deployment.spec.replicas or 0
    return bool(
        status is not None
        and (status.observed_generation or 0) >= (deployment.metadata.generation or 0)
        and (status.replicas or 0) == wanted
        and (status.updated_replicas or 0) == wanted
        and (status.available_replicas or 0) == wanted
    )


def _canary_may_go(kinds: Mapping[str, _Kind], record: FleetRecord) -> bool:
    """A canary Deployment no longer rendered goes once the stable one runs the template
    it ran (the rollout succeeded: it went on serving meanwhile); at once after a
    rollback or when no rollout governs the fleet any more."""
    g = record.governance
    if g is None or (g.pods is not None and g.pods.back):
        return True
    main = _read(kinds["Deployment"], workload_name(record.name), record.namespace)
    template = record.spec.template
    if main is None or template is None:
        return True
    # At its full replicas, not only rolled out: the template first, then the replicas.
    return (main.spec.replicas or 0) == template.replicas and _rolled_out(main)


def _replace_pods(
    kinds: Mapping[str, _Kind], record: FleetRecord, pods: Sequence[PodView]
) -> list[str]:
    """Deletes the DaemonSet pods a staged rollout wants on another template, once the
    DaemonSet controller has seen the template their successors are to run."""
    g = record.governance
    staging = g.pods if g is not None else None
    if staging is None or not staging.daemon_set:
        return []
    daemon_set = _read(kinds["DaemonSet"], workload_name(record.name), record.namespace)
    if daemon_set is None or daemon_set.status is None:
        return []
    if (daemon_set.status.observed_generation or 0) < (daemon_set.metadata.generation or 0):
        return []  # the next tick: a successor now could get the template before
    ours = [p for p in pods if is_workload_pod(p, record)]
    on = "stable" if staging.back else "desired"
    return [
        f"deleted Pod {pod.name} on {pod.node or '?'} to run the {on} template"
        for pod in to_replace(staging, ours, template_of)
        if _delete_exactly(kinds["Pod"], pod.name, pod.namespace, pod.uid)
    ]


def remove(record: FleetRecord) -> list[str]:
    """Delete what an earlier template of this fleet rendered."""
    targets = [
        ("Deployment", workload_name(record.name)),
        ("Deployment", canary_name(record.name)),
        ("DaemonSet", workload_name(record.name)),
        ("ConfigMap", config_map_name(record.name)),
        ("ConfigMap", canary_config_map_name(record.name)),
    ]
    return _remove(_kinds(), record, targets)


def _remove(
    kinds: Mapping[str, _Kind], record: FleetRecord, targets: Sequence[tuple[str, str]]
) -> list[str]:
    removed = []
    for kind_name, name in targets:
        kind = kinds[kind_name]
        current = _read(kind, name, record.namespace)
        if current is None or ownership(_owner_refs(current), record) != Ownership.OURS:
            continue
        if _delete(kind, current):
            removed.append(f"deleted {kind_name} {name}")
    return removed


async def reconcile_workload(
    body: kopf.Body,
    record: FleetRecord,
    agent_endpoint: str | None,
    audience: str = TOKEN_AUDIENCE,
    agent_ca: str | None = None,
    *,
    pods: Sequence[PodView] = (),
) -> bool:
    """Create, update or remove the fleet's own Deployment / DaemonSet (and while a
    rollout stages a template change, its canary or the DaemonSet pods it replaces;
    `pods`: the pods the operator knows). Events go to `body`. True when the workloads
    are settled (Applied.settled): nothing to follow until the spec or the rollout moves.

    Raises TemplateError (a ValueError) for what the user must fix in the spec or the
    operator's flags; API errors propagate for kopf to retry.
    """
    if record.spec.template is None:
        applied = Applied(await asyncio.to_thread(remove, record), settled=True)
    else:
        split = await asyncio.to_thread(Split.read, record)
        rendered = render(record, agent_endpoint, audience, agent_ca, split=split)
        applied = await asyncio.to_thread(apply, record, rendered, pods)
    for change in applied.changes:
        kopf.info(body, reason="Workload", message=change)
    return applied.settled and not applied.changes
