"""One step-task execution, in the order it happens: controls, admission, workspace, attempt, finish.

Celery-free on purpose: it returns a `StepOutcome` and the thin Celery task (`wiring.tasks`)
translates it into "continue the chain", ``Task.retry(...)`` or "stop the chain". Whether a
delivery runs at all is the pure `core.admission.admit`; recording and deciding after the runtime
ends is `steps.finish`, also used when an attempt's executor died (`steps.lost`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery_selfheal.context import Context
from celery_selfheal.core.admission import Admission, StepDelivery, Verdict, admit
from celery_selfheal.core.job_state import DECIDED_ATTEMPTS, JobState, StepStatus
from celery_selfheal.core.model import FailureClass, Strategy
from celery_selfheal.errors import ReplayError, WorkspaceError
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs import transitions
from celery_selfheal.jobs.records import outcome_of, step_budgets
from celery_selfheal.runtime.spec import WakeCheck
from celery_selfheal.steps.attempt import AttemptPlan, run_attempt
from celery_selfheal.steps.crashed import crash_reason, exception_class, finish_crashed_attempt
from celery_selfheal.steps.finish import fail_step, finish_attempt
from celery_selfheal.steps.outcome import Enqueue, StepOutcome
from celery_selfheal.steps.running import OutputToucher, RunningAttempts
from celery_selfheal.steps.workspace import prepare_workspace
from celery_selfheal.store.base import AttemptWrite, JobSnapshot
from celery_selfheal.workspace.git import GitWorkspace

if TYPE_CHECKING:
    from celery_selfheal.cluster.leases import AttemptLease


log = logging.getLogger(__name__)
#: how often a park is retried when an operator changes the job's flags at the same moment
_PARK_TRIES = 3
#: how often a running attempt looks at its lease-lost flag (a local attribute, no I/O), and reads
#: its job for a cancel/preempt/new epoch when the store cannot push (20 reads/s per attempt):
#: keeps "lease lost -> runtime TERMed" and, polled, "cancel -> runtime gone" within about 100 ms
#: plus the kill grace (bench/bench_cancel.py)
CANCEL_POLL_SECONDS = 0.05
#: how often a running attempt reads its job when the store pushes preempting requests
#: (`StateStore.wake`): the read then only catches a push that was lost (a publish while the Redis
#: subscriber reconnects, a FIFO removed by hand), so a lost push costs at most this much latency
#: for 2 reads/s per running attempt instead of 20
PREEMPT_FALLBACK_SECONDS = 0.5


def preempt_check(ctx: Context, job_id: str, epoch: int) -> Callable[[], bool]:
    """True once the attempt must stop: job cancelled, superseded by a new epoch, or preempted."""

    def check() -> bool:
        job = ctx.store.get_job(job_id)
        return (job is None or job.get("epoch") != epoch or job.get("status") == "cancelled"
                or bool(job.get("preempt")))

    return check


def execute_step(ctx: Context, delivery: StepDelivery, *, task_id: str, hostname: str = "",
                 enqueue: Enqueue | None = None, lease: AttemptLease | None = None,
                 job: Mapping[str, Any] | None = None, state: JobSnapshot | None = None) -> StepOutcome:
    """Run one attempt of the delivered step if the job still wants it, and decide what comes next.

    ``enqueue(job, step_index, countdown=..., **first_kwargs)`` sends a chain from a step; operator
    requests pending on the job are applied with it before anything runs. ``job``, or ``state`` (the
    job with its attempts, pending requests and checkpoints): the records as the caller just read
    them under the job's lease (the attempt gate), to save the reads when no request was pending."""
    if state is not None and job is None:
        job = state.job
    if enqueue is not None and _apply_controls(ctx, delivery.job_id, enqueue, state.pending if state else None):
        job = state = None  # the requests changed the job: read it again
    job_state, admission = _admission(ctx, delivery, job)
    attempts = state.attempts if state is not None else None
    checkpoints = state.checkpoints if state is not None else None
    return _execute(ctx, delivery, job_state, admission, attempts, checkpoints, task_id=task_id, hostname=hostname,
                    enqueue=enqueue, lease=lease)


