"""What a rotated projected ServiceAccount token needs from the agent that sends it, on
the real cluster: the Collector's own opamp extension with the `bearertokenauth`
extension (`filename`), polling over HTTP, so every request carries the token the
extension holds. Two kwok pods of a fleet that requires ServiceAccount tokens, their
tokens real TokenRequests bound to each pod (world/template.py PodVolumes, the stand-in
kubelet):

- pod A's token file is the kubelet's projected volume: `token -> ..data/token`, a
  rotation swaps the `..data` symlink (the kubelet's AtomicWriter);
- pod B's is a plain file, a rotation replaces it by a rename.

bearertokenauth v0.149.0 watches the file's directory for events on the file's own name
(bearertokenauth.go, startWatcher); the kubelet's swap never names it, so A keeps its
first token, while B sends each new one on its next poll: one TokenReview per new token,
none per poll, the agent never refused. Upstream: the regression of #44104 (from
v0.139), fixed by open-telemetry/opentelemetry-collector-contrib#45953 (closed).
"""

from __future__ import annotations

import os
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.k8s.workload import TOKEN_DIR, TOKEN_PATH, TOKEN_VOLUME
from world.cluster import LocalCluster
from world.collector import Agent, CollectorConfig, start_collector
from world.fleets import CONFIG_V1, create_fleet, running_pods
from world.operator import OperatorProcess, start_operator
from world.processes import eventually, free_port
from world.template import PodVolumes

pytestmark = pytest.mark.world

LABELS = {"app": "direct"}
FLEET = "direct"
WAIT = 120.0
# How long OperatorProcess.stop() takes: kopf gives its tasks 5 s to end (world/operator.py).
STOP_SECONDS = 5.0


def _reviews(op: OperatorProcess, result: str = "authenticated") -> float:
    return op.metric("opamp_agent_token_reviews_total", f'result="{result}"')


def _refused(op: OperatorProcess) -> float:
    return op.metric("opamp_errors_total", 'reason="unauthorized"')


def _token_auth(token_file: Path) -> Callable[[CollectorConfig], None]:
    """The opamp extension polls every second, its requests authorized by bearertokenauth
    reading `token_file`."""

    def edit(config: CollectorConfig) -> None:
        config["extensions"]["bearertokenauth"] = {"filename": str(token_file)}
        http = config["extensions"]["opamp"]["server"]["http"]
        http["auth"] = "bearertokenauth"
        http["polling_interval"] = "1s"
        config["service"]["extensions"].insert(0, "bearertokenauth")

    return edit


def _replace(path: Path, token: str) -> None:
    """A plain token file replaced whole, by a rename."""
    staged = path.with_suffix(".new")
    staged.write_text(token)
    os.replace(staged, path)


def _create_deployment(api_client: Any, namespace: str) -> None:
    """Two pods of ServiceAccount `collector`, each mounting a projected token for the
    operator's audience, as template mode renders it."""
    apps: Any = k8s.AppsV1Api(api_client)
    token = {"audience": "opamp-operator", "expirationSeconds": 600, "path": TOKEN_PATH}
    pod_spec = {
        "serviceAccountName": "collector",
        "containers": [
            {
                "name": "otelcol",
                "image": "otelcol:0.149.0",
                "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}],
            }
        ],
        "volumes": [
            {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}
        ],
    }
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "direct"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": LABELS},
                "template": {"metadata": {"labels": LABELS}, "spec": pod_spec},
            },
        },
    )


