"""Unforgeable agent ↔ pod identity on the real cluster: real opamp-go agents carrying
projected ServiceAccount tokens bound to their kwok pods (TokenRequest with a pod
boundObjectRef, audience opamp-operator: what the kubelet mounts), checked by the
operator with real TokenReviews.

The attacks tried, each against a pod whose real agent holds it: an anonymous agent
claiming it with the largest uid there is; the token of another pod; a fleet token of
another fleet; a token for another audience; a token whose pod was deleted. None
displaces the real agent, which keeps its pod's readiness gate True.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from opamp_operator.api.models import AGENT_READY_CONDITION
from world.cluster import LocalCluster
from world.collector import JsonlProcess, start_go_agent
from world.fleets import (
    CONFIG_V1,
    CONFIG_V2,
    create_deployment,
    create_fleet,
    create_rollout,
    fleet_status,
    patch_fleet_spec,
    pod_condition,
    rollout_status,
    running_pods,
    set_fleet_config,
    single_file_hash,
)
from world.operator import OperatorProcess, start_operator
from world.processes import eventually

pytestmark = pytest.mark.world

LOCKED = {"app": "locked"}
OPEN = {"app": "open"}
SPOOF_UID = "ffffffff-ffff-7fff-bfff-ffffffffffff"


@pytest.fixture
def operator(crds: None, cluster: LocalCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with start_operator(cluster.kubeconfig, tmp_path, "--token-refresh-seconds=1") as op:
        yield op


def pod_token(api_client: Any, namespace: str, pod: Any, audience: str = "opamp-operator") -> str:
    """What the kubelet mounts from a projected serviceAccountToken volume: a token of
    the pod's ServiceAccount bound to the pod itself."""
    core: Any = k8s.CoreV1Api(api_client)
    issued = core.create_namespaced_service_account_token(
        pod.spec.service_account_name,
        namespace,
        k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(
                audiences=[audience],
                expiration_seconds=600,
                bound_object_ref=k8s.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        ),
    )
    token: str = issued.status.token
    return token


def seen(agent: JsonlProcess) -> list[dict[str, Any]]:
    with contextlib.suppress(TimeoutError):
        agent.wait_for("(drain)", timeout=0.2)
    return agent.seen


def test_pods_are_bound_to_their_serviceaccount_tokens_and_cannot_be_taken(
    operator: OperatorProcess, api_client: Any, namespace: str
) -> None:
    core: Any = k8s.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "collector"}})
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "open-token"}, "stringData": {"token": "open-fleet"}}
    )
    create_deployment(
        api_client,
        namespace,
        "locked",
        LOCKED,
        replicas=2,
        readiness_gates=(AGENT_READY_CONDITION,),
        service_account="collector",
    )
    create_deployment(api_client, namespace, "open", OPEN, replicas=1)
    create_fleet(
        api_client,
        namespace,
        "locked",
        LOCKED,
        CONFIG_V1,
        agentAuth={"mode": "ServiceAccountToken", "serviceAccounts": ["collector"]},
    )
    create_fleet(
        api_client, namespace, "open", OPEN, CONFIG_V2, authSecretRef={"name": "open-token"}
    )
    pods = eventually(
        "2 locked pods running",
        lambda: p if len(p := running_pods(api_client, namespace, LOCKED)) == 2 else None,
    )
    (open_pod,) = eventually(
        "the open pod running",
        lambda: p if len(p := running_pods(api_client, namespace, OPEN)) == 1 else None,
    )
    pods.sort(key=lambda p: p.metadata.name)
    first, second = pods
    applied = single_file_hash(CONFIG_V1)

    def agent(*args: str) -> JsonlProcess:
        started = start_go_agent(operator.ws_url, "--heartbeat=1s", *args)
        agents.append(started)
        return started

    def bearer(token: str) -> str:
        return f"--header=Authorization=Bearer {token}"

    def claims(pod: Any) -> str:
        return f"--attr=k8s.pod.uid={pod.metadata.uid}"

    agents: list[JsonlProcess] = []
    try:
        # The real agents, each with its own pod's token (and attributes that say
        # nothing: the credential alone names the pod).
        real = [agent(bearer(pod_token(api_client, namespace, p))) for p in pods]
        for a in real:
            a.wait_for(
                "remote_config_status", timeout=60, where=lambda e: e["config_hash"] == applied
            )
        eventually(
            "both locked pods' gates True",
            lambda: (
                all(
                    pod_condition(api_client, namespace, p.metadata.name, AGENT_READY_CONDITION)
                    == "True"
                    for p in pods
                )
                or None
            ),
        )
        reviews = operator.metric("opamp_agent_token_reviews_total", 'result="authenticated"')
        assert reviews == 2

        # The attacks on the first pod.
        spoof = agent(f"--instance-uid={SPOOF_UID.replace('-', '')}", claims(first))
        agent(bearer(pod_token(api_client, namespace, second)), claims(first))  # the liar
        foreign = agent(bearer("open-fleet"), claims(first))
        wrong_audience = agent(
            bearer(pod_token(api_client, namespace, first, audience="some-other-service")),
            claims(first),
        )
        assert "bad handshake" in wrong_audience.wait_for("connect_failed", timeout=30)["error"]
        status = eventually(
            "the locked fleet to count the anonymous claim as unauthenticated",
            lambda: (
                s
                if (s := fleet_status(api_client, namespace, "locked")).get("agentsUnauthenticated")
                else None
            ),
        )
        time.sleep(3)  # three status ticks with every attacker connected
        for pod in pods:
            assert (
                pod_condition(api_client, namespace, pod.metadata.name, AGENT_READY_CONDITION)
                == "True"
            )
        status = fleet_status(api_client, namespace, "locked")
        assert status["agentsMapped"] == 2
        assert status["podsWithoutAgent"] == 0
        assert status["duplicateAgents"] == 1  # the liar: its token's pod is held already

        # The anonymous agent is offered nothing; the fleet token's agent only its own
        # fleet's config. (The liar holds a real pod's credential: it is that pod's
        # second agent, and a pod's agents get their fleet's config.)
        def offered(a: JsonlProcess) -> set[str]:
            messages = [e for e in seen(a) if e["event"] == "message" and "remote_config" in e]
            return {e["remote_config"]["config_hash"] for e in messages}

        assert offered(spoof) == set()
        assert offered(foreign) == {single_file_hash(CONFIG_V2)}
        # The fleet token's agent is in its own fleet, holding none of the locked pods.
        open_agents = operator.get(f"/api/v1/fleets/{namespace}/open/agents")["agents"]
        assert [a["pod"] for a in open_agents] == [None]

        # One TokenReview per token, never per heartbeat.
        authenticated = operator.metric("opamp_agent_token_reviews_total", 'result="authenticated"')
        assert authenticated == 3  # the two real agents, the liar
        time.sleep(3)
        assert operator.metric("opamp_agent_token_reviews_total", 'result="authenticated"') == 3

        # A fleet without agentAuth: its agent holds its pod on its word, unverified.
        patch_fleet_spec(api_client, namespace, "open", {"authSecretRef": None})
        agent(claims(open_pod))

        def unverified() -> dict[str, Any] | None:
            status = fleet_status(api_client, namespace, "open")
            return status if status.get("agentsUnverified") == 1 else None

        eventually("the open fleet to count an unverified agent", unverified)

        # A deleted pod's token authenticates nobody: its agent's session is closed.
        mark = len(seen(real[0]))
        core.delete_namespaced_pod(first.metadata.name, namespace, grace_period_seconds=0)
        eventually(
            "the deleted pod's agent to be disconnected and refused",
            lambda: any(e["event"] == "connect_failed" for e in seen(real[0])[mark:]) or None,
            timeout=30,
        )
        revoked = operator.metric("opamp_errors_total", 'reason="revoked"')
        assert revoked >= 1
    finally:
        for a in agents:
            a.stop()


