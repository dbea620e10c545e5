"""Finishing an attempt whose executor died (hard time limit, worker lost) and re-enqueueing.

The attempt is recorded from our own registry/store, run through the same controller as any
failure, and the next execution is sent as a fresh chain from that step (the dead message's chain is
gone with it). Idempotent: the attempt's ``running`` status moves once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery

from celery_selfheal.context import Context
from celery_selfheal.core.job_state import INITIAL
from celery_selfheal.core.model import Detector
from celery_selfheal.jobs.records import spec_of, step_budgets
from celery_selfheal.runtime.supervisor import RuntimeResult
from celery_selfheal.steps.attempt import AttemptFacts, AttemptPlan
from celery_selfheal.steps.finish import complete_step, finish_attempt
from celery_selfheal.steps.outcome import OutcomeKind
from celery_selfheal.wiring.routing import enqueue_from
from celery_selfheal.workspace.git import Change, GitWorkspace

log = logging.getLogger(__name__)

#: what a lost worker's attempt changed is unknown here (its workspace is on that worker's host)
UNKNOWN_CHANGE = Change(diff_hash=hashlib.sha256(b"").hexdigest(), changed_files=(), patch=b"", tree="")


def complete_lost_success(ctx: Context, job: Mapping[str, Any], record: Mapping[str, Any]) -> OutcomeKind:
    """Mark the step of a succeeded attempt whose worker died succeeded (the job too if last)."""
    return complete_step(ctx, _plan(job, record)).kind


def _plan(job: Mapping[str, Any], record: Mapping[str, Any]) -> AttemptPlan:
    spec, idx = spec_of(job), int(record["stepIndex"])
    return AttemptPlan(job_id=job["jobId"], step=spec.steps[idx], argv=spec.step_runtime(idx),
                       attempt=int(record["attempt"]), round=record.get("round", 0), epoch=int(job.get("epoch", 0)),
                       strategy=record.get("attemptStrategy", INITIAL), budgets=step_budgets(job, idx),
                       step_count=len(spec.steps), resets_used=job.get("resetsUsed", 0),
                       queue_retries_used=job.get("queueRetriesUsed", 0), objective=spec.objective)


def finish_lost_attempt(ctx: Context, app: Celery, entry: Mapping[str, Any], *, detector: str,
                        reason: str) -> OutcomeKind | None:
    """Record a dead attempt as failed (``detector``) and schedule what the controller decides."""
    job_id, idx, attempt = entry["jobId"], entry["stepIndex"], entry["attempt"]
    job = ctx.store.get_job(job_id)
    record = ctx.store.get_attempt(job_id, idx, attempt)
    if job is None or record is None or record.get("status") != "running" or job.get("epoch") != entry["epoch"]:
        return None
    plan = _plan(job, record)
    lost_worker = detector == Detector.WORKER_LOST.value
    ws = GitWorkspace(ctx.workspace_path(job_id)) if lost_worker else GitWorkspace.open(ctx.workspace_path(job_id))
    result = RuntimeResult(exit_code=None, signal=None, detector=Detector(detector), cancelled=False,
                           pid=int(entry.get("pgid") or 0), wall_seconds=0.0, idle_seconds=0.0,
                           max_idle_seconds=0.0, detection_lag=None, output_bytes=0,
                           tail=f"attempt lost: {reason}")
    facts = AttemptFacts(result=result, change=UNKNOWN_CHANGE if lost_worker else ws.current_change(),
                         prompt_file=ws.path, log_path=ctx.artifacts(job_id).log_path(idx, attempt))
    outcome = finish_attempt(ctx, plan, facts, ws, workspace_lost=lost_worker)
    if outcome.kind is OutcomeKind.RETRY:
        enqueue_from(app, ctx.store.get_job(job_id) or job, idx, countdown=outcome.countdown,
                     strategy=outcome.strategy, retry_context=dict(outcome.retry_context or {}))
    log.warning("celery-selfheal: attempt %s of step %s of job %s lost (%s): %s", attempt, idx, job_id,
                reason, outcome.kind.value)
    return outcome.kind
