"""The last line of defence of a step execution: an exception that escaped the attempt is its failure.

Whatever breaks between "attempt started" and "attempt recorded" (the runtime destroyed the
workspace's repository, git ran out of disk space, a file name the JSON encoder refuses, a store
hiccup) is recorded as the attempt's failure with a class, and the controller decides what follows
as for any failed attempt: no path leaves an attempt ``running`` for ever. If even recording fails,
the exception goes on to the step task, which leaves the attempt lease to expire so that the
lost-worker sweeper records the attempt (`cluster.sweeper`).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import replace

from celery_selfheal.context import Context
from celery_selfheal.core.model import AttemptOutcome, Detector, FailureClass
from celery_selfheal.core.signature import failure_signature
from celery_selfheal.core.strategy import decide
from celery_selfheal.errors import ReplayError, WorkspaceError
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs.records import step_history
from celery_selfheal.runtime.supervisor import RuntimeResult
from celery_selfheal.steps.attempt import AttemptPlan
from celery_selfheal.steps.finish import complete_step, record_failure
from celery_selfheal.steps.finished import FinishedAttempt
from celery_selfheal.steps.lost import UNKNOWN_CHANGE
from celery_selfheal.steps.outcome import StepOutcome

log = logging.getLogger(__name__)

#: errors that may clear by themselves (space freed, a quota raised, a store back)
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.ENOMEM,
                               errno.EIO, errno.ETIMEDOUT})
_TRANSIENT_TEXT = ("no space left on device", "disk quota exceeded", "database or disk is full",
                   "database is locked", "cannot allocate memory", "timed out")
#: longest exception text kept in the record (the class and the first line are what matter)
MAX_REASON = 500


def exception_class(exc: BaseException) -> FailureClass:
    """The failure class of an exception that escaped an attempt: out-of-space and the like are
    transient (retried once they clear); a broken or replaced workspace is ``deterministic_repo``;
    anything else we do not understand is transient, so the step's budgets bound the retries."""
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS) or any(t in text for t in _TRANSIENT_TEXT):
        return FailureClass.TRANSIENT_RUNTIME
    if isinstance(exc, (WorkspaceError, ReplayError)):
        return FailureClass.DETERMINISTIC_REPO
    return FailureClass.TRANSIENT_RUNTIME


def crash_reason(exc: BaseException, stage: str) -> str:
    """One line: where it happened, the exception type and its first line (bounded)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"internal error while {stage}: {type(exc).__name__}: {first}"
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."


def finish_crashed_attempt(ctx: Context, plan: AttemptPlan, exc: BaseException, *, stage: str) -> StepOutcome:
    """Record the running attempt of ``plan`` as failed because of ``exc`` and decide what follows."""
    cls = exception_class(exc)
    reason = ctx.redactor.redact(crash_reason(exc, stage))
    record = ctx.store.get_attempt(plan.job_id, plan.step.index, plan.attempt) or {}
    if record.get("status") == "succeeded":  # it broke after the success was recorded: finish that
        log.warning("celery-selfheal: job %s step %s: %s after the attempt succeeded; completing the step",
                    plan.job_id, plan.step.index, reason)
        return complete_step(ctx, plan)
    log.error("celery-selfheal: job %s step %s attempt %s: %s (%s)", plan.job_id, plan.step.index,
              plan.attempt, reason, cls.value)
    if not record:  # it broke while the start was being written (one write: nothing was): record it now
        ctx.store.put_attempt(plan.job_id, plan.step.index, plan.attempt, {
            "stepId": plan.step.id, "round": plan.round, "epoch": plan.epoch, "status": "running",
            "attemptStrategy": plan.strategy, "startedAt": utc_now_iso()})
    result = RuntimeResult(exit_code=None, signal=None, detector=Detector.EXIT, cancelled=False, pid=0,
                           wall_seconds=0.0, idle_seconds=0.0, max_idle_seconds=0.0, detection_lag=None,
                           output_bytes=0, tail=reason)
    # the signature leaves out the volatile message: the same crash twice is "no progress"
    signature = failure_signature(f"crash {stage} {type(exc).__name__} {cls.value}")
    this = AttemptOutcome(attempt=plan.attempt, ok=False, failure_class=cls, signature=signature,
                          diff_hash=UNKNOWN_CHANGE.diff_hash, detector=Detector.EXIT, round=plan.round)
    history = [*step_history(ctx, plan.job_id, plan.step.index, plan.epoch), this]
    decision = decide(history, plan.budgets, resets_used=plan.resets_used,
                      queue_retries_used=plan.queue_retries_used)
    decision = replace(decision, reason=f"{reason}; {decision.reason}")  # the record says what broke
    done = FinishedAttempt(plan=plan, result=result, change=UNKNOWN_CHANGE, finished_at=utc_now_iso(),
                           summary=reason, decision=decision, ok=False, failure_class=cls, signature=signature)
    return record_failure(ctx, done)
