"""A fleet's target version against what its agents report (fleet/versions.py and its use
in fleet/health.py and fleet/status.py): who is outdated, where the offered package's
install is, the AgentsUpToDate condition, the Events, and the package offer's hashes."""

from __future__ import annotations

import dataclasses

import pytest

from opamp_operator.fleet.events import condition_events
from opamp_operator.fleet.health import Reason, agent_ready, summarize
from opamp_operator.fleet.mapping import map_agents
from opamp_operator.fleet.status import FleetFacts, count_events, fleet_status
from opamp_operator.fleet.versions import UP_TO_DATE, package_offer, version_condition
from opamp_operator.fleet.views import AgentView, PodView
from opamp_operator.opamp.packages import PackageReport, PackageState
from opamp_operator.opamp.proto import opamp_pb2 as pb

DESIRED = "ab" * 32
SHA = "0f" * 32
OFFER = package_offer("0.150.0", "", "https://dl.example/otelcol-0.150.0.tgz", SHA)


def _agent(
    uid: str, version: str, package: PackageState | None = None, error: str = ""
) -> AgentView:
    reports = {}
    if package is not None:
        reports[""] = PackageReport("", package, version, OFFER.package_hash.hex(), error)
    return AgentView(
        instance_uid=uid,
        attributes={"service.version": version, "k8s.pod.uid": f"uid-{uid}"}
        if version
        else {"k8s.pod.uid": f"uid-{uid}"},
        healthy=True,
        remote_config_status="APPLIED",
        remote_config_hash=DESIRED,
        accepts_packages=package is not None,
        packages_hash=OFFER.all_packages_hash.hex() if package is not None else "",
        packages=reports,
    )


def _summary(agents: list[AgentView], target: str = "0.150.0"):  # type: ignore[no-untyped-def]
    pods = [
        PodView(namespace="obs", name=a.instance_uid, uid=f"uid-{a.instance_uid}") for a in agents
    ]
    return summarize(
        "obs/gw", map_agents(pods, agents), DESIRED, {}, target_version=target, package=OFFER
    )


def test_outdated_agents_and_package_installs_are_counted_and_named() -> None:
    agents = [
        _agent("a", "0.150.0", PackageState.INSTALLED),
        _agent("b", "0.149.0", PackageState.DOWNLOADING),
        _agent("c", "0.149.0", PackageState.INSTALL_FAILED, "signature mismatch"),
        _agent("d", "0.149.0"),  # takes no packages: reported, never offered
        _agent("e", ""),  # reports no version at all
    ]
    health = _summary(agents)
    status = health.to_status()
    assert status["targetVersion"] == "0.150.0"
    assert (status["agentsOutdated"], status["packageInstalling"], status["packageFailed"]) == (
        4,
        1,
        1,
    )
    worst = {w.instance_uid: (w.reason, w.message) for w in health.worst}
    assert worst["c"] == (
        Reason.PACKAGE_FAILED,
        "package 0.150.0 failed to install: signature mismatch",
    )
    assert worst["b"] == (Reason.OUTDATED, "runs 0.149.0, the fleet's version is 0.150.0")
    assert worst["e"] == (
        Reason.OUTDATED,
        "runs no version it reports, the fleet's version is 0.150.0",
    )
    assert "a" not in worst
    # Neither an old version nor a failed install unreadies the pod: it runs what it ran.
    assert all(agent_ready(a, DESIRED) == (True, "AgentReady") for a in agents)


def test_a_report_on_an_older_offer_says_nothing_about_this_one() -> None:
    stale = dataclasses.replace(
        _agent("a", "0.149.0", PackageState.INSTALL_FAILED, "old"), packages_hash="99" * 32
    )
    health = _summary([stale])
    assert (health.package_failed, health.package_installing) == (0, 0)
    assert [w.reason for w in health.worst] == [Reason.OUTDATED]


