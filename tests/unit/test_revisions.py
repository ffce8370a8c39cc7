"""Revision planning: one object per distinct config, ordered by last use, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from opamp_operator.k8s.revisions import Revision, plan, revision_name


def test_first_config_creates_revision_one() -> None:
    p = plan("gw", [], "aaaa" * 16, limit=10)
    assert p.create
    assert p.current == Revision(revision_name("gw", "aaaa" * 16), 1, "aaaa" * 16)
    assert p.prune == ()


def test_unchanged_config_reuses_the_current_revision() -> None:
    current = Revision("gw-aaaaaaaaaa", 3, "a" * 64)
    p = plan("gw", [Revision("gw-bbbbbbbbbb", 2, "b" * 64), current], "a" * 64, limit=10)
    assert not p.create
    assert p.current == current


def test_returning_to_an_old_config_reuses_its_object_with_a_new_number() -> None:
    old = Revision("gw-aaaaaaaaaa", 1, "a" * 64)
    p = plan("gw", [old, Revision("gw-bbbbbbbbbb", 2, "b" * 64)], "a" * 64, limit=10)
    assert not p.create  # the object exists; the handler bumps its revision number
    assert p.current == Revision("gw-aaaaaaaaaa", 3, "a" * 64)


def test_history_is_pruned_to_the_limit_least_recently_used_first() -> None:
    existing = [Revision(f"gw-{i}", i, f"{i}" * 64) for i in range(1, 6)]
    p = plan("gw", existing, "new" * 20, limit=3)
    assert p.current.revision == 6
    assert set(p.prune) == {"gw-1", "gw-2", "gw-3"}


@given(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=30), st.integers(1, 5))
def test_replaying_config_changes_keeps_at_most_limit_revisions(
    changes: list[str], limit: int
) -> None:
    revisions: dict[str, Revision] = {}
    for c in changes:
        h = c * 64
        p = plan("gw", list(revisions.values()), h, limit)
        for name in p.prune:
            revisions = {k: r for k, r in revisions.items() if r.name != name}
        revisions[h] = p.current
        assert len(revisions) <= limit
        assert p.current.revision == max(r.revision for r in revisions.values())
        assert len({r.revision for r in revisions.values()}) == len(revisions)
