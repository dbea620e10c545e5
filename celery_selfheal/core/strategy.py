"""The strategy controller: given a step's attempt history and budgets, say what happens next.

It decides and never acts (tenacity style): the attempt loop does the killing, resetting,
sleeping and re-queueing. Every path spends a bounded budget, so the loop always ends:

* within a **round**, at most ``step_max_attempts`` attempts (soft resets between them);
* a round ends in an escalation: a **hard reset** while ``job_self_heal_max_resets`` allows,
  then a **queue retry** while ``job_queue_max_retries`` allows, then give up (retryable);
* the same failure signature with the same diff hash ``step_no_progress_limit`` times in a row
  escalates at once instead of spending the rest of the round;
* deterministic classes give up at once, spending nothing.

Deterministic beats no-progress: a deterministic failure ends the step even when it repeats the
previous attempt's signature (REQ-03: "end the step at once").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from celery_selfheal.core.backoff import compute_backoff
from celery_selfheal.core.budgets import Budgets
from celery_selfheal.core.model import (
    AttemptOutcome,
    Decision,
    DecisionKind,
    Detector,
    FailureClass,
    Strategy,
)

#: cap of the soft-reset backoff, in seconds
SOFT_RESET_BACKOFF_MAX = 60.0
#: jitter (fraction) of queue-retry countdowns, applied only when ``decide`` gets a ``rand``
QUEUE_RETRY_JITTER = 0.1


def _round_attempts(history: Sequence[AttemptOutcome]) -> list[AttemptOutcome]:
    """The attempts of the last attempt's round, in order."""
    last_round = history[-1].round
    return [a for a in history if a.round == last_round]


def no_progress_run(history: Sequence[AttemptOutcome]) -> int:
    """Length of the trailing run of failed attempts, within the last attempt's round, that share
    the last attempt's ``(signature, diff_hash)``. 0 when the history is empty or ends in success.
    """
    if not history or history[-1].ok:
        return 0
    key = (history[-1].signature, history[-1].diff_hash)
    run = 0
    for attempt in reversed(_round_attempts(history)):
        if attempt.ok or (attempt.signature, attempt.diff_hash) != key:
            break
        run += 1
    return run


def _secs(seconds: float) -> str:
    return f"{round(seconds, 2):g}s"


def decide(
    history: Sequence[AttemptOutcome],
    budgets: Budgets,
    *,
    resets_used: int,
    queue_retries_used: int,
    rand: Callable[[], float] | None = None,
) -> Decision:
    """Decide what follows the last attempt of ``history`` (all attempts of one step, in order).

    ``resets_used`` / ``queue_retries_used`` are the job's hard resets and this step's queue
    retries so far. ``rand`` (values in [0, 1)) adds +-10% jitter to queue-retry countdowns;
    without it every countdown is deterministic.
    """
    if not history:
        raise ValueError("decide() needs at least one finished attempt")
    last = history[-1]
    if last.ok:
        return Decision(kind=DecisionKind.DONE, reason=f"attempt {last.attempt} succeeded")

    cls = last.failure_class or FailureClass.TRANSIENT_RUNTIME
    detector = last.detector
    in_round = _round_attempts(history)
    k = len(in_round)
    run = no_progress_run(history)
    extra: dict[str, object] = {"attempt_in_round": k, "no_progress_run": run}
    label = f"{(detector.value if detector else 'failure')}, {cls.value}"

    if not cls.retryable:
        return Decision(
            kind=DecisionKind.GIVE_UP,
            reason=f"{label}: deterministic failure, not retried (attempt {last.attempt})",
            failure_class=cls,
            detector=detector,
            retryable=False,
            extra=extra,
        )

    if run >= budgets.step_no_progress_limit:
        cls, detector = FailureClass.STUCK_NO_PROGRESS, Detector.NO_PROGRESS
        label = f"{detector.value}, {cls.value}"
        why = f"same failure and diff {run} times in a row"
    elif cls is FailureClass.STUCK_NO_PROGRESS:
        why = f"stuck at attempt {k} of {budgets.step_max_attempts}"
    elif k < budgets.step_max_attempts:
        countdown = compute_backoff(
            k - 1, base=budgets.soft_reset_backoff_seconds, maximum=SOFT_RESET_BACKOFF_MAX
        )
        return Decision(
            kind=DecisionKind.SOFT_RESET,
            strategy=Strategy.SOFT_RESET,
            countdown=countdown,
            reason=f"{label}: attempt {k} of {budgets.step_max_attempts}, soft reset in {_secs(countdown)}",
            failure_class=cls,
            detector=detector,
            extra=extra,
        )
    else:
        why = f"attempt {k} of {budgets.step_max_attempts}, round exhausted"
    base = Decision(kind=DecisionKind.GIVE_UP, failure_class=cls, detector=detector, extra=extra)
    return _escalate(base, f"{label}: {why}", budgets, resets_used, queue_retries_used, rand)


def _escalate(
    base: Decision,
    why: str,
    budgets: Budgets,
    resets_used: int,
    queue_retries_used: int,
    rand: Callable[[], float] | None,
) -> Decision:
    """The escalation ladder: hard reset, then queue retry, then give up (retryable)."""
    if resets_used < budgets.job_self_heal_max_resets:
        n, cap = resets_used + 1, budgets.job_self_heal_max_resets
        return replace(
            base,
            kind=DecisionKind.HARD_RESET,
            strategy=Strategy.HARD_RESET,
            countdown=0.0,
            reason=f"{why}; hard reset {n} of {cap}",
        )
    if queue_retries_used < budgets.job_queue_max_retries:
        countdown = compute_backoff(
            queue_retries_used,
            base=budgets.queue_retry_backoff_seconds,
            maximum=budgets.queue_retry_backoff_max_seconds,
            jitter=QUEUE_RETRY_JITTER if rand is not None else 0.0,
            rand=rand,
        )
        n, cap = queue_retries_used + 1, budgets.job_queue_max_retries
        return replace(
            base,
            kind=DecisionKind.QUEUE_RETRY,
            strategy=Strategy.QUEUE_RETRY,
            countdown=countdown,
            reason=f"{why}; queue retry {n} of {cap} in {_secs(countdown)}",
        )
    return replace(
        base,
        retryable=True,
        reason=f"{why}; recovery exhausted ({resets_used} hard resets, {queue_retries_used} queue retries)",
    )
