"""Reading and merging store records: the job, its steps' entries, budgets, attempt history.

Status changes of a job go through `jobs.transitions`; these are the plain reads and merges
underneath (and for the fields that are not a status).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.core.budgets import Budgets, resolve_budgets
from celery_selfheal.core.job_state import DECIDED_ATTEMPTS
from celery_selfheal.core.jobfile import JobSpec
from celery_selfheal.core.model import AttemptOutcome, Detector, FailureClass
from celery_selfheal.errors import SelfHealError
from celery_selfheal.events.bus import utc_now_iso


class UnknownJob(SelfHealError):
    """The job id is not in the store."""


def read_job(ctx: Context, job_id: str) -> dict[str, Any]:
    """The job record or `UnknownJob`."""
    job = ctx.store.get_job(job_id)
    if job is None:
        raise UnknownJob(f"unknown job {job_id!r}")
    return job


def update_step(ctx: Context, job_id: str, step_index: int, *, epoch: int | None = None,
                job_changes: Mapping[str, Any] | None = None, **changes: Any) -> bool:
    """Merge ``changes`` into one entry of the job's ``steps`` list, and ``job_changes`` into the job,
    in one write of the store (no read first). With ``epoch``, only while the job is still at that
    epoch (an operator rerun wins). `UnknownJob` if there is no such job."""
    expect = {"epoch": epoch} if epoch is not None else None
    done = ctx.store.write_job(job_id, {**(job_changes or {}), "updatedAt": utc_now_iso()}, expect=expect,
                               step=(step_index, changes)) is not None
    if not done and expect is None:
        read_job(ctx, job_id)  # raises UnknownJob; else the job has no such step: False, as a refused CAS
    return done


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
            if a.get("status") in DECIDED_ATTEMPTS and a.get("epoch", 0) == epoch]


def spec_of(job: Mapping[str, Any]) -> JobSpec:
    """The job's (redacted) spec."""
    return JobSpec.from_dict(job["spec"])


def step_budgets(job: Mapping[str, Any], step_index: int, spec: JobSpec | None = None) -> Budgets:
    """Budgets of one step: the job's resolved budgets, then the step's own overrides (``spec``: the
    job's spec if the caller has it parsed already)."""
    step = (spec or spec_of(job)).steps[step_index]
    return resolve_budgets(("job", job["budgets"]), (f"step {step.id!r}", dict(step.overrides)))
