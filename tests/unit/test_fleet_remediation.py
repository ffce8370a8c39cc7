"""Drift remediation planning: re-offer, then restart, then give up — never a loop, not
even across operator restarts (the attempts persisted on the agents' pods)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.fleet.remediation import (
    PERSISTED_LIMIT,
    Action,
    Attempt,
    RemediationSettings,
    decode_attempt,
    encode_attempt,
    known_attempts,
    persisted_changes,
    plan_remediation,
)

H1, H2 = "aa" * 32, "bb" * 32
FAST = RemediationSettings(wait_seconds=10.0)


def test_a_drifted_agent_is_reoffered_first() -> None:
    plan = plan_remediation({"a": True, "b": False, "c": None}, {}, H1, {}, now=0.0)
    assert plan.actions == {"a": Action.REOFFER}
    assert plan.attempts["a"] == Attempt(H1, reoffers=1, last_at=0.0)
    assert set(plan.attempts) == {"a"}
    assert plan.remediated == ()
    assert plan.gave_up == ()


def test_next_step_waits_for_the_agent_to_report() -> None:
    first = plan_remediation({"a": True}, {}, H1, {"a": True}, now=0.0, settings=FAST)
    early = plan_remediation({"a": True}, first.attempts, H1, {"a": True}, now=5.0, settings=FAST)
    assert early.actions == {}
    assert early.attempts == first.attempts
    later = plan_remediation({"a": True}, first.attempts, H1, {"a": True}, now=10.0, settings=FAST)
    assert later.actions == {"a": Action.RESTART}
    assert later.attempts["a"].restarts == 1


def test_without_restart_capability_it_gives_up_after_the_reoffer() -> None:
    first = plan_remediation({"a": True}, {}, H1, {}, now=0.0, settings=FAST)
    second = plan_remediation({"a": True}, first.attempts, H1, {}, now=20.0, settings=FAST)
    assert second.actions == {}
    assert second.gave_up == ("a",)
    assert second.attempts["a"].gave_up
    third = plan_remediation({"a": True}, second.attempts, H1, {}, now=99.0, settings=FAST)
    assert third.actions == {}
    assert third.gave_up == ()


def test_drift_cleared_after_an_attempt_is_remediated_once() -> None:
    first = plan_remediation({"a": True}, {}, H1, {}, now=0.0)
    cleared = plan_remediation({"a": False}, first.attempts, H1, {}, now=1.0)
    assert cleared.remediated == ("a",)
    assert "a" not in cleared.attempts
    again = plan_remediation({"a": False}, cleared.attempts, H1, {}, now=2.0)
    assert again.remediated == ()


def test_a_new_desired_config_starts_over() -> None:
    gave_up = {"a": Attempt(H1, reoffers=1, restarts=1, last_at=0.0, gave_up=True)}
    plan = plan_remediation({"a": True}, gave_up, H2, {"a": True}, now=1.0)
    assert plan.actions == {"a": Action.REOFFER}
    assert plan.attempts["a"].desired_hash == H2


def test_unknown_verdict_keeps_the_attempt_and_gone_agents_are_dropped() -> None:
    attempts = {"a": Attempt(H1, reoffers=1, last_at=0.0), "gone": Attempt(H1, reoffers=1)}
    plan = plan_remediation({"a": None}, attempts, H1, {}, now=100.0)
    assert plan.actions == {}
    assert plan.attempts == {"a": attempts["a"]}


verdicts = st.dictionaries(
    st.sampled_from("abcdef"), st.sampled_from([True, False, None]), max_size=6
)


@settings(max_examples=200)
@given(
    rounds=st.lists(st.tuples(verdicts, st.floats(0, 50)), max_size=12),
    restartable=st.sets(st.sampled_from("abcdef")),
)
def test_actions_per_agent_are_bounded_and_only_for_drifted_agents(
    rounds: list[tuple[dict[str, bool | None], float]], restartable: set[str]
) -> None:
    can = {uid: True for uid in restartable}
    attempts: dict[str, Attempt] = {}
    done: dict[str, list[Action]] = {}
    now = 0.0
    for drift, step in rounds:
        now += step
        plan = plan_remediation(drift, attempts, H1, can, now=now, settings=FAST)
        for uid, action in plan.actions.items():
            assert drift[uid] is True
            if action is Action.RESTART:
                assert uid in restartable
            done.setdefault(uid, []).append(action)
        assert set(plan.attempts) <= set(drift)
        assert set(plan.remediated) <= {u for u, v in drift.items() if v is False}
        for uid in [u for u in done if u not in drift or drift[u] is False]:
            done.pop(uid)  # gone or back in sync: a later drift is a new episode
        attempts = dict(plan.attempts)
    for actions in done.values():
        assert actions.count(Action.REOFFER) <= FAST.max_reoffers
        assert actions.count(Action.RESTART) <= FAST.max_restarts


# ---- persisted attempts -------------------------------------------------------------

NOW = 1_796_000_000.0  # wall-clock seconds, as the shell passes them


def test_an_attempt_is_one_small_json_value_that_reads_back() -> None:
    attempt = Attempt(H1, reoffers=1, restarts=1, last_at=NOW + 0.75, gave_up=True)
    text = encode_attempt(attempt)
    assert json.loads(text) == {
        "hash": H1,
        "reoffers": 1,
        "restarts": 1,
        "gaveUp": True,
        "at": "2026-11-30T00:53:20Z",
    }
    assert decode_attempt(text) == Attempt(H1, 1, 1, NOW, True)  # whole seconds


@given(
    desired=st.text("0123456789abcdef", min_size=1, max_size=64),
    reoffers=st.integers(0, 100),
    restarts=st.integers(0, 100),
    at=st.floats(0, 4_102_444_800),  # up to 2100
    gave_up=st.booleans(),
)
def test_encoding_is_bounded_and_round_trips(
    desired: str, reoffers: int, restarts: int, at: float, gave_up: bool
) -> None:
    text = encode_attempt(Attempt(desired, reoffers, restarts, at, gave_up))
    assert len(text) <= PERSISTED_LIMIT
    decoded = decode_attempt(text)
    assert decoded == Attempt(desired, reoffers, restarts, float(int(at)), gave_up)
    assert encode_attempt(decoded) == text


GOOD = {"hash": H1, "reoffers": 1, "restarts": 0, "gaveUp": False, "at": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1, 2]",
        '"a string"',
        json.dumps({**GOOD, "hash": "ZZ"}),
        json.dumps({**GOOD, "hash": "a" * 65}),
        json.dumps({**GOOD, "reoffers": -1}),
        json.dumps({**GOOD, "reoffers": True}),
        json.dumps({**GOOD, "restarts": 10**6}),
        json.dumps({**GOOD, "gaveUp": "yes"}),
        json.dumps({**GOOD, "at": "yesterday"}),
        json.dumps({k: v for k, v in GOOD.items() if k != "at"}),
        json.dumps({**GOOD, "padding": "x" * PERSISTED_LIMIT}),
    ],
)
def test_anything_else_on_the_pod_is_no_attempt(text: str) -> None:
    assert decode_attempt(json.dumps(GOOD)) is not None
    assert decode_attempt(text) is None


def test_a_given_up_agent_stays_given_up_after_a_reload() -> None:
    can = {"a": True}
    first = plan_remediation({"a": True}, {}, H1, can, now=NOW, settings=FAST)
    second = plan_remediation({"a": True}, first.attempts, H1, can, now=NOW + 10, settings=FAST)
    third = plan_remediation({"a": True}, second.attempts, H1, can, now=NOW + 20, settings=FAST)
    assert [first.actions, second.actions, third.gave_up] == [
        {"a": Action.REOFFER},
        {"a": Action.RESTART},
        ("a",),
    ]
    pod = persisted_changes(third, {"a": True}, {"a": ""})["a"]
    assert pod is not None
    # A new process: nothing in memory, the pod's value loaded before deciding.
    loaded = known_attempts({}, {"a": pod}, H1)
    assert loaded["a"].gave_up
    for later in (NOW + 30, NOW + 3600):
        again = plan_remediation({"a": True}, loaded, H1, can, now=later, settings=FAST)
        assert (again.actions, again.gave_up, again.remediated) == ({}, (), ())
        assert persisted_changes(again, {"a": True}, {"a": pod}) == {}


def test_a_reload_mid_remediation_takes_the_next_step_not_the_same_one() -> None:
    first = plan_remediation({"a": True}, {}, H1, {"a": True}, now=NOW, settings=FAST)
    pod = encode_attempt(first.attempts["a"])
    loaded = known_attempts({}, {"a": pod}, H1)
    early = plan_remediation({"a": True}, loaded, H1, {"a": True}, now=NOW + 5, settings=FAST)
    assert early.actions == {}
    later = plan_remediation({"a": True}, loaded, H1, {"a": True}, now=NOW + 10, settings=FAST)
    assert later.actions == {"a": Action.RESTART}


def test_the_further_along_of_memory_and_pod_wins_and_other_configs_do_not_count() -> None:
    reoffered = Attempt(H1, reoffers=1, last_at=NOW)
    restarted = Attempt(H1, reoffers=1, restarts=1, last_at=NOW + 10)
    gave_up = Attempt(H1, reoffers=1, restarts=1, last_at=NOW + 10, gave_up=True)
    # The watch has not shown this process's own write yet: memory wins.
    assert known_attempts({"a": restarted}, {"a": encode_attempt(reoffered)}, H1) == {
        "a": restarted
    }
    # Another replica went further meanwhile: the pod wins.
    assert known_attempts({"a": reoffered}, {"a": encode_attempt(gave_up)}, H1) == {"a": gave_up}
    old = encode_attempt(Attempt(H2, reoffers=1, restarts=1, gave_up=True))
    assert known_attempts({"b": Attempt(H2, gave_up=True)}, {"a": old, "c": "junk"}, H1) == {}


def test_the_pod_is_written_on_each_step_and_cleared_when_in_sync() -> None:
    drift: dict[str, bool | None] = {
        "step": True,
        "same": True,
        "synced": False,
        "stale": None,
        "nopod": True,
    }
    same = encode_attempt(Attempt(H1, reoffers=1, last_at=NOW))
    held = {
        "step": "",
        "same": same,
        "synced": same,
        "stale": encode_attempt(Attempt(H2, reoffers=1)),
        "gone": same,
    }
    attempts = known_attempts({}, held, H1)
    plan = plan_remediation(drift, attempts, H1, {}, now=NOW + 1, settings=FAST)
    changes = persisted_changes(plan, drift, held)
    assert changes == {
        "step": encode_attempt(Attempt(H1, reoffers=1, last_at=NOW + 1)),
        "synced": None,
        "stale": None,
    }
    assert plan.remediated == ("synced",)
    assert "nopod" in plan.attempts  # an agent without a pod: memory only


@settings(max_examples=200)
@given(
    rounds=st.lists(
        st.tuples(verdicts, st.floats(0, 50), st.booleans()),
        max_size=16,
    ),
    restartable=st.sets(st.sampled_from("abcdef")),
)
def test_restarts_of_the_operator_never_repeat_a_step(
    rounds: list[tuple[dict[str, bool | None], float, bool]], restartable: set[str]
) -> None:
    """Pod-backed agents: memory is lost at any round (`restarted`), the pods keep what
    was written; per agent and drift episode, steps stay within the settings."""
    can = {uid: True for uid in restartable}
    memory: dict[str, Attempt] = {}
    pods: dict[str, str] = {uid: "" for uid in "abcdef"}
    done: dict[str, list[Action]] = {}
    now = NOW
    for drift, step, restarted in rounds:
        now += step
        if restarted:
            memory = {}
        attempts = known_attempts(memory, pods, H1)
        plan = plan_remediation(drift, attempts, H1, can, now=now, settings=FAST)
        for uid, value in persisted_changes(plan, drift, pods).items():
            pods[uid] = value or ""
        memory = dict(plan.attempts)
        for uid, action in plan.actions.items():
            done.setdefault(uid, []).append(action)
        for uid in [u for u in done if drift.get(u) is False]:
            done.pop(uid)  # back in sync: the pod is cleared, a later drift is a new episode
            assert pods[uid] == ""
    for actions in done.values():
        assert actions.count(Action.REOFFER) <= FAST.max_reoffers
        assert actions.count(Action.RESTART) <= FAST.max_restarts
