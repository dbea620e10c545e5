from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_selfheal.core.budgets import Budgets
from celery_selfheal.core.model import AttemptOutcome, DecisionKind, Detector, FailureClass, Strategy
from celery_selfheal.core.strategy import decide, no_progress_run

T, S = FailureClass.TRANSIENT_RUNTIME, FailureClass.STUCK_NO_PROGRESS
P = FailureClass.DETERMINISTIC_POLICY
IDLE, EXIT = Detector.IDLE_TIMEOUT, Detector.EXIT


def fail(n, sig="x", diff="d", cls=T, det=IDLE, rnd=0):
    return AttemptOutcome(
        attempt=n, ok=False, failure_class=cls, signature=sig, diff_hash=diff, detector=det, round=rnd
    )


def ok(n, rnd=0):
    return AttemptOutcome(attempt=n, ok=True, diff_hash="d", round=rnd)


B = Budgets()  # 3 attempts, no-progress 2, 1 reset, 2 queue retries, soft 1s, queue 30s..600s


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], 0),
        ([ok(1)], 0),
        ([fail(1)], 1),
        ([fail(1), fail(2)], 2),
        ([fail(1), fail(2, diff="e")], 1),
        ([fail(1), fail(2, sig="y")], 1),
        ([fail(1), ok(2), fail(3)], 1),
        ([fail(1), fail(2), fail(3, rnd=1)], 1),  # a new round starts afresh
        ([fail(1, sig="y"), fail(2), fail(3)], 2),
        ([fail(1, sig=None), fail(2, sig=None)], 2),
    ],
)
def test_no_progress_run(history, expected):
    assert no_progress_run(history) == expected


@pytest.mark.parametrize(
    ("history", "resets", "queued", "kind", "strategy", "countdown", "reason"),
    [
        ([ok(1)], 0, 0, DecisionKind.DONE, None, 0, "attempt 1 succeeded"),
        ([fail(1)], 0, 0, DecisionKind.SOFT_RESET, Strategy.SOFT_RESET, 1.0,
         "idle_timeout, transient_runtime: attempt 1 of 3, soft reset in 1s"),
        ([fail(1, sig="a"), fail(2, sig="b")], 0, 0, DecisionKind.SOFT_RESET, Strategy.SOFT_RESET, 2.0,
         "idle_timeout, transient_runtime: attempt 2 of 3, soft reset in 2s"),
        ([fail(1, sig="a"), fail(2, sig="b"), fail(3, sig="c")], 0, 0, DecisionKind.HARD_RESET,
         Strategy.HARD_RESET, 0.0,
         "idle_timeout, transient_runtime: attempt 3 of 3, round exhausted; hard reset 1 of 1"),
        ([fail(1, sig="a"), fail(2, sig="b"), fail(3, sig="c")], 1, 0, DecisionKind.QUEUE_RETRY,
         Strategy.QUEUE_RETRY, 30.0,
         "idle_timeout, transient_runtime: attempt 3 of 3, round exhausted; queue retry 1 of 2 in 30s"),
        ([fail(1, sig="a"), fail(2, sig="b"), fail(3, sig="c")], 1, 1, DecisionKind.QUEUE_RETRY,
         Strategy.QUEUE_RETRY, 60.0, "queue retry 2 of 2 in 60s"),
        ([fail(1, sig="a"), fail(2, sig="b"), fail(3, sig="c")], 1, 2, DecisionKind.GIVE_UP, None, 0.0,
         "round exhausted; recovery exhausted (1 hard resets, 2 queue retries)"),
        # no progress: same signature and diff twice escalates before the round is spent
        ([fail(1), fail(2)], 0, 0, DecisionKind.HARD_RESET, Strategy.HARD_RESET, 0.0,
         "no_progress, stuck_no_progress: same failure and diff 2 times in a row; hard reset 1 of 1"),
        ([fail(1), fail(2, diff="changed")], 0, 0, DecisionKind.SOFT_RESET, Strategy.SOFT_RESET, 2.0,
         "attempt 2"),
        # a later round counts its own attempts
        ([fail(1, "a"), fail(2, "b"), fail(3, "c"), fail(4, "d", rnd=1)], 1, 0, DecisionKind.SOFT_RESET,
         Strategy.SOFT_RESET, 1.0, "attempt 1 of 3, soft reset in 1s"),
        # a classifier that already says stuck escalates at once
        ([fail(1, cls=S, det=EXIT)], 0, 0, DecisionKind.HARD_RESET, Strategy.HARD_RESET, 0.0,
         "exit, stuck_no_progress: stuck at attempt 1 of 3; hard reset 1 of 1"),
        # deterministic: give up at once, not retryable, even when it repeats the last failure
        ([fail(1, cls=P, det=EXIT)], 0, 0, DecisionKind.GIVE_UP, None, 0.0,
         "exit, deterministic_policy: deterministic failure, not retried (attempt 1)"),
        ([fail(1), fail(2, cls=P, det=EXIT)], 0, 0, DecisionKind.GIVE_UP, None, 0.0, "deterministic_policy"),
    ],
)  # fmt: skip
def test_decision_table(history, resets, queued, kind, strategy, countdown, reason):
    d = decide(history, B, resets_used=resets, queue_retries_used=queued)
    assert (d.kind, d.strategy, d.countdown) == (kind, strategy, countdown)
    assert reason in d.reason, d.reason
    if kind is DecisionKind.GIVE_UP:
        assert d.retryable is (history[-1].failure_class is not P)


