"""The body of one step-task execution: fence, prepare the workspace, run one attempt, decide.

Celery-free on purpose: it returns a `StepOutcome` and the thin Celery task translates it into
"continue the chain", ``Task.retry(...)`` or "stop the chain". Recording and deciding after the
runtime ends lives in `attempt_finish`, also used when the worker MainProcess finishes an attempt
whose pool child was killed by the hard limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from celery_selfheal.attempt import AttemptPlan, run_attempt
from celery_selfheal.attempt_finish import finish_attempt
from celery_selfheal.context import Context
from celery_selfheal.core.model import (
    FailureClass,
)
from celery_selfheal.errors import ReplayError, WorkspaceError
from celery_selfheal.events import utc_now_iso
from celery_selfheal.job_transitions import fail_job, park
from celery_selfheal.jobs import spec_of, step_budgets
from celery_selfheal.outcome import INITIAL, TERMINAL_STATUSES, Enqueue, OutcomeKind, StepOutcome
from celery_selfheal.recording import (
    next_attempt_number,
    update_job,
    update_step,
)
from celery_selfheal.running import OutputToucher, RunningAttempts
from celery_selfheal.workspace_prep import prepare_workspace

if TYPE_CHECKING:
    from celery_selfheal.leases import AttemptLease


log = logging.getLogger(__name__)


def preempt_check(ctx: Context, job_id: str, epoch: int) -> Callable[[], bool]:
    """True once the attempt must stop: job cancelled, superseded by a new epoch, or preempted."""

    def check() -> bool:
        job = ctx.store.get_job(job_id)
        return (job is None or job.get("epoch") != epoch or job.get("status") == "cancelled"
                or bool(job.get("preempt")))

    return check


def execute_step(
    ctx: Context,
    *,
    job_id: str,
    step_index: int,
    epoch: int,
    strategy: str = INITIAL,
    retry_context: Mapping[str, Any] | None = None,
    task_id: str,
    hostname: str = "",
    enqueue: Enqueue | None = None,
    operator: bool = False,
    lease: AttemptLease | None = None,
) -> StepOutcome:
    """Run one attempt of ``step_index`` if the job still wants it, and decide what comes next.

    ``enqueue(job, step_index, countdown=..., **first_kwargs)`` sends a chain from a step; operator
    requests that are pending on the job are applied with it before anything runs."""
    if enqueue is not None and ctx.store.pending_control(job_id):
        from celery_selfheal.control import apply_pending_controls

        apply_pending_controls(ctx, job_id, enqueue=enqueue)
    job = ctx.store.get_job(job_id)
    if job is None:
        return StepOutcome(OutcomeKind.STOP, step_index, reason=f"unknown job {job_id}")
    if job.get("epoch") != epoch:
        return StepOutcome(OutcomeKind.STOP, step_index, reason=f"stale epoch {epoch} (job at {job.get('epoch')})")
    if job["status"] in TERMINAL_STATUSES:
        return StepOutcome(OutcomeKind.STOP, step_index, reason=f"job is {job['status']}")
    if job["steps"][step_index].get("status") == "succeeded":
        # a duplicate delivery of a finished step (operator reruns reset the step's status first)
        return StepOutcome(OutcomeKind.STOP, step_index, reason="step already succeeded in this epoch")
    for _ in range(3):  # park compares-and-sets; a concurrent resume makes us look again
        if not (job.get("paused") or (job.get("takeover") and strategy != INITIAL and not operator)):
            break
        parked = park(ctx, job, step_index, strategy, retry_context)
        if parked is not None:
            return parked
        job = ctx.store.get_job(job_id) or job
        if job.get("epoch") != epoch or job["status"] in TERMINAL_STATUSES:
            return StepOutcome(OutcomeKind.STOP, step_index, reason="superseded while parking")
    spec = spec_of(job)
    step = spec.steps[step_index]
    budgets = step_budgets(job, step_index)
    started = job["status"] in ("queued", "paused") and update_job(
        ctx, job_id, expect={"status": job["status"], "epoch": epoch}, status="running")
    if started and job["status"] == "queued":
        ctx.bus.emit("task.job.started", job_id, epoch=epoch, baselineSha=job.get("baselineSha"),
                         steps=len(spec.steps))
    try:
        ws = prepare_workspace(ctx, job, step_index, strategy)
    except (ReplayError, WorkspaceError) as exc:
        return fail_job(ctx, job_id, epoch, step, FailureClass.DETERMINISTIC_REPO, str(exc), retryable=False)
    if (ctx.store.get_job(job_id) or {}).get("epoch") != epoch:  # an operator rerun began meanwhile
        return StepOutcome(OutcomeKind.STOP, step_index, reason="superseded while preparing the workspace")
    attempt = next_attempt_number(ctx, job_id, step_index)
    step_state = job["steps"][step_index]
    plan = AttemptPlan(job_id=job_id, step=step, argv=spec.step_runtime(step_index), attempt=attempt,
                       round=step_state.get("round", 0), epoch=epoch, strategy=strategy, budgets=budgets,
                       retry_context=retry_context)
    ctx.store.put_attempt(job_id, step_index, attempt, {
        "jobId": job_id, "stepId": step.id, "stepIndex": step_index, "attempt": attempt,
        "round": plan.round, "epoch": epoch, "status": "running", "attemptStrategy": strategy,
        "taskId": task_id, "hostname": hostname, "startedAt": utc_now_iso(),
        **(lease.record_fields() if lease is not None else {}),
    })
    update_step(ctx, job_id, step_index, status="running", attempts=attempt)
    update_job(ctx, job_id, currentStep=step_index)
    ctx.bus.emit("task.step.attempt.started", job_id, epoch=epoch, stepId=step.id, stepIndex=step_index,
                 attempt=attempt, strategy=None if strategy == INITIAL else strategy,
                 attemptStrategy=None if strategy == INITIAL else strategy,
                 round=plan.round)
    registry = RunningAttempts(ctx.settings.run_dir)

    def on_start(pid: int) -> None:
        registry.register(task_id, {"jobId": job_id, "stepId": step.id, "stepIndex": step_index,
                                    "attempt": attempt, "epoch": epoch, "pgid": pid, "hostname": hostname,
                                    **(lease.record_fields() if lease is not None else {})})
        ctx.store.transition_attempt(job_id, step_index, attempt, "running", {"pid": pid})

    cancel = preempt_check(ctx, job_id, epoch)
    try:
        facts = run_attempt(ctx, plan, ws, cancel_check=lease.guard(cancel) if lease is not None else cancel,
                            on_start=on_start, on_activity=OutputToucher(registry, task_id))
    finally:
        registry.unregister(task_id)
    if lease is not None and not lease.confirm():
        # another worker may own the step now: record nothing, the lost-worker sweeper records this attempt
        return StepOutcome(OutcomeKind.STOP, step_index, reason="attempt lease lost")
    outcome = finish_attempt(ctx, plan, facts, ws)
    if facts.result.cancelled and enqueue is not None:
        # preempted by an operator request: apply it now, from the slot we are about to free
        from celery_selfheal.control import apply_pending_controls

        apply_pending_controls(ctx, job_id, enqueue=enqueue)
    return outcome