@pytest.mark.parametrize("verified_only", [True, False], ids=["verifiedOnly", "everyone"])
def test_a_spoofer_reporting_failed_cannot_roll_back_a_rollout_that_counts_verified_only(
    operator: OperatorProcess, api_client: Any, namespace: str, verified_only: bool
) -> None:
    """A fleet with agentAuth None: two agents send their pods' ServiceAccount tokens
    (verified), a third claims the last pod by attribute and refuses every new config.
    With gates.verifiedOnly the rollout succeeds; without, the spoofer rolls it back."""
    core: Any = k8s.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "collector"}})
    create_deployment(api_client, namespace, "open", OPEN, replicas=3, service_account="collector")
    create_fleet(api_client, namespace, "open", OPEN, CONFIG_V1)
    pods = eventually(
        "3 pods running",
        lambda: p if len(p := running_pods(api_client, namespace, OPEN)) == 3 else None,
    )
    broken = "# refused by the spoofer"
    agents: list[JsonlProcess] = []
    try:
        for pod in pods[:2]:
            token = pod_token(api_client, namespace, pod)
            agents.append(
                start_go_agent(
                    operator.ws_url, "--heartbeat=1s", f"--header=Authorization=Bearer {token}"
                )
            )
        agents.append(
            start_go_agent(
                operator.ws_url,
                "--heartbeat=1s",
                f"--attr=k8s.pod.uid={pods[2].metadata.uid}",
                f"--fail-containing={broken}",
            )
        )
        for a in agents:
            a.wait_for(
                "remote_config_status",
                timeout=60,
                where=lambda e: e["config_hash"] == single_file_hash(CONFIG_V1),
            )
        eventually(
            "one unverified agent",
            lambda: (
                fleet_status(api_client, namespace, "open").get("agentsUnverified") == 1 or None
            ),
        )
        create_rollout(
            api_client,
            namespace,
            "open",
            "open",
            gates={"verifiedOnly": verified_only, "applyTimeoutSeconds": 30},
        )
        eventually(
            "the rollout to settle on the current config",
            lambda: (
                rollout_status(api_client, namespace, "open").get("phase") == "Succeeded" or None
            ),
        )
        set_fleet_config(api_client, namespace, "open", CONFIG_V2 + broken + "\n")
        final = "Succeeded" if verified_only else "RolledBack"
        status = eventually(
            f"the rollout to end {final}",
            lambda: (
                s
                if (s := rollout_status(api_client, namespace, "open")).get("phase")
                in ("Succeeded", "RolledBack", "Failed")
                and s.get("desiredHash") == single_file_hash(CONFIG_V2 + broken + "\n")
                else None
            ),
            timeout=90,
        )
        assert status["phase"] == final, status
    finally:
        for a in agents:
            a.stop()