def test_without_a_target_versions_are_reported_not_judged() -> None:
    health = _summary([_agent("a", "0.149.0"), _agent("b", "0.150.0")], target="")
    assert health.agents_outdated == 0
    assert health.worst == ()
    assert dict(health.versions) == {"0.149.0": 1, "0.150.0": 1}


def test_the_condition_says_who_runs_what() -> None:
    assert version_condition("", 3, 0, [("0.149.0", 3)])["status"] == "Unknown"
    behind = version_condition("0.150.0", 5, 3, [("0.149.0", 2), ("0.150.0", 2), ("(unknown)", 1)])
    assert (behind["type"], behind["status"], behind["reason"]) == (UP_TO_DATE, "False", "Outdated")
    assert (
        behind["message"]
        == "3 of 5 agents run another version than 0.150.0: 0.149.0 (2), (unknown) (1)"
    )
    done = version_condition("0.150.0", 5, 0, [("0.150.0", 5)])
    assert (done["status"], done["reason"], done["message"]) == (
        "True",
        "AllOnTarget",
        "5 agents run 0.150.0",
    )


def test_events_when_agents_fall_behind_and_when_all_are_up_to_date() -> None:
    facts = FleetFacts(1, 1, "gw-1", DESIRED, "gw-1", DESIRED, None)
    before = fleet_status(_summary([_agent("a", "0.150.0")]), facts, {}, "t0")
    behind = fleet_status(
        _summary([_agent("a", "0.150.0"), _agent("b", "0.149.0")]), facts, before, "t1"
    )
    events = count_events(before, behind) + condition_events(
        before["conditions"], behind["conditions"]
    )
    assert [(e.type, e.reason) for e in events] == [
        ("Warning", "Outdated"),
        ("Warning", "AgentsUpToDateFalse"),
    ]
    assert events[0].message == "1 agents run another version than the fleet's, was 0 (e.g. obs/b)"
    again = fleet_status(_summary([_agent("a", "0.150.0")]), facts, behind, "t2")
    back = condition_events(behind["conditions"], again["conditions"])
    assert [(e.type, e.reason) for e in back] == [("Normal", "AgentsUpToDateTrue")]
    # A fleet without a target says Unknown, which is no news.
    unknown = fleet_status(_summary([_agent("a", "0.150.0")], target=""), facts, {}, "t0")
    assert not [e for e in condition_events([], unknown["conditions"]) if "UpToDate" in e.reason]


def test_every_field_of_an_offer_is_in_its_hash_and_the_proto_carries_them() -> None:
    variants = [
        OFFER,
        package_offer("0.150.1", "", OFFER.url, SHA),
        package_offer("0.150.0", "otelcol", OFFER.url, SHA),
        package_offer("0.150.0", "", OFFER.url + "?v=2", SHA),
        package_offer("0.150.0", "", OFFER.url, "1f" * 32),
        package_offer("0.150.0", "", OFFER.url, SHA, "c2lnbmF0dXJl"),
    ]
    assert len({v.package_hash for v in variants}) == len(variants)
    assert len({v.all_packages_hash for v in variants}) == len(variants)
    proto = variants[-1].to_proto()
    ((name, package),) = proto.packages.items()
    assert name == ""
    assert package.type == pb.PackageType_TopLevel
    assert package.version == "0.150.0"
    assert package.file.download_url == OFFER.url
    assert package.file.content_hash == bytes.fromhex(SHA)
    assert package.file.signature == b"signature"
    assert proto.all_packages_hash == variants[-1].all_packages_hash


@pytest.mark.parametrize(
    ("sha", "signature"), [("zz" * 32, None), (SHA[:-2], None), (SHA, "not base64!")]
)
def test_an_offer_refuses_what_is_not_a_sha256_or_base64(sha: str, signature: str | None) -> None:
    with pytest.raises(ValueError, match="package"):
        package_offer("1.0", "", "https://dl.example/x", sha, signature)