def test_bearertokenauth_sends_a_replaced_token_file_but_not_a_kubelet_rotated_one(
    crds: None, cluster: LocalCluster, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    core: Any = k8s.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "collector"}})
    _create_deployment(api_client, namespace)
    create_fleet(
        api_client,
        namespace,
        FLEET,
        LABELS,
        CONFIG_V1,
        agentAuth={"mode": "ServiceAccountToken", "serviceAccounts": ["collector"]},
    )
    pods = eventually(
        "2 Running pods",
        lambda: p if len(p := running_pods(api_client, namespace, LABELS)) == 2 else None,
        timeout=WAIT,
    )
    pods.sort(key=lambda p: p.metadata.name)
    where = [f"{namespace}/{p.metadata.name}" for p in pods]
    port = free_port()

    def operator() -> OperatorProcess:
        return start_operator(cluster.kubeconfig, tmp_path / "operator", port=port)

    def held(op: OperatorProcess) -> set[str]:
        """The pods agents hold by their tokens, connected."""
        try:
            agents = op.get(f"/api/v1/fleets/{namespace}/{FLEET}/agents")["agents"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # a restarted operator that has not read the fleet yet
                return set()
            raise
        return {a["pod"] for a in agents if a["connected"] and a["rule"] == "credential"}

    serialize = api_client.sanitize_for_serialization
    op = operator()
    collectors: list[Agent] = []
    try:
        with (
            PodVolumes(serialize(pods[0]), api_client, tmp_path / "pod-a") as kubelet_a,
            PodVolumes(serialize(pods[1]), api_client, tmp_path / "pod-b") as kubelet_b,
        ):
            file_a = kubelet_a.local(f"{TOKEN_DIR}/{TOKEN_PATH}")
            assert file_a.is_symlink()  # token -> ..data/token, as the kubelet lays it out
            file_b = tmp_path / "pod-b" / "token"
            _replace(file_b, kubelet_b.tokens()[f"{TOKEN_VOLUME}/{TOKEN_PATH}"])
            for name, token_file in (("otelcol-a", file_a), ("otelcol-b", file_b)):
                collectors.append(
                    start_collector(
                        op.http_url, tmp_path / name, name=name, extra=_token_auth(token_file)
                    )
                )
            eventually("both pods held by their tokens", lambda: held(op) == set(where), WAIT)
            # A's first token's last review: the operator keeps its answer until the token
            # expires, so asks no more (the review counts asserted below).
            a_reviewed = time.monotonic()
            assert (_reviews(op), _refused(op)) == (2, 0)
            time.sleep(4)  # four polls each, each carrying its token
            assert (_reviews(op), _refused(op)) == (2, 0)

            # The first tokens stop passing TokenReview (their ServiceAccount replaced, as
            # expiry would), and both pods get tokens of the new one.
            core.delete_namespaced_service_account("collector", namespace)
            eventually(
                "the ServiceAccount gone",
                lambda: (
                    not [
                        s
                        for s in core.list_namespaced_service_account(namespace).items
                        if s.metadata.name == "collector"
                    ]
                ),
            )
            core.create_namespaced_service_account(namespace, {"metadata": {"name": "collector"}})
            kubelet_a.rotate_tokens()
            _replace(file_b, kubelet_b.rotate_tokens()[f"{TOKEN_VOLUME}/{TOKEN_PATH}"])
            # B's next poll carries its new token: reviewed once, and B holds its pod on.
            eventually("B's new token reviewed", lambda: _reviews(op) == 3, timeout=30)
            time.sleep(3)
            assert (_reviews(op), _refused(op)) == (3, 0)
            assert held(op) == set(where)  # A on the operator's answer for its first token

            # A restart forgets every answer: each agent is judged by the token it sends
            # now. kube-apiserver remembers a success for 10 s (TokenSuccessCacheTTL): the
            # next operator may ask only once A's first token's review has aged out.
            # Stopping this one takes about STOP_SECONDS, spent in that wait.
            aged_out = a_reviewed + 11.0
            time.sleep(max(0.0, aged_out - STOP_SECONDS - time.monotonic()))
            op.stop()
            time.sleep(max(0.0, aged_out - time.monotonic()))
            op = operator()
            eventually("B held, A refused", lambda: held(op) == {where[1]}, WAIT)
            eventually("A's polls refused", lambda: _refused(op) >= 2, WAIT)
            assert _reviews(op) == 1  # B's current token
            assert _reviews(op, "refused") >= 1  # A's first one
            assert held(op) == {where[1]}
    finally:
        for collector in collectors:
            collector.stop()
        op.stop_in_background()
