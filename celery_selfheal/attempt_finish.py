"""After the runtime ended: record the attempt, ask the controller, checkpoint or schedule the retry.

Shared by the step task and by the paths that finish an attempt whose executor died (Celery's hard
limit, a lost worker), so every attempt is recorded and decided the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from celery_selfheal.attempt import AttemptFacts, AttemptPlan
from celery_selfheal.context import Context
from celery_selfheal.core.classify import FailureFacts, classification_reason, classify
from celery_selfheal.core.envelope import attempt_summary, build_envelope, summarize_failure
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
from celery_selfheal.events import utc_now_iso
from celery_selfheal.job_transitions import fail_job, park
from celery_selfheal.jobs import spec_of
from celery_selfheal.outcome import INITIAL, OutcomeKind, StepOutcome
from celery_selfheal.recording import step_history, update_job, update_step, write_attempt_artifact
from celery_selfheal.workspace.checkpoints import write_checkpoint
from celery_selfheal.workspace.git import Change, GitWorkspace


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
              "attemptStrategy": None if plan.strategy == INITIAL else plan.strategy, "diffHash": change.diff_hash,
              "wallClockSeconds": record["wallClockSeconds"], "idleSeconds": record["idleSeconds"]}
    if r.cancelled:
        ctx.store.transition_attempt(job_id, idx, plan.attempt, "running", {**record, "status": "cancelled"})
        write_attempt_artifact(ctx, job_id, {**_attempt(ctx, plan), "status": "cancelled"}, plan.retry_context)
        return StepOutcome(OutcomeKind.STOP, idx, reason="preempted (cancel, new epoch or operator action)")
    ok = r.detector == Detector.EXIT and r.exit_code == 0
    cls: FailureClass | None = None
    signature: str | None = None
    summary = summarize_failure(r.tail) if ok else attempt_summary(
        r.detector, r.tail, note=r.note, idle_seconds=r.idle_seconds, wall_seconds=r.wall_seconds)
    facts_ = FailureFacts(exit_code=r.exit_code, signal=r.signal, detector=r.detector, output_tail=r.tail)
    if not ok:
        cls = classify(facts_, ctx.classifiers)
        signature = failure_signature(f"{r.detector.value} exit={r.exit_code} signal={r.signal}\n{summary}")
    current = AttemptOutcome(attempt=plan.attempt, ok=ok, failure_class=cls, signature=signature,
                             diff_hash=change.diff_hash, detector=r.detector, round=plan.round)
    job = ctx.store.get_job(job_id) or {}
    history = [*step_history(ctx, job_id, idx, epoch), current]
    decision = decide(history, plan.budgets, resets_used=job.get("resetsUsed", 0),
                      queue_retries_used=job.get("queueRetriesUsed", 0))
    if cls is not None and not cls.retryable:  # not retried: say what decided it
        decision = replace(decision, reason=f"{decision.reason}: {classification_reason(facts_, cls)}")
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
              "exitCode": record["exitCode"], "signal": record["signal"], "reason": decision.reason}
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
