"""After the runtime ended: record the attempt, ask the controller, checkpoint or schedule the retry.

Shared by the step task and by the paths that finish an attempt whose executor died (Celery's hard
limit, a lost worker), so every attempt is recorded and decided the same way. What the attempt
was is built once as a `FinishedAttempt`; this module only writes it out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.core.classify import classification_reason
from celery_selfheal.core.envelope import build_envelope
from celery_selfheal.core.job_state import AttemptStatus, JobState, JobStatus, StepStatus
from celery_selfheal.core.jobfile import StepSpec
from celery_selfheal.core.model import AttemptOutcome, DecisionKind, FailureClass, Strategy
from celery_selfheal.core.signature import failure_signature
from celery_selfheal.core.strategy import decide
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs import transitions
from celery_selfheal.jobs.records import read_job, step_history, update_step
from celery_selfheal.steps.attempt import AttemptFacts, AttemptPlan
from celery_selfheal.steps.attempt_artifact import write_attempt_artifact
from celery_selfheal.steps.evidence import write_attempt_patch
from celery_selfheal.steps.finished import FinishedAttempt, failure_facts, judge, refused_secret
from celery_selfheal.steps.outcome import OutcomeKind, StepOutcome
from celery_selfheal.store.base import AttemptWrite
from celery_selfheal.workspace.checkpoints import reuse_checkpoint, write_checkpoint
from celery_selfheal.workspace.git import GitWorkspace

log = logging.getLogger(__name__)


def finish_attempt(ctx: Context, plan: AttemptPlan, facts: AttemptFacts, ws: GitWorkspace, *,
                   workspace_lost: bool = False, started: dict[str, Any] | None = None) -> StepOutcome:
    """Record the attempt, ask the controller what next, checkpoint on success, emit events.

    ``workspace_lost``: the attempt's workspace is on a lost worker, so a soft reset continues on
    any worker from a workspace rebuilt from the checkpoints (same round: no queue-retry budget).
    ``started``: the attempt's record as this execution stored it (None: read it)."""
    r, idx = facts.result, plan.step.index
    # file names are chosen by the runtime: what is stored or shown passes the redactor (the patch
    # itself is checked below and never persisted when it holds a secret)
    names = tuple(ctx.redactor.redact(name) for name in facts.change.changed_files)
    if names != facts.change.changed_files:
        facts = replace(facts, change=replace(facts.change, changed_files=names))
    if r.cancelled:
        return _cancelled(ctx, plan, facts)
    ok, cls, signature, summary = judge(plan, r, facts.change, ctx.classifiers)
    this = AttemptOutcome(attempt=plan.attempt, ok=ok, failure_class=cls, signature=signature,
                          diff_hash=facts.change.diff_hash, detector=r.detector, round=plan.round)
    prior = plan.prior if plan.prior is not None else step_history(ctx, plan.job_id, idx, plan.epoch)
    history = [*prior, this]
    decision = decide(history, plan.budgets, resets_used=plan.resets_used,
                      queue_retries_used=plan.queue_retries_used)
    if cls is not None and not cls.retryable:  # not retried: say what decided it
        decision = replace(decision, reason=f"{decision.reason}: {classification_reason(failure_facts(r), cls)}")
    if workspace_lost and decision.kind is DecisionKind.SOFT_RESET:
        decision = replace(decision, strategy=Strategy.QUEUE_RETRY,
                           reason=f"{decision.reason}; workspace lost with its worker, rebuilt from checkpoints")
    current = FinishedAttempt(plan=plan, result=r, change=facts.change, finished_at=utc_now_iso(),
                              summary=summary, decision=decision, ok=ok, failure_class=cls, signature=signature)
    if ok:
        leak = secret_in_change(ctx, facts.change.patch)
        if leak is None:
            return _succeeded(ctx, current, ws, recovered=any(not h.ok for h in history[:-1]), started=started)
        # A patch is replayed byte for byte, so it cannot be redacted: refuse to persist it. The file
        # name may itself be the secret: it is named redacted.
        reason = (f"the step's change contains a secret in {ctx.redactor.redact(leak)}; refusing to checkpoint it "
                  "(secrets must come from the environment, never be written to the repository)")
        current = replace(current, ok=False, failure_class=FailureClass.DETERMINISTIC_POLICY,
                          signature=failure_signature(reason), summary=reason, decision=refused_secret(reason))
    return _failed(ctx, current, ws)