def test_no_progress_upgrades_class_and_detector():
    d = decide([fail(1), fail(2)], B, resets_used=1, queue_retries_used=2)
    assert (d.failure_class, d.detector, d.kind, d.retryable) == (
        S,
        Detector.NO_PROGRESS,
        DecisionKind.GIVE_UP,
        True,
    )
    assert d.extra == {"attempt_in_round": 2, "no_progress_run": 2}


def test_budgets_shape_the_decision():
    b = Budgets(step_max_attempts=1, job_self_heal_max_resets=0, job_queue_max_retries=0)
    assert decide([fail(1)], b, resets_used=0, queue_retries_used=0).kind is DecisionKind.GIVE_UP
    b = Budgets(step_no_progress_limit=1)
    assert decide([fail(1)], b, resets_used=0, queue_retries_used=0).failure_class is S
    history = [fail(i, sig=str(i)) for i in range(1, 9)]
    b = Budgets(step_max_attempts=20, soft_reset_backoff_seconds=10)
    assert decide(history, b, resets_used=0, queue_retries_used=0).countdown == 60.0  # capped
    b = Budgets(queue_retry_backoff_seconds=100, queue_retry_backoff_max_seconds=150)
    assert (
        decide([fail(1, "a"), fail(2, "b"), fail(3, "c")], b, resets_used=1, queue_retries_used=1).countdown
        == 150
    )


def test_rand_adds_queue_jitter_only():
    three = [fail(1, "a"), fail(2, "b"), fail(3, "c")]
    low = decide(three, B, resets_used=1, queue_retries_used=0, rand=lambda: 0.0)
    high = decide(three, B, resets_used=1, queue_retries_used=0, rand=lambda: 0.99)
    assert (low.countdown, round(high.countdown, 3)) == (27.0, 32.94)
    assert decide([fail(1)], B, resets_used=0, queue_retries_used=0, rand=lambda: 0.0).countdown == 1.0


def test_empty_history_is_a_bug():
    with pytest.raises(ValueError):
        decide([], B, resets_used=0, queue_retries_used=0)


# --- the loop never overspends and always ends --------------------------------------------------

_outcome = st.tuples(
    st.booleans().map(lambda b: not b) | st.just(False),  # failures more likely than successes
    st.sampled_from([T, T, T, S, FailureClass.DETERMINISTIC_REPO]),
    st.sampled_from(["sig-a", "sig-b"]),
    st.sampled_from(["diff-a", "diff-b"]),
)


@settings(max_examples=300)
@given(
    max_attempts=st.integers(1, 5),
    no_progress=st.integers(1, 4),
    max_resets=st.integers(0, 3),
    max_queue=st.integers(0, 3),
    outcomes=st.lists(_outcome, max_size=200),
)
def test_simulated_loop_respects_every_budget(max_attempts, no_progress, max_resets, max_queue, outcomes):
    budgets = Budgets(
        step_max_attempts=max_attempts,
        step_no_progress_limit=no_progress,
        job_self_heal_max_resets=max_resets,
        job_queue_max_retries=max_queue,
    )
    history: list[AttemptOutcome] = []
    resets = queued = rnd = 0
    bound = max_attempts * (max_resets + max_queue + 1)
    feed = iter(outcomes)
    while True:
        is_ok, cls, sig, diff = next(feed, (False, T, "sig-a", "diff-a"))  # then: fail the same way forever
        n = len(history) + 1
        if is_ok:
            history.append(AttemptOutcome(n, ok=True, diff_hash=diff, round=rnd))
        else:
            history.append(fail(n, sig=sig, diff=diff, cls=cls, det=EXIT, rnd=rnd))
        d = decide(history, budgets, resets_used=resets, queue_retries_used=queued)
        assert sum(1 for a in history if a.round == rnd) <= max_attempts
        assert len(history) <= bound, "the loop must end within its total budget"
        if d.kind is DecisionKind.DONE:
            assert is_ok
            break
        if d.kind is DecisionKind.GIVE_UP:
            assert d.retryable is cls.retryable
            break
        assert d.countdown >= 0
        if d.kind is DecisionKind.HARD_RESET:
            resets += 1
            rnd += 1
        elif d.kind is DecisionKind.QUEUE_RETRY:
            queued += 1
            rnd += 1
        else:
            assert d.kind is DecisionKind.SOFT_RESET
    assert resets <= max_resets
    assert queued <= max_queue
