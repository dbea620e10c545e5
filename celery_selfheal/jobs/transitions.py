"""Every change of a job's status, in one place.

Each transition is one compare-and-set on the stored record (so two workers, or a worker and an
operator, can race and exactly one wins) and, where the contract has one, one ``task.job.*`` event
from the winner. Terminal transitions all set the same fields (`state.OUTCOME_FIELDS`, with
``finishedAt``), and a rerun clears exactly those, so no writer can drift from another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.core.job_state import OUTCOME_FIELDS, PARK_FIELDS, JobState, JobStatus, StepStatus
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs.records import update_job, update_step


def outcome_fields(status: JobStatus, *, reason: str, failure_class: str | None = None,
                   retryable: bool | None = None, failed_step: int | None = None,
                   message: str | None = None) -> dict[str, Any]:
    """The fields a terminal transition writes: always all of `OUTCOME_FIELDS`."""
    fields = {"status": status.value, "terminalReason": reason, "finishedAt": utc_now_iso(),
              "failureClass": failure_class, "retryable": retryable, "failedStep": failed_step, "message": message}
    assert set(fields) - {"status"} == set(OUTCOME_FIELDS)
    return fields


def cleared_outcome() -> dict[str, Any]:
    """What a revived job no longer has: every field a terminal transition set."""
    return dict.fromkeys(OUTCOME_FIELDS)


def start(ctx: Context, job: JobState) -> bool:
    """queued/paused → running at the job's epoch; ``task.job.started`` the first time."""
    if job.status not in (JobStatus.QUEUED.value, JobStatus.PAUSED.value):
        return False
    events = [ctx.bus.build("task.job.started", job.job_id, epoch=job.epoch, baselineSha=job.get("baselineSha"),
                            steps=len(job.steps))] if job.status == JobStatus.QUEUED.value else []
    # the status and its event in one write: a follower never sees one without the other
    return _write(ctx, job.job_id, {"status": JobStatus.RUNNING.value},
                  expect={"status": job.status, "epoch": job.epoch}, events=events)


def _write(ctx: Context, job_id: str, changes: Mapping[str, Any], *, expect: Mapping[str, Any],
           events: list[dict[str, Any]], step: tuple[int, dict[str, Any]] | None = None) -> bool:
    """One compare-and-set of the job with its events in the same store write; the events then go
    to the sinks."""
    seqs = ctx.store.write_job(job_id, {**changes, "updatedAt": utc_now_iso()}, expect=dict(expect), step=step,
                               events=events)
    if seqs is None:
        return False
    for event, seq in zip(events, seqs, strict=True):
        ctx.bus.publish(event, seq)
    return True


def succeed(ctx: Context, job_id: str, epoch: int, *, step_id: str, step_index: int) -> bool:
    """running → succeeded after the last step; ``task.job.succeeded``."""
    return _write(ctx, job_id, outcome_fields(JobStatus.SUCCEEDED, reason="succeeded"),
                  expect=succeed_expect(epoch), events=[succeeded_event(ctx, job_id, epoch, step_id, step_index)])


def succeed_expect(epoch: int) -> dict[str, Any]:
    """What `succeed` compares: the job still running at ``epoch``."""
    return {"epoch": epoch, "status": JobStatus.RUNNING.value}


def succeeded_event(ctx: Context, job_id: str, epoch: int, step_id: str, step_index: int) -> dict[str, Any]:
    """``task.job.succeeded``, built (for a write that also records the last step: `steps.finish`)."""
    return ctx.bus.build("task.job.succeeded", job_id, epoch=epoch, stepIndex=step_index, stepId=step_id)


def fail(ctx: Context, job_id: str, epoch: int, *, step_id: str, step_index: int, failure_class: str,
         reason: str, retryable: bool, attempt: int | None = None, detector: str | None = None,
         from_status: str = JobStatus.RUNNING.value) -> bool:
    """``from_status`` → failed with a terminal reason (the failure class); ``task.job.failed``.
    The step is marked failed either way (idempotent)."""
    event = ctx.bus.build("task.job.failed", job_id, epoch=epoch, stepId=step_id, stepIndex=step_index,
                          attempt=attempt, failureClass=failure_class, detector=detector, retryable=retryable,
                          reason=reason)
    fields = outcome_fields(JobStatus.FAILED, reason=failure_class, failure_class=failure_class, retryable=retryable,
                            failed_step=step_index, message=ctx.redactor.redact(reason))
    # step, status and event in one write; if the job moved on, the step is still marked failed
    if _write(ctx, job_id, fields, expect={"epoch": epoch, "status": from_status}, events=[event],
              step=(step_index, {"status": StepStatus.FAILED.value})):
        return True
    update_step(ctx, job_id, step_index, status=StepStatus.FAILED.value)
    return False


