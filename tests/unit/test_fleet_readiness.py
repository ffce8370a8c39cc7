"""The readiness gate across operator starts: the startup grace and what is written."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_operator.fleet.health import agent_ready_condition
from opamp_operator.fleet.readiness import Spell, gate_write, held_since, next_spell, seen_since
from opamp_operator.fleet.views import AgentView
from opamp_operator.opamp.session import AgentState

GRACE, INTERVAL = 15.0, 5.0
GATE = "opampoperator.io/agent-ready"
T0 = "2026-12-01T00:00:00Z"
NO_AGENT = agent_ready_condition(None, "", GATE)


def _agent(state: AgentState, connected_at: float) -> AgentView:
    return AgentView(instance_uid="a", attributes={}, state=state, connected_at=connected_at)


def test_the_grace_starts_at_the_first_tick_and_ends_after_it() -> None:
    spell = next_spell(None, 1000.0, GRACE, INTERVAL)
    assert spell == Spell(1000.0, 1000.0)
    assert held_since(spell, 1000.0, GRACE) == 1000.0
    later = next_spell(spell, 1014.0, GRACE, INTERVAL)
    assert later == Spell(1000.0, 1014.0)
    assert held_since(later, 1014.0, GRACE) == 1000.0
    over = next_spell(later, 1015.0, GRACE, INTERVAL)
    assert held_since(over, 1015.0, GRACE) is None


def test_ticks_paused_longer_than_the_grace_start_a_new_one() -> None:
    spell = Spell(started=0.0, last_tick=100.0)
    assert next_spell(spell, 100.0 + GRACE + INTERVAL, GRACE, INTERVAL).started == 0.0
    resumed = next_spell(spell, 100.1 + GRACE + INTERVAL, GRACE, INTERVAL)
    assert resumed.started == resumed.last_tick == 100.1 + GRACE + INTERVAL
    assert held_since(resumed, resumed.started + 1.0, GRACE) == resumed.started


def test_a_zero_grace_holds_nothing() -> None:
    spell = next_spell(None, 5.0, 0.0, INTERVAL)
    assert held_since(spell, 5.0, 0.0) is None


def test_seen_means_connected_or_left_since_the_spell_began() -> None:
    assert not seen_since(None, 100.0)
    assert seen_since(_agent(AgentState.CONNECTED, 10.0), 100.0)
    assert seen_since(_agent(AgentState.STALE, 10.0), 100.0)
    assert seen_since(_agent(AgentState.DISCONNECTED, 150.0), 100.0)
    # Closed when this replica went standby, not back since it took over again.
    assert not seen_since(_agent(AgentState.DISCONNECTED, 10.0), 100.0)


def test_a_held_pod_keeps_its_condition_whatever_it_is() -> None:
    for observed in (("True", "AgentReady"), ("False", "ConfigPending"), None):
        assert gate_write(observed, NO_AGENT, held=True, now_iso=T0) is None
    assert gate_write(("True", "AgentReady"), NO_AGENT, held=False, now_iso=T0) == {
        **NO_AGENT,
        "lastTransitionTime": T0,
    }


def test_only_a_status_change_moves_the_transition_time() -> None:
    assert gate_write(("False", "NoAgent"), NO_AGENT, held=False, now_iso=T0) is None
    reason_only = gate_write(("False", "Disconnected"), NO_AGENT, held=False, now_iso=T0)
    assert reason_only == NO_AGENT
    assert gate_write(None, NO_AGENT, held=False, now_iso=T0) == {
        **NO_AGENT,
        "lastTransitionTime": T0,
    }


@settings(max_examples=300)
@given(
    ticks=st.lists(st.floats(0.0, 40.0), min_size=1, max_size=30),
    grace=st.floats(0.0, 30.0),
)
def test_an_unseen_agents_pod_is_never_unreadied_within_a_grace_of_any_spell(
    ticks: list[float], grace: float
) -> None:
    """Whatever the gaps between ticks, a write that unreadies a True pod whose agent was
    never seen happens only once the spell it falls in is at least a grace old."""
    spell, now = None, 0.0
    for gap in ticks:
        now += gap
        spell = next_spell(spell, now, grace, INTERVAL)
        since = held_since(spell, now, grace)
        held = since is not None and not seen_since(None, since)
        write = gate_write(("True", "AgentReady"), NO_AGENT, held=held, now_iso=T0)
        if write is not None:
            assert now - spell.started >= grace
        if gap > grace + INTERVAL:
            assert spell.started == now