def _execute(ctx: Context, delivery: StepDelivery, state: JobState | None, admission: Admission,
             attempts: list[dict[str, Any]] | None, checkpoints: list[dict[str, Any]] | None, *, task_id: str,
             hostname: str, enqueue: Enqueue | None, lease: AttemptLease | None) -> StepOutcome:
    """`execute_step` once the delivery was admitted (or not)."""
    if admission.verdict is not Verdict.RUN or state is None:
        return StepOutcome.stop(delivery.step_index, admission.reason)
    transitions.start(ctx, state)
    try:
        ws = prepare_workspace(ctx, state, delivery.step_index, delivery.strategy, checkpoints)
    except (ReplayError, WorkspaceError) as exc:
        step = state.spec.steps[delivery.step_index]
        return fail_step(ctx, delivery.job_id, delivery.epoch, step, FailureClass.DETERMINISTIC_REPO, str(exc),
                         retryable=False)
    except Exception as exc:  # e.g. no space left for the rebuild: the job ends, retryable if it may clear
        cls = exception_class(exc)
        return fail_step(ctx, delivery.job_id, delivery.epoch, state.spec.steps[delivery.step_index], cls,
                         ctx.redactor.redact(crash_reason(exc, "preparing the workspace")), retryable=cls.retryable)
    plan = plan_attempt(ctx, state, delivery, attempts)
    stage = StageTracker("starting the attempt")
    try:
        started = record_start(ctx, plan, delivery, task_id=task_id, hostname=hostname, lease=lease)
        if started is None:  # an operator rerun began (new epoch): nothing was recorded
            return StepOutcome.stop(delivery.step_index, "superseded while preparing the workspace")
        seq, record, event = started
        plan = replace(plan, events_after=seq - 1, started_event=event)
        outcome = _run_and_finish(ctx, plan, ws, task_id=task_id, hostname=hostname, lease=lease, stage=stage,
                                  record=record)
    except Exception as exc:  # the last line of defence: the attempt never stays `running`
        if lease is not None and lease.lost:  # fenced: another worker may own the step, the sweeper records it
            return StepOutcome.stop(delivery.step_index, "attempt lease lost")
        return finish_crashed_attempt(ctx, plan, exc, stage=stage.name)
    if outcome.preempted and enqueue is not None:
        # preempted by an operator request: apply it now, from the slot we are about to free
        _apply_controls(ctx, delivery.job_id, enqueue)
    return outcome


def _apply_controls(ctx: Context, job_id: str, enqueue: Enqueue,
                    pending: list[dict[str, Any]] | None = None) -> bool:
    """Apply the job's pending operator requests (True if there were any). ``pending``: as just
    read by the caller (None: read them now)."""
    if not (ctx.store.pending_control(job_id) if pending is None else pending):
        return False
    from celery_selfheal.control.apply import apply_pending_controls

    apply_pending_controls(ctx, job_id, enqueue=enqueue)
    return True


def _admission(ctx: Context, delivery: StepDelivery,
               record: Mapping[str, Any] | None) -> tuple[JobState | None, Admission]:
    """Admit the delivery, parking the job when the admission says so (compare-and-set, so a
    resume landing at the same moment makes us look again)."""
    for _ in range(_PARK_TRIES):
        if record is None:
            record = ctx.store.get_job(delivery.job_id)
        state = None if record is None else JobState.from_record(record)
        admission = admit(state, delivery)
        if admission.verdict is not Verdict.PARK or state is None:
            return state, admission
        if transitions.park(ctx, state, delivery.step_index, delivery.strategy, delivery.retry_context,
                            reason=admission.reason):
            return state, Admission(Verdict.STOP, admission.reason)
        record = None
    return None, Admission(Verdict.STOP, "superseded while parking")


class StageTracker:
    """Which stage of the attempt is running (named in the record of an attempt that crashed)."""

    def __init__(self, name: str) -> None:
        self.name = name


def plan_attempt(ctx: Context, job: JobState, delivery: StepDelivery,
                 attempts: list[dict[str, Any]] | None = None) -> AttemptPlan:
    """Number the attempt and say what it runs (no record written yet). ``attempts``: the job's
    attempt records if the caller read them under the lease."""
    idx = delivery.step_index
    spec = job.spec
    if attempts is None:
        earlier = ctx.store.list_attempts(delivery.job_id, idx)
    else:
        earlier = sorted((a for a in attempts if a.get("stepIndex") == idx), key=lambda a: a["attempt"])
    prior = tuple(outcome_of(a) for a in earlier
                  if a.get("status") in DECIDED_ATTEMPTS and a.get("epoch", 0) == delivery.epoch)
    return AttemptPlan(job_id=delivery.job_id, step=spec.steps[idx], argv=spec.step_runtime(idx),
                       attempt=max((a["attempt"] for a in earlier), default=0) + 1, round=job.steps[idx].round,
                       epoch=delivery.epoch, strategy=delivery.strategy, budgets=step_budgets(job.extra, idx, spec),
                       retry_context=delivery.retry_context, step_count=len(job.steps), resets_used=job.resets_used,
                       queue_retries_used=job.queue_retries_used, objective=spec.objective,
                       start_tree=kept_tree(earlier, delivery.strategy), prior=prior)


