"""The generated CollectorFleet CRD on the real apiserver: accepted, defaults applied, its
validation rules (schema and CEL) enforced with clear messages, status writable through
the subresource, printer columns served."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from opamp_operator.api.models import GROUP, VERSION, CollectorFleet, ConfigRollout
from world import binaries

pytestmark = pytest.mark.world

CRD_FILE = binaries.REPO_ROOT / "deploy" / "crds" / f"collectorfleets.{GROUP}.yaml"


@pytest.fixture(scope="module")
def fleet_crd(api_client: Any) -> Iterator[None]:
    ext: Any = k8s.ApiextensionsV1Api(api_client)
    crd = yaml.safe_load(CRD_FILE.read_text())
    name = crd["metadata"]["name"]
    ext.create_custom_resource_definition(crd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = ext.read_custom_resource_definition(name).status
        if any(c.type == "Established" and c.status == "True" for c in status.conditions or []):
            break
        time.sleep(0.25)
    co: Any = k8s.CustomObjectsApi(api_client)
    while time.monotonic() < deadline:  # discovery may lag Established by a moment
        try:
            co.list_cluster_custom_object(GROUP, VERSION, "collectorfleets")
            break
        except ApiException:
            time.sleep(0.25)
    yield
    ext.delete_custom_resource_definition(name)


def _fleet(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "otel"}},
        "config": {"inline": "receivers: {}\n"},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CollectorFleet",
        "metadata": {"name": name},
        "spec": body,
    }


def _create(api_client: Any, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    co: Any = k8s.CustomObjectsApi(api_client)
    created: dict[str, Any] = co.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "collectorfleets", manifest
    )
    return created


@pytest.mark.usefixtures("fleet_crd")
def test_valid_fleet_is_stored_with_defaults(api_client: Any, namespace: str) -> None:
    created = _create(api_client, namespace, _fleet("gateways"))
    assert "heartbeatIntervalSeconds" not in created["spec"]  # the operator's default
    assert created["spec"]["driftPolicy"] == "Report"
    assert created["spec"]["revisionHistoryLimit"] == 10
    fleet = CollectorFleet.model_validate(created)
    assert fleet.spec.config.inline == "receivers: {}\n"


@pytest.mark.usefixtures("fleet_crd")
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"config": {"inline": "a: 1", "configMapRef": {"name": "cm"}}},
            "set exactly one of config.inline and config.configMapRef",
        ),
        ({"config": {}}, "set exactly one of config.inline and config.configMapRef"),
        ({"selector": {}}, "selector must select something"),
        ({"driftPolicy": "Ignore"}, 'Unsupported value: "Ignore"'),
        ({"heartbeatIntervalSeconds": -1}, "should be greater than or equal to 0"),
        ({"template": {"image": "", "replicas": 1}}, "spec.template.image"),
    ],
    ids=[
        "both-sources",
        "no-source",
        "empty-selector",
        "bad-policy",
        "negative-heartbeat",
        "empty-image",
    ],
)
def test_invalid_fleet_is_refused_with_a_clear_message(
    api_client: Any, namespace: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as refused:
        _create(api_client, namespace, _fleet("bad", **spec))
    assert refused.value.status == 422
    assert message in json.loads(refused.value.body or "{}").get("message", "")


@pytest.mark.usefixtures("fleet_crd")
def test_status_subresource_and_printer_columns(api_client: Any, namespace: str) -> None:
    _create(api_client, namespace, _fleet("cols"))
    co: Any = k8s.CustomObjectsApi(api_client)
    co.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "collectorfleets",
        "cols",
        {
            "status": {
                "agentsConnected": 7,
                "healthy": 6,
                "drifted": 1,
                "targetVersion": "0.150.0",
                "agentsOutdated": 2,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "AgentsUnhealthy",
                        "message": "1 of 7 agents unhealthy",
                        "lastTransitionTime": "2026-11-22T00:00:00Z",
                    }
                ],
            }
        },
    )
    response = api_client.call_api(
        "GET",
        f"{api_client.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{namespace}"
        "/collectorfleets/cols",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    response.read()
    table = json.loads(response.data)
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:8] == [
        "Name",
        "Agents",
        "Healthy",
        "Drifted",
        "Version",
        "Outdated",
        "Ready",
        "Age",
    ]
    assert table["rows"][0]["cells"][1:7] == [7, 6, 1, "0.150.0", 2, "False"]


ROLLOUT_CRD_FILE = binaries.REPO_ROOT / "deploy" / "crds" / f"configrollouts.{GROUP}.yaml"


@pytest.fixture(scope="module")
def rollout_crd(api_client: Any) -> Iterator[None]:
    ext: Any = k8s.ApiextensionsV1Api(api_client)
    crd = yaml.safe_load(ROLLOUT_CRD_FILE.read_text())
    name = crd["metadata"]["name"]
    ext.create_custom_resource_definition(crd)
    co: Any = k8s.CustomObjectsApi(api_client)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            co.list_cluster_custom_object(GROUP, VERSION, "configrollouts")
            break
        except ApiException:
            time.sleep(0.25)
    yield
    ext.delete_custom_resource_definition(name)


def _rollout(name: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ConfigRollout",
        "metadata": {"name": name},
        "spec": {"fleetRef": {"name": "gateways"}, "steps": steps, **spec},
    }


def _create_rollout(api_client: Any, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    co: Any = k8s.CustomObjectsApi(api_client)
    created: dict[str, Any] = co.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "configrollouts", manifest
    )
    return created


@pytest.mark.usefixtures("rollout_crd")
def test_rollout_is_stored_with_defaults_and_read_by_the_model(
    api_client: Any, namespace: str
) -> None:
    steps: list[dict[str, Any]] = [
        {"agents": 1, "pause": {"untilPromoted": True}},
        {"selector": {"attributes": {"deployment.environment": "canary"}}},
        {"percent": 25, "pause": {"seconds": 300}, "gates": {"maxFailedPercent": 5}},
        {"percent": 100},
    ]
    created = _create_rollout(api_client, namespace, _rollout("staged", steps))
    spec = created["spec"]
    assert spec["onFailure"] == "Rollback"
    assert spec["paused"] is False
    assert spec["preflight"] == {"enabled": True, "blockOnUnreported": False}
    rollout = ConfigRollout.model_validate(created)
    assert rollout.spec.steps[2].gates is not None
    assert rollout.spec.steps[2].gates.max_failed_percent == 5


@pytest.mark.usefixtures("rollout_crd")
@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"agents": 1, "percent": 10}, "exactly one of agents, percent and selector"),
        ({}, "exactly one of agents, percent and selector"),
        ({"percent": 0}, "percent must be more than 0"),
        ({"percent": 101}, "should be less than or equal to 100"),
        ({"percent": 10, "pause": {"seconds": 5, "untilPromoted": True}}, "either seconds or"),
        ({"percent": 10, "pause": {}}, "either seconds or"),
        ({"selector": {}}, "at least one attribute or pod label"),
    ],
)
def test_rollout_step_rules_are_enforced(
    api_client: Any, namespace: str, step: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as refused:
        _create_rollout(api_client, namespace, _rollout("bad", [step]))
    assert refused.value.status == 422
    assert message in json.loads(refused.value.body or "{}").get("message", "")


@pytest.mark.usefixtures("rollout_crd")
def test_rollout_printer_columns_are_served(api_client: Any, namespace: str) -> None:
    _create_rollout(api_client, namespace, _rollout("columns", [{"percent": 100}]))
    co: Any = k8s.CustomObjectsApi(api_client)
    co.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "configrollouts",
        "columns",
        {"status": {"phase": "Progressing", "currentStep": 0, "stableRevision": "gateways-1"}},
    )
    response = api_client.call_api(
        "GET",
        f"{api_client.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{namespace}"
        "/configrollouts/columns",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    response.read()
    table = json.loads(response.data)
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[:8] == ["Name", "Fleet", "Phase", "Step", "Desired", "Stable", "Ready", "Age"]
    assert table["rows"][0]["cells"][1:4] == ["gateways", "Progressing", 0]


@pytest.mark.usefixtures("fleet_crd", "rollout_crd")
def test_the_examples_are_accepted_by_the_apiserver(api_client: Any, namespace: str) -> None:
    """Every custom object in examples/ passes the CRDs' schema and CEL rules (dry run)."""
    co: Any = k8s.CustomObjectsApi(api_client)
    plural = {"CollectorFleet": "collectorfleets", "ConfigRollout": "configrollouts"}
    tried = 0
    for path in sorted((binaries.REPO_ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] not in plural:
                continue
            doc["metadata"]["namespace"] = namespace
            co.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural[doc["kind"]], doc, dry_run="All"
            )
            tried += 1
    assert tried >= 4
