"""Drift remediation planning: re-offer, then restart, then give up — never a loop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.fleet.remediation import (
    Action,
    Attempt,
    RemediationSettings,
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