def secret_in_change(ctx: Context, patch: bytes) -> str | None:
    """The first file whose diff contains something the redactor would remove, or None."""
    if ctx.redactor.redact_bytes(patch) == patch:
        return None
    for section in patch.split(b"\ndiff --git "):
        if ctx.redactor.redact_bytes(section) != section:
            header = section.split(b"\n", 1)[0].removeprefix(b"diff --git ")
            return header.decode("utf-8", "replace").split(" b/", 1)[0].removeprefix("a/")
    return "the patch"


def fail_step(ctx: Context, job_id: str, epoch: int, step: StepSpec, cls: FailureClass, reason: str, *,
              retryable: bool, attempt: int | None = None) -> StepOutcome:
    """End the job as failed at ``step`` (idempotent) and stop the chain."""
    transitions.fail(ctx, job_id, epoch, step_id=step.id, step_index=step.index, failure_class=cls.value,
                     reason=reason, retryable=retryable, attempt=attempt)
    return StepOutcome.stop(step.index, reason)


def _cancelled(ctx: Context, plan: AttemptPlan, facts: AttemptFacts) -> StepOutcome:
    r, change, idx = facts.result, facts.change, plan.step.index
    ctx.store.transition_attempt(plan.job_id, idx, plan.attempt, "running", {
        "status": AttemptStatus.CANCELLED.value, "exitCode": r.exit_code, "signal": r.signal,
        "wallClockSeconds": round(r.wall_seconds, 3), "idleSeconds": round(r.idle_seconds, 3),
        "diffHash": change.diff_hash, "changedFiles": list(change.changed_files), "finishedAt": utc_now_iso(),
        "detectionLagSeconds": None if r.detection_lag is None else round(r.detection_lag, 4)})
    _artifact(ctx, plan)
    return StepOutcome(OutcomeKind.STOP, idx, reason="preempted (cancel, new epoch or operator action)",
                       preempted=True)


