"""Fixtures that stand on the real test world (see tests/world/), and the tiers.

The cluster starts once per test run and is torn down at the end. A missing binary is an
error in the test that needs it, never a skip: CI must not go green without the world.

Every test is in exactly one tier, a marker given here by where it lives (docs/development.md):
`unit` (tests/unit: pure logic, no processes), `property` (the hypothesis tests of
tests/unit: pure logic, many examples), `tools` (tests/tools: runs our scripts and tools as
processes, no cluster), `world` (tests/world_proofs: the real test world) and `e2e`
(tests/e2e). `pytest -m unit` runs one tier; `scripts/check unit` too.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from world import binaries
from world.cluster import LocalCluster
from world.collector import Agent, start_collector, start_supervised_collector
from world.fleets import install_crd, remove_crd
from world.operator import wait_stopped


def _keep_logs() -> bool:
    return os.environ.get("OPAMP_TEST_KEEP") == "1"


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """The local control plane; its logs are kept in the work dir when OPAMP_TEST_KEEP=1."""
    workdir = Path(tempfile.mkdtemp(prefix="opamp-cluster-"))
    local = LocalCluster(workdir=workdir, nodes=3).start()
    try:
        yield local
    finally:
        wait_stopped()  # operators of the last tests, still shutting down
        local.stop(remove=not _keep_logs())


@pytest.fixture(scope="session")
def kubeconfig(cluster: LocalCluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[Any]:
    """A kubernetes ApiClient with cluster-admin (system:masters) credentials."""
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(api_client: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    core: Any = k8s.CoreV1Api(api_client)
    # A DNS label: parametrized test names carry brackets and other punctuation.
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().replace("_", "-"))[:40].strip("-")
    ns = core.create_namespace(
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(generate_name=f"{base}-"))
    ).metadata.name
    try:
        yield ns
    finally:
        core.delete_namespace(ns)


@pytest.fixture
def collector_factory(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Start real Collectors (`supervised=True`: under opampsupervisor) at an OpAMP endpoint."""
    started: list[Agent] = []

    def start(endpoint: str, *, supervised: bool = False, name: str | None = None) -> Agent:
        workdir = tmp_path / f"agent-{len(started)}"
        if supervised:
            agent = start_supervised_collector(endpoint, workdir, name=name or "opampsupervisor")
        else:
            agent = start_collector(endpoint, workdir, name=name or "otelcol")
        started.append(agent)
        return agent

    yield start
    for agent in reversed(started):
        agent.stop()


TIERS = {"unit": "unit", "tools": "tools", "world_proofs": "world", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = TIERS.get(item.path.parent.name)
        if tier == "unit" and getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            tier = "property"
        if tier is not None and not item.get_closest_marker(tier):
            item.add_marker(tier)


def pytest_report_header(config: pytest.Config) -> str:
    """Say where the binaries come from, so a CI log shows which world ran."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    return f"test world binaries: {binaries.bin_dir()}" + (
        f" (+ KUBEBUILDER_ASSETS={assets})" if assets else ""
    )


@pytest.fixture(scope="module")
def crds(api_client: Any) -> Iterator[None]:
    """The operator's CRDs for one test module; removed after it only if it installed
    them (a module may override this fixture with more CRDs)."""
    created = install_crd(api_client)
    yield
    if created:
        remove_crd(api_client)
