"""Job-level transitions taken by the step runner: park (pause without a worker slot), fail."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.core.jobfile import StepSpec
from celery_selfheal.core.model import FailureClass
from celery_selfheal.jobs.records import update_job, update_step
from celery_selfheal.steps.outcome import OutcomeKind, StepOutcome


def park(ctx: Context, job: Mapping[str, Any], step_index: int, strategy: str,
         retry_context: Mapping[str, Any] | None, *, reason: str = "paused") -> StepOutcome | None:
    """Pause without holding a worker slot: remember what to run and stop the chain.

    Compare-and-set against the flags ``job`` was read with; None if an operator changed them
    meanwhile (e.g. a resume landed), so the caller decides again instead of parking for nothing."""
    expect = {"epoch": job.get("epoch"), "paused": job.get("paused"), "takeover": job.get("takeover")}
    if not update_job(ctx, job["jobId"], expect=expect, status="paused", pausedReason=reason,
                      parked={"stepIndex": step_index, "strategy": strategy,
                              "retryContext": dict(retry_context) if retry_context else None}):
        return None
    return StepOutcome(OutcomeKind.STOP, step_index, reason=reason)


def fail_job(ctx: Context, job_id: str, epoch: int, step: StepSpec, cls: FailureClass, reason: str,
             *, retryable: bool, attempt: int | None = None) -> StepOutcome:
    """End the job as failed with a terminal reason (idempotent through the status CAS)."""
    update_step(ctx, job_id, step.index, status="failed")
    if update_job(ctx, job_id, expect={"epoch": epoch, "status": "running"}, status="failed",
                  terminalReason=cls.value, failureClass=cls.value, retryable=retryable, failedStep=step.index,
                  message=ctx.redactor.redact(reason)):
        ctx.bus.emit("task.job.failed", job_id, epoch=epoch, stepId=step.id, stepIndex=step.index,
                     attempt=attempt, failureClass=cls.value, retryable=retryable, reason=reason)
    return StepOutcome(OutcomeKind.STOP, step.index, reason=reason)