def _artifact(ctx: Context, plan: AttemptPlan, record: dict[str, Any] | None = None,
              new_events: Sequence[dict[str, Any]] = (), stored: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Write the attempt artifact from the stored record (or ``record``, what it is about to be) and
    the attempt's events (the stored ones, or ``stored`` when the caller knows them, plus
    ``new_events`` about to be stored with it)."""
    if record is None:
        record = ctx.store.get_attempt(plan.job_id, plan.step.index, plan.attempt) or {}
    try:
        write_attempt_artifact(ctx, plan.job_id, record, plan.retry_context, after=plan.events_after,
                               new_events=new_events, stored=stored)
    except (OSError, ValueError) as exc:
        # evidence only, written after the decision was recorded: losing it must not lose the decision
        log.warning("celery-selfheal: job %s: attempt artifact not written: %s", plan.job_id, exc)


def _succeeded(ctx: Context, done: FinishedAttempt, ws: GitWorkspace, *, recovered: bool,
               started: dict[str, Any] | None = None) -> StepOutcome:
    plan = done.plan
    job_id, step, epoch = plan.job_id, plan.step, plan.epoch
    arts = ctx.artifacts(job_id)
    # only a step whose metadata file is already there can have been recorded (a stat, not a store
    # round trip, on the usual path)
    recorded = [c for c in ctx.store.list_checkpoints(job_id) if c.get("stepIndex") == step.index
                and c.get("epoch", 0) == epoch] if arts.step_state_path(step.index).exists() else []
    checkpoint: tuple[int, int, dict[str, Any]] | None = None
    if recorded:  # an earlier run of this step recorded it, then crashed: keep files and record together
        meta = reuse_checkpoint(ws, arts, recorded[0], done.change)
    else:
        meta = write_checkpoint(ws, arts, step_id=step.id, step_index=step.index,
                                attempt=plan.attempt, summary=ctx.redactor.redact(done.summary), epoch=epoch,
                                change=done.change)
        # the store's copy says where the artifacts went (`selfheal artifacts` names it if they are
        # not found); recorded in the same store write as the attempt's success
        checkpoint = (step.index, epoch, {**meta, "artifactDir": str(arts.base)})
    fields = done.record_fields(AttemptStatus.SUCCEEDED.value)
    events = [ctx.bus.build("task.step.attempt.finished", job_id, **done.event_fields(), exitCode=0,
                            patchSha256=meta.get("patchSha256"), changedFiles=meta.get("changedFiles"))]
    if recovered:
        events.append(ctx.bus.build("task.self_heal.recovered", job_id, **done.event_fields(),
                                    strategy=plan.recovery_strategy))
    outcome = _record_success(ctx, plan, fields, events, started, checkpoint)
    if outcome is not None:
        return outcome
    # the job moved on meanwhile (or the attempt was recorded by another path): one write at a time
    if checkpoint is not None:
        ctx.store.record_checkpoint(job_id, *checkpoint)
    ctx.store.transition_attempt(job_id, step.index, plan.attempt, "running", fields)
    for event in events:
        ctx.bus.publish(event, ctx.store.append_event(job_id, event))
    return complete_step(ctx, plan)


def _record_success(ctx: Context, plan: AttemptPlan, fields: dict[str, Any], events: list[dict[str, Any]],
                    started: dict[str, Any] | None,
                    checkpoint: tuple[int, int, dict[str, Any]] | None = None) -> StepOutcome | None:
    """The usual end of a succeeded attempt in one store write: the step's checkpoint record, the
    attempt's record, its events, the step (and the job, after the last step) succeeded. None if any
    part's guard failed (nothing written): the caller then writes the parts one by one, as
    `complete_step` does."""
    job_id, step, epoch = plan.job_id, plan.step, plan.epoch
    last = step.index + 1 >= plan.step_count
    changes: dict[str, Any] = {"updatedAt": utc_now_iso()}
    if last:
        changes.update(transitions.outcome_fields(JobStatus.SUCCEEDED, reason="succeeded"))
        events = [*events, transitions.succeeded_event(ctx, job_id, epoch, step.id, step.index)]
    else:
        changes["currentStep"] = step.index + 1
    # the artifact first (from what is about to be stored), as before: it exists once the job has ended
    record = started if started is not None else ctx.store.get_attempt(job_id, step.index, plan.attempt)
    if record is None or record.get("status") != AttemptStatus.RUNNING.value:
        return None
    # the attempt's events so far: its `started` event, unless others were stored after it (seen below)
    known = [plan.started_event] if plan.started_event is not None else None
    _artifact(ctx, plan, {**record, **fields}, new_events=events, stored=known)
    seqs = ctx.store.write_job(job_id, changes, expect=transitions.succeed_expect(epoch) if last else {"epoch": epoch},
                               step=(step.index, {"status": StepStatus.SUCCEEDED.value}),
                               attempt=AttemptWrite(step.index, plan.attempt, fields, AttemptStatus.RUNNING.value),
                               events=events, checkpoint=checkpoint)
    if seqs is None:
        return None
    if known is not None and seqs and seqs[0] != plan.events_after + 2:  # other events came in between
        _artifact(ctx, plan, {**record, **fields})
    for event, seq in zip(events, seqs, strict=True):
        ctx.bus.publish(event, seq)
    if last:
        return StepOutcome(OutcomeKind.DONE, step.index, reason="job succeeded")
    return StepOutcome(OutcomeKind.NEXT, step.index, reason="step succeeded")


def complete_step(ctx: Context, plan: AttemptPlan) -> StepOutcome:
    """Mark the step of a succeeded attempt succeeded; the job too if it was the last (idempotent)."""
    job_id, step, epoch = plan.job_id, plan.step, plan.epoch
    last = step.index + 1 >= plan.step_count
    update_step(ctx, job_id, step.index, epoch=epoch, status=StepStatus.SUCCEEDED.value,
                job_changes=None if last else {"currentStep": step.index + 1})
    _artifact(ctx, plan)
    if last:
        transitions.succeed(ctx, job_id, epoch, step_id=step.id, step_index=step.index)
        return StepOutcome(OutcomeKind.DONE, step.index, reason="job succeeded")
    return StepOutcome(OutcomeKind.NEXT, step.index, reason="step succeeded")


def record_failure(ctx: Context, done: FinishedAttempt) -> StepOutcome:
    """Record a failed attempt (once), then give up or schedule what the controller decided."""
    return _failed(ctx, done, None)


def _failed(ctx: Context, done: FinishedAttempt, ws: GitWorkspace | None) -> StepOutcome:
    plan, decision = done.plan, done.decision
    job_id, step = plan.job_id, plan.step
    evidence = {} if ws is None else write_attempt_patch(
        ctx.artifacts(job_id), ws, done.change, step_index=step.index, attempt=plan.attempt,
        start_tree=plan.start_tree, secret_in=lambda patch: secret_in_change(ctx, patch), redact=ctx.redactor.redact)
    if not ctx.store.transition_attempt(job_id, step.index, plan.attempt, "running",
                                        {**done.record_fields(AttemptStatus.FAILED.value), **evidence}):
        # already finished by another path (hard-limit handler, lost-worker recovery)
        return StepOutcome.stop(step.index, "attempt already recorded")
    ctx.bus.emit("task.step.attempt.failed", job_id, **done.failure_fields(), strategy=done.next_strategy)
    outcome: StepOutcome
    if decision.kind is DecisionKind.GIVE_UP:
        if decision.retryable:
            ctx.bus.emit("task.self_heal.exhausted", job_id, **done.failure_fields())
        outcome = fail_step(ctx, job_id, plan.epoch, step, done.outcome_class, decision.reason,
                            retryable=decision.retryable, attempt=plan.attempt)
    else:
        outcome = _schedule_retry(ctx, done)
        job = JobState.from_record(read_job(ctx, job_id))
        if job.takeover and transitions.park(ctx, job, step.index, outcome.strategy or Strategy.SOFT_RESET.value,
                                             outcome.retry_context, reason="takeover: waiting for an operator action"):
            # an operator has taken over: no automatic recovery, wait for their action
            outcome = StepOutcome.stop(step.index, "takeover: waiting for an operator action")
    _artifact(ctx, plan)
    return outcome


def _schedule_retry(ctx: Context, done: FinishedAttempt) -> StepOutcome:
    plan, decision = done.plan, done.decision
    job_id, step = plan.job_id, plan.step
    assert decision.strategy is not None
    strategy = decision.strategy
    if decision.kind in (DecisionKind.HARD_RESET, DecisionKind.QUEUE_RETRY):
        counter, used = (("resetsUsed", plan.resets_used) if decision.kind is DecisionKind.HARD_RESET
                         else ("queueRetriesUsed", plan.queue_retries_used))
        update_step(ctx, job_id, step.index, round=plan.round + 1, status=StepStatus.RETRYING.value,
                    job_changes={counter: used + 1})
        ctx.bus.emit("task.self_heal.escalated", job_id, **{**done.failure_fields(), "strategy": strategy.value})
    else:
        update_step(ctx, job_id, step.index, status=StepStatus.RETRYING.value)
    envelope = build_envelope(
        objective=plan.objective, step=step, attempt=plan.attempt + 1, strategy=strategy,
        failure_class=done.outcome_class, detector=done.detector, failure_summary=done.summary,
        failure_signature=done.signature or "", changed_files=list(done.change.changed_files),
        diff_hash=done.change.diff_hash, redact=ctx.redactor.redact)
    ctx.bus.emit("task.self_heal.triggered", job_id, **{**done.failure_fields(), "strategy": strategy.value,
                                                        "countdown": decision.countdown})
    return StepOutcome(OutcomeKind.RETRY, step.index, reason=decision.reason, countdown=decision.countdown,
                       strategy=strategy.value, retry_context=envelope, budgets=plan.budgets,
                       extra=done.retry_extra())

