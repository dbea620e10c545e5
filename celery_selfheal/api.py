"""The Python API behind the CLI: submit, status, events, artifacts.

The CLI only parses arguments, calls these and prints; Python users call them directly with the
`SelfHeal` instance installed on their app.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.control.remote import recover
from celery_selfheal.core.job_state import TERMINAL
from celery_selfheal.errors import InputError
from celery_selfheal.events.bus import TERMINAL_JOB_EVENTS
from celery_selfheal.jobs.submission import load_job_file, prepare_job
from celery_selfheal.wiring.install import SelfHeal
from celery_selfheal.wiring.routing import enqueue_from

#: events read per poll by `follow_events`
FOLLOW_PAGE = 1000

__all__ = ["export_artifacts", "follow_events", "job_status", "list_artifacts", "recover", "require_job", "submit"]


def submit(selfheal: SelfHeal, job_file: str | Path) -> dict[str, Any]:
    """Validate, store and enqueue a job file; returns the job record. `InputError` on bad input,
    in which case nothing was stored or sent."""
    ctx = selfheal.context()
    path = Path(job_file)
    spec = load_job_file(path)
    job = prepare_job(spec, source=str(job_file), settings=ctx.settings, redactor=ctx.redactor,
                      base_dir=path.resolve().parent)
    ctx.settings.ensure_dirs()
    try:
        ctx.store.create_job(job)
    except KeyError:
        raise InputError(f"job {job['jobId']!r} already exists", where=f"{job_file}: job.id") from None
    enqueue_from(selfheal.app, job, 0)
    return job


def require_job(ctx: Context, job_id: str) -> dict[str, Any]:
    """The job record, or `InputError` naming the unknown id."""
    job = ctx.store.get_job(job_id)
    if job is None:
        raise InputError(f"unknown job {job_id!r}", where="JOB_ID")
    return job


def job_status(ctx: Context, job_id: str) -> dict[str, Any]:
    """The ``status --json`` document: job, steps with their attempts, pending control, audit."""
    job = require_job(ctx, job_id)
    attempts = ctx.store.list_attempts(job_id)
    steps = []
    for step in job["steps"]:
        mine = [a for a in attempts if a["stepIndex"] == step["stepIndex"]]
        steps.append({**step, "attempts": mine})
    keys = ("baselineSha", "repo", "ref", "currentStep", "resetsUsed", "queueRetriesUsed", "terminalReason",
            "failureClass", "retryable", "message", "paused", "takeover", "createdAt", "updatedAt", "finishedAt")
    return {
        "jobId": job_id,
        "status": job["status"],
        "epoch": job["epoch"],
        **{k: job.get(k) for k in keys},
        "objective": job["spec"].get("objective"),
        "steps": steps,
        "checkpoints": ctx.store.list_checkpoints(job_id),
        "pendingControl": ctx.store.pending_control(job_id),
        "audit": ctx.store.list_audit(job_id),
    }


def follow_events(ctx: Context, job_id: str, *, after: int = 0, until_terminal: bool = True,
                  poll: float = 0.1, timeout: float | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield the job's events as they are persisted; stop after the job ends (if asked)."""
    require_job(ctx, job_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    seq = after
    ended = False
    while True:
        # paged: a follower's memory stays bounded however many events the job has
        batch = ctx.store.list_events(job_id, after=seq, limit=FOLLOW_PAGE)
        for seq, event in batch:
            yield seq, event
        ended = ended or any(e["event"] in TERMINAL_JOB_EVENTS for _, e in batch)
        if len(batch) == FOLLOW_PAGE:
            continue  # not at the tail yet
        if until_terminal and ended:
            job = ctx.store.get_job(job_id) or {}
            # a pending operator request (retry_step, resume_from_step...) may revive it: keep following
            if job.get("status") in TERMINAL and not ctx.store.pending_control(job_id):
                return
        if deadline is not None and time.monotonic() > deadline:
            return
        if not batch:
            time.sleep(poll)


def list_artifacts(ctx: Context, job_id: str) -> list[tuple[str, int]]:
    """(relative path, size) of every artifact of the job."""
    require_job(ctx, job_id)
    arts = ctx.artifacts(job_id)
    return [(str(p.relative_to(arts.base)), p.stat().st_size) for p in arts.iter_files()]


def export_artifacts(ctx: Context, job_id: str, dest: str | Path) -> Path:
    """Copy the job's artifact tree to ``dest/<job id>``; returns that folder."""
    require_job(ctx, job_id)
    arts = ctx.artifacts(job_id)
    target = Path(dest) / job_id
    if arts.base.exists():
        shutil.copytree(arts.base, target, dirs_exist_ok=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
    return target