def record_start(ctx: Context, plan: AttemptPlan, delivery: StepDelivery, *, task_id: str, hostname: str,
                 lease: AttemptLease | None) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """Store the attempt's ``running`` record, mark the step running and persist ``attempt.started``,
    in one store write, while the job is still at the attempt's epoch. Returns the event's sequence
    number, the record and the event as stored, or None (nothing written) when an operator rerun moved the job
    to another epoch."""
    idx, epoch, step, attempt = plan.step.index, plan.epoch, plan.step, plan.attempt
    record = {
        "jobId": delivery.job_id, "stepId": step.id, "stepIndex": idx, "attempt": attempt,
        "round": plan.round, "epoch": epoch, "status": "running", "attemptStrategy": delivery.strategy,
        "taskId": task_id, "hostname": hostname, "startedAt": utc_now_iso(),
        **(lease.record_fields() if lease is not None else {}),
    }
    event = ctx.bus.build("task.step.attempt.started", delivery.job_id, epoch=epoch, stepId=step.id, stepIndex=idx,
                          attempt=attempt, strategy=plan.recovery_strategy, attemptStrategy=plan.recovery_strategy,
                          round=plan.round)
    seqs = ctx.store.write_job(delivery.job_id, {"currentStep": idx, "updatedAt": utc_now_iso()},
                               expect={"epoch": epoch},
                               step=(idx, {"status": StepStatus.RUNNING.value, "attempts": attempt}),
                               attempt=AttemptWrite(idx, attempt, record), events=[event])
    if not seqs:
        return None
    stored = dict(event)
    ctx.bus.publish(event, seqs[0])
    return seqs[0], {**record, "jobId": delivery.job_id, "stepIndex": idx, "attempt": attempt}, stored


def kept_tree(earlier: list[dict[str, Any]], strategy: str) -> str | None:
    """The tree a workspace-keeping retry starts from: what the previous attempt left."""
    if strategy not in (Strategy.SOFT_RESET.value, Strategy.OPERATOR_REQUEST.value) or not earlier:
        return None
    last = max(earlier, key=lambda a: a["attempt"])
    tree = last.get("treeAfter")
    return str(tree) if tree else None


def _run_and_finish(ctx: Context, plan: AttemptPlan, ws: GitWorkspace, *, task_id: str, hostname: str,
                    lease: AttemptLease | None, stage: StageTracker,
                    record: dict[str, Any] | None = None) -> StepOutcome:
    """Run the runtime under the watchdogs and the cancel check, then record and decide. ``record``:
    the attempt's record as stored (kept up to date here, so that recording the end needs no read)."""
    registry = RunningAttempts(ctx.settings.run_dir)
    idx = plan.step.index
    fresh = [True]  # emptied if the record changed in a way this execution did not write

    def on_start(pid: int) -> None:
        registry.register(task_id, {"jobId": plan.job_id, "stepId": plan.step.id, "stepIndex": idx,
                                    "attempt": plan.attempt, "epoch": plan.epoch, "pgid": pid, "hostname": hostname,
                                    **(lease.record_fields() if lease is not None else {})})
        if ctx.store.transition_attempt(plan.job_id, idx, plan.attempt, "running", {"pid": pid}):
            if record is not None:
                record["pid"] = pid
        else:
            fresh.clear()  # someone else changed the record: read it when recording the end

    stage.name = "running the attempt"
    if lease is not None:  # a fenced attempt's runtime must be dead before its lease can expire
        lease.fit_kill_grace(plan.budgets.kill_grace_seconds)
    # the lease flag is local and looked at often; the job is read on a wake-up or when due
    lost = (lambda: lease.lost) if lease is not None else None
    wakeup = ctx.store.wake_listener(plan.job_id)
    wake = WakeCheck(preempt_check(ctx, plan.job_id, plan.epoch),
                     PREEMPT_FALLBACK_SECONDS if wakeup is not None else CANCEL_POLL_SECONDS, wakeup)
    try:
        facts = run_attempt(ctx, plan, ws, cancel_check=lost, on_start=on_start,
                            on_activity=OutputToucher(registry, task_id), cancel_poll=CANCEL_POLL_SECONDS,
                            wake=wake)
    finally:
        registry.unregister(task_id)
        if wakeup is not None:
            wakeup.close()
    if lease is not None and not lease.confirm():
        # another worker may own the step now: record nothing, the lost-worker sweeper records this attempt
        return StepOutcome.stop(idx, "attempt lease lost")
    stage.name = "recording the attempt"
    return finish_attempt(ctx, plan, facts, ws, started=record if fresh else None)
