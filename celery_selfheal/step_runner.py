"""The body of one step-task execution: fence, prepare the workspace, run one attempt, decide.

Celery-free on purpose: it returns a `StepOutcome` and the thin Celery task translates it into
"continue the chain", ``Task.retry(...)`` or "stop the chain". The same `finish_attempt` is used when
the worker MainProcess has to finish an attempt whose pool child was killed by the hard limit.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from celery_selfheal.attempt import AttemptFacts, AttemptPlan, run_attempt
from celery_selfheal.context import Context
from celery_selfheal.core.budgets import Budgets
from celery_selfheal.core.classify import FailureFacts, classify
from celery_selfheal.core.envelope import build_envelope, summarize_failure
from celery_selfheal.core.jobfile import StepSpec
from celery_selfheal.core.model import (
    AttemptOutcome,
    Decision,
    DecisionKind,
    Detector,
    FailureClass,
    Strategy,
)
from celery_selfheal.core.signature import failure_signature
from celery_selfheal.core.strategy import decide
from celery_selfheal.errors import ReplayError, WorkspaceError
from celery_selfheal.events import utc_now_iso
from celery_selfheal.jobs import spec_of, step_budgets
from celery_selfheal.recording import (
    next_attempt_number,
    step_history,
    update_job,
    update_step,
    write_attempt_artifact,
)
from celery_selfheal.running import OutputToucher, RunningAttempts
from celery_selfheal.workspace.checkpoints import write_checkpoint
from celery_selfheal.workspace.git import Change, GitWorkspace
from celery_selfheal.workspace_prep import prepare_workspace

if TYPE_CHECKING:
    from celery_selfheal.leases import AttemptLease

log = logging.getLogger(__name__)

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
#: ``enqueue(job, step_index, countdown=0.0, **first_kwargs) -> first task id``
Enqueue = Callable[..., str]
INITIAL = "initial"


class OutcomeKind(str, enum.Enum):
    """What the Celery layer does after a step-task execution."""

    NEXT = "next"      # step succeeded: let the chain continue
    DONE = "done"      # job succeeded
    RETRY = "retry"    # run the step again (Task.retry)
    STOP = "stop"      # stop the chain: stale, cancelled, parked, failed


@dataclass(frozen=True)
class StepOutcome:
    """The result of one execution, for the Celery layer."""

    kind: OutcomeKind
    step_index: int
    reason: str = ""
    countdown: float = 0.0
    strategy: str | None = None
    retry_context: Mapping[str, Any] | None = None
    budgets: Budgets | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def same_worker(self) -> bool:
        """Soft resets stay on the worker that has the workspace."""
        return self.strategy == Strategy.SOFT_RESET.value


def time_limits(budgets: Budgets) -> tuple[float, float]:
    """Celery (soft, hard) limits backing up the in-process watchdogs, with room for the kill grace,
    workspace preparation and the checkpoint."""
    soft = budgets.step_timeout_seconds + budgets.kill_grace_seconds + 15.0
    return soft, soft + 15.0


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
                 attempt=attempt, strategy=None if strategy == INITIAL else strategy, attemptStrategy=strategy,
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


def finish_attempt(ctx: Context, plan: AttemptPlan, facts: AttemptFacts, ws: GitWorkspace, *,
                   workspace_lost: bool = False) -> StepOutcome:
    """Record the attempt, ask the controller what next, checkpoint on success, emit events.

    ``workspace_lost``: the attempt's workspace is on a lost worker, so a soft reset continues on
    any worker from a workspace rebuilt from the checkpoints (same round: no queue-retry budget)."""
    r, change, step = facts.result, facts.change, plan.step
    job_id, idx, epoch = plan.job_id, step.index, plan.epoch
    record: dict[str, Any] = {
        "exitCode": r.exit_code, "signal": r.signal, "wallClockSeconds": round(r.wall_seconds, 3),
        "idleSeconds": round(r.idle_seconds, 3), "diffHash": change.diff_hash,
        "changedFiles": list(change.changed_files), "finishedAt": utc_now_iso(),
        "detectionLagSeconds": None if r.detection_lag is None else round(r.detection_lag, 4),
    }
    common = {"epoch": epoch, "stepId": step.id, "stepIndex": idx, "attempt": plan.attempt,
              "attemptStrategy": plan.strategy, "diffHash": change.diff_hash,
              "wallClockSeconds": record["wallClockSeconds"], "idleSeconds": record["idleSeconds"]}
    if r.cancelled:
        ctx.store.transition_attempt(job_id, idx, plan.attempt, "running", {**record, "status": "cancelled"})
        write_attempt_artifact(ctx, job_id, {**_attempt(ctx, plan), "status": "cancelled"}, plan.retry_context)
        return StepOutcome(OutcomeKind.STOP, idx, reason="preempted (cancel, new epoch or operator action)")
    ok = r.detector == Detector.EXIT and r.exit_code == 0
    cls: FailureClass | None = None
    signature: str | None = None
    summary = summarize_failure(r.tail)
    if not ok:
        cls = classify(FailureFacts(exit_code=r.exit_code, signal=r.signal, detector=r.detector,
                                    output_tail=r.tail), ctx.classifiers)
        signature = failure_signature(f"{r.detector.value} exit={r.exit_code} signal={r.signal}\n{summary}")
    current = AttemptOutcome(attempt=plan.attempt, ok=ok, failure_class=cls, signature=signature,
                             diff_hash=change.diff_hash, detector=r.detector, round=plan.round)
    job = ctx.store.get_job(job_id) or {}
    history = [*step_history(ctx, job_id, idx, epoch), current]
    decision = decide(history, plan.budgets, resets_used=job.get("resetsUsed", 0),
                      queue_retries_used=job.get("queueRetriesUsed", 0))
    if workspace_lost and decision.kind is DecisionKind.SOFT_RESET:
        decision = replace(decision, strategy=Strategy.QUEUE_RETRY,
                           reason=f"{decision.reason}; workspace lost with its worker, rebuilt from checkpoints")
    if ok:
        leak = secret_in_change(ctx, change.patch)
        if leak is not None:
            # A patch is replayed byte for byte, so it cannot be redacted: refuse to persist it.
            reason = (f"the step's change contains a secret in {leak}; refusing to checkpoint it "
                      "(secrets must come from the environment, never be written to the repository)")
            decision = Decision(DecisionKind.GIVE_UP, reason=reason, detector=Detector.EXIT,
                                failure_class=FailureClass.DETERMINISTIC_POLICY)
            return _failed(ctx, plan, decision, record, common, reason, failure_signature(reason),
                           FailureClass.DETERMINISTIC_POLICY)
        return _succeeded(ctx, plan, ws, record, common, history, summary, change)
    return _failed(ctx, plan, decision, record, common, summary, signature or "", cls)


def secret_in_change(ctx: Context, patch: bytes) -> str | None:
    """The first file whose diff contains something the redactor would remove, or None."""
    if ctx.redactor.redact_bytes(patch) == patch:
        return None
    for section in patch.split(b"\ndiff --git "):
        if ctx.redactor.redact_bytes(section) != section:
            header = section.split(b"\n", 1)[0].removeprefix(b"diff --git ")
            return header.decode("utf-8", "replace").split(" b/", 1)[0].removeprefix("a/")
    return "the patch"


def _attempt(ctx: Context, plan: AttemptPlan) -> dict[str, Any]:
    return ctx.store.get_attempt(plan.job_id, plan.step.index, plan.attempt) or {}


def _succeeded(ctx: Context, plan: AttemptPlan, ws: GitWorkspace, record: dict[str, Any],
               common: dict[str, Any], history: list[Any], summary: str, change: Change) -> StepOutcome:
    job_id, step, epoch = plan.job_id, plan.step, plan.epoch
    meta = write_checkpoint(ws, ctx.artifacts(job_id), step_id=step.id, step_index=step.index,
                            attempt=plan.attempt, summary=ctx.redactor.redact(summary), epoch=epoch,
                            change=change)
    ctx.store.record_checkpoint(job_id, step.index, epoch, meta)
    ctx.store.transition_attempt(job_id, step.index, plan.attempt, "running",
                                 {**record, "status": "succeeded", "decision": {"kind": "done"}})
    ctx.bus.emit("task.step.attempt.finished", job_id, **common, exitCode=0,
                 patchSha256=meta.get("patchSha256"), changedFiles=meta.get("changedFiles"))
    if any(not h.ok for h in history[:-1]):
        ctx.bus.emit("task.self_heal.recovered", job_id, **common,
                     strategy=None if plan.strategy == INITIAL else plan.strategy)
    update_step(ctx, job_id, step.index, epoch=epoch, status="succeeded")
    write_attempt_artifact(ctx, job_id, _attempt(ctx, plan), plan.retry_context)
    job = ctx.store.get_job(job_id) or {}
    if step.index + 1 >= len(job.get("steps", [])):
        if update_job(ctx, job_id, expect={"epoch": epoch, "status": "running"}, status="succeeded",
                      terminalReason="succeeded", finishedAt=utc_now_iso()):
            ctx.bus.emit("task.job.succeeded", job_id, epoch=epoch, stepIndex=step.index, stepId=step.id)
        return StepOutcome(OutcomeKind.DONE, step.index, reason="job succeeded")
    update_job(ctx, job_id, expect={"epoch": epoch}, currentStep=step.index + 1)
    return StepOutcome(OutcomeKind.NEXT, step.index, reason="step succeeded")


def _failed(ctx: Context, plan: AttemptPlan, decision: Decision, record: dict[str, Any],
            common: dict[str, Any], summary: str, signature: str, cls: FailureClass | None) -> StepOutcome:
    job_id, step, epoch = plan.job_id, plan.step, plan.epoch
    cls = decision.failure_class or cls or FailureClass.TRANSIENT_RUNTIME
    detector = decision.detector or Detector.EXIT
    next_strategy = decision.strategy.value if decision.strategy else None
    recorded = ctx.store.transition_attempt(job_id, step.index, plan.attempt, "running", {
        **record, "status": "failed", "failureClass": cls.value, "failureSignature": signature,
        "detector": detector.value, "strategy": next_strategy,
        "decision": {"kind": decision.kind.value, "reason": decision.reason, "countdown": decision.countdown},
    })
    if not recorded:  # already finished by another path (hard-limit handler, lost-worker recovery)
        return StepOutcome(OutcomeKind.STOP, step.index, reason="attempt already recorded")
    fields = {**common, "failureClass": cls.value, "failureSignature": signature, "detector": detector.value,
              "exitCode": record["exitCode"], "reason": decision.reason}
    ctx.bus.emit("task.step.attempt.failed", job_id, **fields, strategy=next_strategy)
    outcome: StepOutcome
    if decision.kind is DecisionKind.GIVE_UP:
        if decision.retryable:
            ctx.bus.emit("task.self_heal.exhausted", job_id, **fields)
        outcome = fail_job(ctx, job_id, epoch, step, cls, decision.reason, retryable=decision.retryable,
                           attempt=plan.attempt)
    else:
        outcome = _schedule_retry(ctx, plan, decision, cls, detector, summary, signature, record, fields)
        job = ctx.store.get_job(job_id) or {}
        if job.get("takeover"):
            # an operator has taken over: no automatic recovery, wait for their action
            outcome = park(ctx, job, step.index, outcome.strategy or Strategy.SOFT_RESET.value,
                           outcome.retry_context, reason="takeover: waiting for an operator action") or outcome
    write_attempt_artifact(ctx, job_id, _attempt(ctx, plan), plan.retry_context)
    return outcome


def _schedule_retry(ctx: Context, plan: AttemptPlan, decision: Decision, cls: FailureClass,
                    detector: Detector, summary: str, signature: str, record: Mapping[str, Any],
                    fields: Mapping[str, Any]) -> StepOutcome:
    job_id, step = plan.job_id, plan.step
    assert decision.strategy is not None
    strategy = decision.strategy
    if decision.kind in (DecisionKind.HARD_RESET, DecisionKind.QUEUE_RETRY):
        counter = "resetsUsed" if decision.kind is DecisionKind.HARD_RESET else "queueRetriesUsed"
        job = ctx.store.get_job(job_id) or {}
        update_job(ctx, job_id, **{counter: job.get(counter, 0) + 1})
        update_step(ctx, job_id, step.index, round=plan.round + 1, status="retrying")
        ctx.bus.emit("task.self_heal.escalated", job_id, **{**fields, "strategy": strategy.value})
    else:
        update_step(ctx, job_id, step.index, status="retrying")
    envelope = build_envelope(
        objective=spec_of(ctx.store.get_job(job_id) or {}).objective, step=step, attempt=plan.attempt + 1,
        strategy=strategy, failure_class=cls, detector=detector, failure_summary=summary,
        failure_signature=signature, changed_files=record.get("changedFiles", []),
        diff_hash=record.get("diffHash", ""), redact=ctx.redactor.redact)
    ctx.bus.emit("task.self_heal.triggered", job_id, **{**fields, "strategy": strategy.value,
                                                        "countdown": decision.countdown})
    # extra: what the task puts in Flower's retry reason (wiring.tasks.retry_message)
    return StepOutcome(OutcomeKind.RETRY, step.index, reason=decision.reason, countdown=decision.countdown,
                       strategy=strategy.value, retry_context=envelope, budgets=plan.budgets,
                       extra={"stepId": step.id, "attempt": plan.attempt, "detector": detector.value,
                              "failureClass": cls.value, "maxAttempts": plan.budgets.step_max_attempts,
                              "attemptInRound": decision.extra.get("attempt_in_round", plan.attempt)})