def not_sent(ctx: Context, job_id: str, why: str) -> bool:
    """queued → failed (``not_sent``, retryable) for a job whose first message could not be sent:
    a queued job nobody will ever run must not wait forever."""
    return update_job(ctx, job_id, expect={"status": JobStatus.QUEUED.value},
                      **outcome_fields(JobStatus.FAILED, reason="not_sent", retryable=True,
                                       message=ctx.redactor.redact(f"could not send: {why}")))


def cancel(ctx: Context, job: JobState, request: Mapping[str, Any],
           before_event: Callable[[], object] | None = None) -> bool:
    """Any live status → cancelled (running/retrying steps too); ``task.job.cancelled``.
    ``before_event`` runs once the change is made and before the terminal event, so that what it
    emits (the request's ack) comes before the event followers stop at."""
    steps = [s.to_record() for s in job.steps]
    for s in steps:
        if s["status"] in (StepStatus.RUNNING.value, StepStatus.RETRYING.value):
            s["status"] = StepStatus.CANCELLED.value
    if not update_job(ctx, job.job_id, expect={"epoch": job.epoch, "status": job.status},
                      **outcome_fields(JobStatus.CANCELLED, reason="cancelled"), **_unparked(), steps=steps):
        return False
    if before_event is not None:
        before_event()
    current = job.current_step
    ctx.bus.emit("task.job.cancelled", job.job_id, epoch=job.epoch, stepIndex=current,
                 stepId=job.steps[current].step_id, actor=request.get("actor"), reason=request.get("reason"),
                 requestId=request.get("requestId"))
    return True


def park(ctx: Context, job: JobState, step_index: int, strategy: str, retry_context: Mapping[str, Any] | None,
         *, reason: str = "paused") -> bool:
    """→ paused, remembering what to run on resume, without holding a worker slot.

    Compare-and-set against the flags ``job`` was read with: False if an operator changed them
    meanwhile (a resume landed), so the caller decides again instead of parking for nothing."""
    expect = {"epoch": job.epoch, "paused": job.get("paused"), "takeover": job.get("takeover")}
    return update_job(ctx, job.job_id, expect=expect, status=JobStatus.PAUSED.value, pausedReason=reason,
                      parked={"stepIndex": step_index, "strategy": strategy,
                              "retryContext": dict(retry_context) if retry_context else None})


def resume_parked(ctx: Context, job: JobState) -> bool:
    """paused and parked → running (the caller enqueues the parked step). ``preempt`` is left alone:
    it belongs to whichever preempting request set it."""
    return update_job(ctx, job.job_id, expect={"epoch": job.epoch, "status": job.status, "parked": job.get("parked")},
                      status=JobStatus.RUNNING.value, paused=False, takeover=False, parked=None, pausedReason=None)


def clear_flags(ctx: Context, job: JobState) -> bool:
    """Clear pause/takeover on a job that was not parked yet (its status does not change)."""
    return update_job(ctx, job.job_id, expect={"epoch": job.epoch, "status": job.status, "parked": job.get("parked")},
                      paused=False, takeover=False)


def revive(ctx: Context, job: JobState, step_index: int, *, keep_pause: bool = False) -> bool:
    """Any status → running at a new epoch from ``step_index`` (operator rerun): the new epoch fences
    every older message and the running attempt; everything a terminal transition set is cleared.
    ``keep_pause``: a pause that was asked for stays asked for (the new attempt parks at once)."""
    park_state = _unparked()
    if keep_pause:
        park_state.pop("paused")
        park_state.pop("pausedReason")
    return update_job(ctx, job.job_id, expect={"epoch": job.epoch, "status": job.status},
                      epoch=job.epoch + 1, status=JobStatus.RUNNING.value, currentStep=step_index,
                      **park_state, **cleared_outcome())


def _unparked() -> dict[str, Any]:
    state: dict[str, Any] = {"paused": False, "parked": None, "pausedReason": None, "preempt": False}
    assert set(state) == set(PARK_FIELDS)
    return state
