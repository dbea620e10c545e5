"""`catch_up.steps_behind`: which checkpoints a stale workspace lacks, from its tree alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.workspace.catch_up import steps_behind

TREES = st.lists(st.sampled_from(["t0", "t1", "t2", "t3"]), min_size=1, max_size=8)


@given(TREES, st.sampled_from(["t0", "t1", "t2", "t3", "other"]))
def test_steps_behind_names_the_latest_earlier_match(trees: list[str], head: str) -> None:
    behind = steps_behind(trees, head)
    earlier = trees[:-1]
    if head not in earlier:
        assert behind is None
        return
    assert behind is not None and 1 <= behind <= len(trees) - 1
    done = len(trees) - 1 - behind
    assert trees[done] == head and head not in trees[done + 1:-1]  # the latest match before the last


def test_a_workspace_at_the_baseline_lacks_every_checkpoint() -> None:
    assert steps_behind(["base", "a", "b"], "base") == 2
    assert steps_behind(["base", "a", "base"], "base") == 2  # the last equals it: matching's case, not ours
    assert steps_behind(["base", "a", "b"], "b") is None
    assert steps_behind(["base"], "base") is None  # no checkpoint: nothing to bring forward
