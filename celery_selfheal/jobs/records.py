"""Recording attempts and job state: store records, attempt artifacts, history for the controller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_selfheal.artifacts import atomic_write_json
from celery_selfheal.context import Context
from celery_selfheal.core.model import AttemptOutcome, Detector, FailureClass
from celery_selfheal.errors import SelfHealError
from celery_selfheal.events.bus import utc_now_iso

FINISHED = ("succeeded", "failed", "lost", "cancelled")


class UnknownJob(SelfHealError):
    """The job id is not in the store."""


def load_job(ctx: Context, job_id: str) -> dict[str, Any]:
    """The job record or `UnknownJob`."""
    job = ctx.store.get_job(job_id)
    if job is None:
        raise UnknownJob(f"unknown job {job_id!r}")
    return job


def update_step(ctx: Context, job_id: str, step_index: int, *, epoch: int | None = None, **changes: Any) -> bool:
    """Merge ``changes`` into one entry of the job's ``steps`` list (one step runs at a time).
    With ``epoch``, only while the job is still at that epoch (an operator rerun wins)."""
    job = load_job(ctx, job_id)
    steps = [dict(s) for s in job["steps"]]
    steps[step_index].update(changes)
    expect = {"epoch": epoch} if epoch is not None else None
    return ctx.store.update_job(job_id, {"steps": steps, "updatedAt": utc_now_iso()}, expect=expect)


def update_job(ctx: Context, job_id: str, expect: Mapping[str, Any] | None = None, **changes: Any) -> bool:
    """Merge ``changes`` into the job (compare-and-set on ``expect``), stamping ``updatedAt``."""
    return ctx.store.update_job(job_id, {**changes, "updatedAt": utc_now_iso()},
                                expect=dict(expect) if expect else None)


def next_attempt_number(ctx: Context, job_id: str, step_index: int) -> int:
    """One more than the highest attempt recorded for the step (attempts are never reused)."""
    attempts = ctx.store.list_attempts(job_id, step_index)
    return max((a["attempt"] for a in attempts), default=0) + 1


def outcome_of(record: Mapping[str, Any]) -> AttemptOutcome:
    """The controller's view of a stored attempt."""
    cls = record.get("failureClass")
    det = record.get("detector")
    return AttemptOutcome(
        attempt=record["attempt"],
        ok=record.get("status") == "succeeded",
        failure_class=FailureClass(cls) if cls else None,
        signature=record.get("failureSignature"),
        diff_hash=record.get("diffHash") or "",
        detector=Detector(det) if det else None,
        round=record.get("round", 0),
    )


def step_history(ctx: Context, job_id: str, step_index: int, epoch: int) -> list[AttemptOutcome]:
    """Finished attempts of a step in the current epoch, in order (what `decide` reads)."""
    return [outcome_of(a) for a in ctx.store.list_attempts(job_id, step_index)
            if a.get("status") in ("succeeded", "failed", "lost") and a.get("epoch", 0) == epoch]


def write_attempt_artifact(ctx: Context, job_id: str, record: Mapping[str, Any],
                           retry_context: Mapping[str, Any] | None) -> None:
    """``state/self_heal/attempt-NNNN-AAAA.json`` with the contract fields and the attempt's events."""
    arts = ctx.artifacts(job_id)
    idx, attempt = record["stepIndex"], record["attempt"]
    events = [e for _, e in ctx.store.list_events(job_id)
              if e.get("stepIndex") == idx and e.get("attempt") == attempt]
    doc = {
        "jobId": job_id,
        "stepId": record["stepId"],
        "stepIndex": idx,
        "attempt": attempt,
        "round": record.get("round", 0),
        "epoch": record.get("epoch", 0),
        "status": record.get("status"),
        "attemptStrategy": record.get("attemptStrategy"),
        "strategy": record.get("strategy"),
        "failureClass": record.get("failureClass"),
        "failureSignature": record.get("failureSignature"),
        "detector": record.get("detector"),
        "exitCode": record.get("exitCode"),
        "signal": record.get("signal"),
        "diffHash": record.get("diffHash"),
        "changedFiles": record.get("changedFiles", []),
        "wallClockSeconds": record.get("wallClockSeconds"),
        "idleSeconds": record.get("idleSeconds"),
        "detectionLagSeconds": record.get("detectionLagSeconds"),
        "decision": record.get("decision"),
        "startedAt": record.get("startedAt"),
        "finishedAt": record.get("finishedAt"),
        "retryContext": dict(retry_context) if retry_context else None,
        "events": events,
    }
    atomic_write_json(arts.attempt_state_path(idx, attempt), ctx.redactor.redact_obj(doc))
