"""`kubectl opamp`'s pure parts: kubectl-looking tables and ages, rollout summaries, the
control patches, and argument parsing. Objects are shaped like what the operator writes
(api/models.py, the statuses in tests/world_proofs/test_operator_rollout.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from opamp_operator.api.models import CollectorFleetStatus, ConfigRolloutSpec, ConfigRolloutStatus
from opamp_operator.kubectl_plugin import cli
from opamp_operator.kubectl_plugin import format as fmt

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


H1 = "fdd5f997e9e8" + "a" * 52
H2 = "1d316f7a9d7a" + "b" * 52


def fleet(
    name: str = "collectors", namespace: str = "observability", **status: Any
) -> dict[str, Any]:
    base = {
        "agentsConnected": 4,
        "agentsMapped": 4,
        "healthy": 3,
        "unhealthy": 1,
        "configApplied": 3,
        "configFailed": 1,
        "drifted": 0,
        "desiredRevision": "collectors-1d316f7a9d",
        "desiredHash": H2,
        "stableRevision": "collectors-fdd5f997e9",
        "stableHash": H1,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "AgentsUnhealthy",
                "lastTransitionTime": ts(30),
            },
            {
                "type": "Stalled",
                "status": "False",
                "reason": "ConfigValid",
                "lastTransitionTime": ts(30),
            },
        ],
        **status,
    }
    CollectorFleetStatus.model_validate(base)  # the shape the operator writes
    return {
        "apiVersion": "opampoperator.io/v1alpha1",
        "kind": "CollectorFleet",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": ts(35)},
        "status": base,
    }


STEPS: list[dict[str, Any]] = [
    {"agents": 1, "pause": {"untilPromoted": True}},
    {"percent": 50},
    {"percent": 100},
]


def rollout(spec: dict[str, Any] | None = None, /, **status: Any) -> dict[str, Any]:
    spec = spec or {"fleetRef": {"name": "collectors"}, "steps": STEPS}
    ConfigRolloutSpec.model_validate(spec)
    ConfigRolloutStatus.model_validate(status)
    return {
        "apiVersion": "opampoperator.io/v1alpha1",
        "kind": "ConfigRollout",
        "metadata": {
            "name": "collectors",
            "namespace": "observability",
            "creationTimestamp": ts(600),
        },
        "spec": spec,
        "status": status,
    }


PAUSED: dict[str, Any] = {
    "phase": "Paused",
    "pauseReason": "Step",
    "message": "step 1/3 passed; paused until promoted",
    "currentStep": 0,
    "attempt": 1,
    "desiredRevision": "collectors-1d316f7a9d",
    "desiredHash": H2,
    "stableRevision": "collectors-fdd5f997e9",
    "stableHash": H1,
    "agents": 4,
    "unmanaged": 0,
    "steps": [
        {
            "offered": 1,
            "applied": 1,
            "failed": 0,
            "unhealthy": 0,
            "drifted": 0,
            "startedAt": ts(20),
            "finishedAt": ts(15),
        }
    ],
    "conditions": [
        {
            "type": "Reconciling",
            "status": "True",
            "reason": "Paused",
            "message": "paused until promoted",
            "lastTransitionTime": ts(15),
        },
        {"type": "Ready", "status": "False", "reason": "Paused", "lastTransitionTime": ts(15)},
    ],
    "controls": {},
    "kopf": {"progress": {}},
}
ROLLED_BACK: dict[str, Any] = {
    **PAUSED,
    "phase": "RolledBack",
    "pauseReason": None,
    "message": "every agent back to revision collectors-fdd5f997e9",
    "steps": [
        {"offered": 1, "applied": 0, "failed": 1, "unhealthy": 0, "drifted": 0, "startedAt": ts(12)}
    ],
    "failingAgents": [
        {
            "instanceUid": "01a21ca7-27cb-7163-b4c4-972aedc1eef9",
            "pod": "observability/collector-6dbc79bf5c-l778j",
            "reason": "ConfigFailed",
            "message": "rejected by opamp-go-agent (--apply=fail or --fail-containing)",
        }
    ],
    "conditions": [
        {
            "type": "Stalled",
            "status": "True",
            "reason": "RolledBack",
            "message": "gate failed",
            "lastTransitionTime": ts(5),
        }
    ],
}


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (5, "5s"),
        (119, "119s"),
        (120, "2m"),
        (185, "3m5s"),
        (600, "10m"),
        (179 * 60 + 59, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 5 * 60, "3h5m"),
        (8 * 3600 + 59 * 60, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (4 * 86400 + 3 * 3600, "4d3h"),
        (8 * 86400 + 5 * 3600, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (731 * 86400, "2y1d"),
        (8 * 365 * 86400 + 86400, "8y"),
    ],
)
def test_human_duration_matches_kubectl(seconds: float, expected: str) -> None:
    assert fmt.human_duration(seconds) == expected


def test_age_of_timestamps() -> None:
    assert fmt.age(ts(35), NOW) == "35s"
    assert fmt.age("2026-11-23T11:00:00+00:00", NOW) == "4d1h"
    assert fmt.age(None, NOW) == "<unknown>"
    assert fmt.age("yesterday", NOW) == "<unknown>"


def test_table_pads_columns_by_three_spaces_and_not_the_last() -> None:
    text = fmt.table(("NAME", "AGE"), [["a", "5s"], ["longer-name", "10m"]])
    assert text.splitlines() == [
        "NAME          AGE",
        "a             5s",
        "longer-name   10m",
    ]
    assert fmt.table(("A", "B"), [["x", ""]]).splitlines()[1] == "x"


def test_fleets_table() -> None:
    text = fmt.fleets_table([fleet()], NOW, all_namespaces=False)
    header, row = text.splitlines()
    assert header.split() == list(fmt.FLEET_HEADERS)
    assert row.split() == [
        "collectors",
        "4",
        "3",
        "1",
        "3",
        "1",
        "0",
        "-",
        "collectors-1d316f7a9d",
        "collectors-fdd5f997e9",
        "False",
        "35s",
    ]
    behind = fmt.fleets_table(
        [fleet(targetVersion="0.150.0", agentsOutdated=2)], NOW, all_namespaces=False
    )
    assert behind.splitlines()[1].split()[7] == "2/0.150.0"
    assert header.index("AGENTS") == len("collectors") + 3


def test_fleets_table_all_namespaces_and_a_fleet_without_status() -> None:
    bare = {"metadata": {"name": "new", "namespace": "a", "creationTimestamp": ts(2)}}
    lines = fmt.fleets_table([bare, fleet()], NOW, all_namespaces=True).splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert lines[1].split() == [
        "a",
        "new",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "-",
        "<none>",
        "<none>",
        "Unknown",
        "2s",
    ]
    assert lines[2].split()[:2] == ["observability", "collectors"]


def agent(**over: Any) -> dict[str, Any]:
    base = {
        "instanceUid": "01a21ca7-27cb-7163-b4c4-972aedc1eef9",
        "pod": "observability/collector-6dbc79bf5c-l778j",
        "rule": "k8s.pod.uid",
        "connected": True,
        "stale": False,
        "healthy": True,
        "healthError": None,
        "config": "Applied",
        "revision": "desired",
        "expectedHash": H2,
        "remoteConfigStatus": "APPLIED",
        "version": "0.149.0",
        "drift": {"state": "InSync", "reason": "", "paths": []},
        "attributes": {},
    }
    return {**base, **over}


def test_agents_table() -> None:
    rows = [
        agent(),
        agent(
            instanceUid="u2",
            pod=None,
            rule=None,
            healthy=None,
            config="Pending",
            revision="stable",
            version=None,
        ),
        agent(instanceUid="u3", stale=True, healthy=False, config="Failed"),
        agent(instanceUid="u4", connected=False),
    ]
    lines = fmt.agents_table(rows).splitlines()
    assert lines[0].split() == list(fmt.AGENT_HEADERS)
    assert lines[1].split() == [
        "01a21ca7-27cb-7163-b4c4-972aedc1eef9",
        "observability/collector-6dbc79bf5c-l778j",
        "k8s.pod.uid",
        "True",
        "True",
        "Applied",
        "desired",
        "0.149.0",
    ]
    assert lines[2].split() == [
        "u2",
        "<none>",
        "<none>",
        "True",
        "<unknown>",
        "Pending",
        "stable",
        "<none>",
    ]
    assert lines[3].split()[3:6] == ["Stale", "False", "Failed"]
    assert lines[4].split()[3] == "False"


def test_step_targets() -> None:
    assert fmt.step_target(STEPS[0]) == "1 agent, pause until promoted"
    assert fmt.step_target({"agents": 3, "pause": {"seconds": 300}}) == "3 agents, pause 300s"
    assert fmt.step_target({"percent": 25.0}) == "25%"
    assert fmt.step_target({"percent": 12.5}) == "12.5%"
    sel = {
        "selector": {"attributes": {"deployment.environment": "canary"}, "podLabels": {"zone": "a"}}
    }
    assert fmt.step_target(sel) == "selector deployment.environment=canary,zone=a"


def test_step_position() -> None:
    assert fmt.step_position(rollout(**PAUSED)) == "1/3"
    assert fmt.step_position(rollout(phase="Pending")) == "-/3"
    empty_steps = rollout({"fleetRef": {"name": "collectors"}}, phase="Succeeded", currentStep=0)
    assert fmt.step_position(empty_steps) == "1/1"


def test_status_of_a_paused_rollout() -> None:
    text = fmt.rollout_status_text(rollout(**PAUSED), NOW)
    assert "Name:     observability/collectors" in text
    assert "Fleet:    collectors" in text
    assert "Phase:    Paused (Step)" in text
    assert "Step:     1/3" in text
    assert f"Desired:  collectors-1d316f7a9d ({H2[:12]})" in text
    assert f"Stable:   collectors-fdd5f997e9 ({H1[:12]})" in text
    assert "Agents:   4 managed, 0 unmanaged" in text
    steps = text.split("Steps:\n")[1].split("\n\n")[0].splitlines()
    assert steps[0].split() == [
        "STEP",
        "TARGET",
        "STATE",
        "OFFERED",
        "APPLIED",
        "FAILED",
        "UNHEALTHY",
        "DRIFTED",
        "STARTED",
    ]
    assert steps[1].split() == [
        "1",
        "1",
        "agent,",
        "pause",
        "until",
        "promoted",
        "Passed",
        "1",
        "1",
        "0",
        "0",
        "0",
        "20s",
    ]
    assert steps[2].split() == ["2", "50%", "-", "-", "-", "-", "-", "-", "-"]
    assert "Failing agents:" not in text
    conditions = text.split("Conditions:\n")[1].splitlines()
    assert conditions[1].split() == [
        "Reconciling",
        "True",
        "Paused",
        "15s",
        "paused",
        "until",
        "promoted",
    ]


def test_status_of_a_rolled_back_rollout_names_the_culprits() -> None:
    text = fmt.rollout_status_text(rollout(**ROLLED_BACK), NOW)
    assert "Phase:    RolledBack\n" in text
    assert "Message:  every agent back to revision collectors-fdd5f997e9" in text
    failing = text.split("Failing agents:\n")[1].split("\n\n")[0].splitlines()
    assert failing[0].split() == ["POD", "INSTANCE-UID", "REASON", "MESSAGE"]
    assert failing[1].split()[:3] == [
        "observability/collector-6dbc79bf5c-l778j",
        "01a21ca7-27cb-7163-b4c4-972aedc1eef9",
        "ConfigFailed",
    ]
    assert failing[1].endswith("rejected by opamp-go-agent (--apply=fail or --fail-containing)")
    steps = text.split("Steps:\n")[1].split("\n\n")[0].splitlines()
    assert steps[1].split()[1:4] == ["1", "agent,", "pause"]
    assert "RolledBack" in steps[1]


def test_status_shows_spec_pause_and_a_blocked_preflight() -> None:
    spec = {"fleetRef": {"name": "collectors"}, "paused": True, "steps": STEPS}
    preflight = {
        "blocked": True,
        "missing": [{"component": "exporters/otlphttp", "agents": 2}],
        "unreported": 1,
        "checked": 3,
    }
    text = fmt.rollout_status_text(rollout(spec, phase="Pending", preflight=preflight), NOW)
    assert "Paused:   spec.paused is true" in text
    assert "Preflight: blocked=True, unreported=1" in text
    assert "exporters/otlphttp   2" in text


def test_progress_line_and_what_counts_as_a_change() -> None:
    line = fmt.progress_line(rollout(**PAUSED), NOW)
    assert line.startswith("12:00:00  Paused/Step")
    assert "step 1/3" in line
    assert "applied 1/1 failed 0 unhealthy 0" in line
    assert "desired collectors-1d316f7a9d  stable collectors-fdd5f997e9" in line
    assert line.endswith("paused until promoted")
    moved = rollout(**{**PAUSED, "kopf": {"progress": {"x": 1}}})
    assert fmt.progress_key(moved) == fmt.progress_key(rollout(**PAUSED))
    stepped = rollout(**{**PAUSED, "currentStep": 1})
    assert fmt.progress_key(stepped) != fmt.progress_key(rollout(**PAUSED))
    assert "applied 0/0" in fmt.progress_line(stepped, NOW)


@pytest.mark.parametrize(
    ("phase", "terminal"),
    [
        ("Succeeded", True),
        ("Failed", True),
        ("RolledBack", True),
        ("Aborted", True),
        ("Paused", False),
        ("Progressing", False),
        ("Pending", False),
        (None, False),
    ],
)
def test_terminal_phases(phase: str | None, terminal: bool) -> None:
    assert fmt.is_terminal(rollout(phase=phase)) is terminal


def revision(name: str, number: int, config_hash: str, seconds_ago: float) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": name,
            "namespace": "observability",
            "labels": {"opampoperator.io/fleet": "collectors"},
            "annotations": {"opampoperator.io/config-hash": config_hash},
            "creationTimestamp": ts(seconds_ago),
        },
        "revision": number,
        "data": {"config": "..."},
    }


def test_history_marks_desired_and_stable() -> None:
    revisions = [
        revision("collectors-1d316f7a9d", 2, H2, 8),
        revision("collectors-fdd5f997e9", 1, H1, 35),
        revision("collectors-2701349a68", 3, "2701349a68" + "c" * 54, 3),
    ]
    status = {"desiredRevision": "collectors-2701349a68", "stableRevision": "collectors-1d316f7a9d"}
    lines = fmt.history_table(revisions, status, NOW).splitlines()
    assert [line.split() for line in lines] == [
        list(fmt.HISTORY_HEADERS),
        ["1", "collectors-fdd5f997e9", H1[:12], "35s", "-"],
        ["2", "collectors-1d316f7a9d", H2[:12], "8s", "STABLE"],
        ["3", "collectors-2701349a68", "2701349a68cc", "3s", "DESIRED"],
    ]
    both = fmt.history_table(
        revisions[:1],
        {"desiredRevision": "collectors-1d316f7a9d", "stableRevision": "collectors-1d316f7a9d"},
        NOW,
    )
    assert both.splitlines()[1].split()[-1] == "DESIRED,STABLE"


def test_control_patches() -> None:
    assert fmt.control_patch("promote", "1764240000") == {
        "metadata": {"annotations": {"opampoperator.io/promote": "1764240000"}}
    }
    assert fmt.control_patch("abort", "t")["metadata"]["annotations"] == {
        "opampoperator.io/abort": "t"
    }
    assert fmt.control_patch("retry", "t")["metadata"]["annotations"] == {
        "opampoperator.io/retry": "t"
    }
    with pytest.raises(ValueError, match="unknown control"):
        fmt.control_patch("pause", "t")
    with pytest.raises(ValueError, match="empty"):
        fmt.control_patch("promote", "")
    assert fmt.paused_patch(True) == {"spec": {"paused": True}}
    assert fmt.paused_patch(False) == {"spec": {"paused": False}}


def test_notes_when_a_control_would_do_nothing() -> None:
    assert fmt.control_note("promote", rollout(**PAUSED)) is None
    spec_paused = rollout(
        {"fleetRef": {"name": "c"}, "paused": True}, phase="Paused", pauseReason="SpecPaused"
    )
    note = fmt.control_note("promote", spec_paused)
    assert note is not None
    assert "resume" in note
    assert fmt.control_note("promote", rollout(phase="Succeeded")) is not None
    assert fmt.control_note("retry", rollout(**ROLLED_BACK)) is None
    retry_note = fmt.control_note("retry", rollout(**PAUSED))
    assert retry_note == "the rollout is Paused; retry acts only in Aborted, Failed, RolledBack"
    assert fmt.control_note("abort", rollout(**PAUSED)) is None
    assert fmt.control_note("abort", rollout(phase="Succeeded")) is not None


def test_dump_json_and_yaml_round_trip() -> None:
    obj = fmt.as_list([fleet()])
    assert json.loads(fmt.dump(obj, "json")) == obj
    assert yaml.safe_load(fmt.dump(obj, "yaml")) == obj
    assert fmt.dump(obj, "yaml").startswith("apiVersion: v1\nkind: List\n")


def test_connection_flags_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["-n", "obs", "--context", "dev", "fleets"])
    after = parser.parse_args(["fleets", "-n", "obs", "--context", "dev"])
    for args in (before, after):
        assert (args.namespace, args.context, args.command) == ("obs", "dev", "fleets")
        assert getattr(args, "kubeconfig", None) is None
    assert parser.parse_args(["-n", "a", "fleets", "-n", "b"]).namespace == "b"
    assert parser.parse_args(["fleets", "-A", "-o", "yaml"]).all_namespaces is True


def test_rollout_and_agents_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["rollout", "status", "collectors", "-n", "obs", "--watch"])
    assert (args.command, args.action, args.rollout, args.watch) == (
        "rollout",
        "status",
        "collectors",
        True,
    )
    for action in ("promote", "abort", "pause", "resume", "retry", "history"):
        assert parser.parse_args(["rollout", action, "r"]).action == action
    with pytest.raises(SystemExit):
        parser.parse_args(["rollout", "promote", "r", "--watch"])
    with pytest.raises(SystemExit):
        parser.parse_args(["agents", "f", "--state", "sleepy"])
    agents = parser.parse_args(["agents", "f", "--state", "drifted"])
    assert (agents.fleet, agents.state, agents.operator_url) == ("f", "drifted", None)
    assert (agents.operator_ca_file, agents.insecure_skip_tls_verify) == (None, False)
    monkeypatch.setenv("OPAMP_OPERATOR_URL", "https://op:8443")
    monkeypatch.setenv("OPAMP_OPERATOR_CA_FILE", "/ca.crt")
    parsed = cli.build_parser().parse_args(["agents", "f"])
    assert (parsed.operator_url, parsed.operator_ca_file) == ("https://op:8443", "/ca.crt")


def test_without_an_operator_url_the_error_says_how_to_reach_the_api(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPAMP_OPERATOR_URL", raising=False)
    assert cli.main(["agents", "f", "-n", "obs"]) == 1
    err = capsys.readouterr().err
    assert "--operator-url" in err
    assert "port-forward svc/opamp-operator-api 8443" in err


def test_a_bad_operator_url_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["agents", "f", "-n", "obs", "--operator-url", "file:///etc/passwd"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --operator-url must be an https:// URL")
    assert cli.main(["agents", "f", "-n", "obs", "--operator-url", "http://op:8443"]) == 1
    assert "must be an https:// URL" in capsys.readouterr().err
