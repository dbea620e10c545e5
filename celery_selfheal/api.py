"""The Python API behind the CLI: submit, status, events, artifacts.

The CLI only parses arguments, calls these and prints; Python users call them directly with the
`SelfHeal` instance installed on their app.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery_selfheal.context import Context
from celery_selfheal.core.job_state import TERMINAL
from celery_selfheal.core.text_bounds import one_line
from celery_selfheal.errors import InputError, SelfHealError
from celery_selfheal.events.bus import TERMINAL_JOB_EVENTS, utc_now_iso

if TYPE_CHECKING:
    from celery_selfheal.control.remote import recover
    from celery_selfheal.wiring.install import SelfHeal

#: the fields of one ``selfheal jobs --json`` line and one ``/api/jobs`` row, in this order
JOB_ROW_KEYS = ("jobId", "status", "currentStep", "createdAt", "updatedAt", "finishedAt", "objective")
#: the largest page `list_jobs` returns
MAX_PAGE = 1000
__all__ = ["export_artifacts", "follow_events", "job_finished", "job_status", "list_artifacts", "list_jobs",
           "missing_artifacts", "recover", "require_job", "submit"]
#: events read per poll by `follow_events`
FOLLOW_PAGE = 1000


def submit(selfheal: SelfHeal, job_file: str | Path) -> dict[str, Any]:
    """Validate, store and enqueue a job file; returns the job record. `InputError` on bad input,
    in which case nothing was stored or sent. Check the broker first (`reachability.check_broker`,
    as the CLI does): a send that still fails marks the stored job failed (``not_sent``)."""
    # imported here, not with the module: the read-only calls (the CLI's jobs, status, events,
    # artifacts) then never import Celery, git or the job file parser
    from celery_selfheal.jobs import transitions
    from celery_selfheal.jobs.submission import load_job_file, prepare_job
    from celery_selfheal.wiring.routing import enqueue_from

    ctx = selfheal.context()
    path = Path(job_file)
    spec = load_job_file(path)
    job = prepare_job(spec, source=str(job_file), settings=ctx.settings, redactor=ctx.redactor,
                      base_dir=path.resolve().parent)
    ctx.settings.ensure_dirs()
    # stamped when stored, not when prepared (resolving a remote ref takes seconds): the embedded
    # recovery treats a quiet queued job without a message as lost (`embedded.recovery.GRACE`)
    job["updatedAt"] = utc_now_iso()
    try:
        ctx.store.create_job(job)
    except KeyError:
        raise InputError(f"job {job['jobId']!r} already exists", where=f"{job_file}: job.id") from None
    try:
        enqueue_from(selfheal.app, job, 0)
    except Exception as exc:  # a stored job nobody will ever run must not stay `queued`
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        with contextlib.suppress(Exception):
            transitions.not_sent(ctx, job["jobId"], why)
        raise SelfHealError(f"job {job['jobId']} not sent to the broker: {one_line(why, 300)} "
                            "(marked failed)") from None
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


def list_jobs(ctx: Context, status: str | None = None, limit: int = 50,
              cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest jobs first, optionally only those with ``status``: rows of `JOB_ROW_KEYS`, and the
    cursor of the next page (None after the last). `InputError` for a bad status, limit or cursor."""
    from celery_selfheal.core.control_rules import STATUSES

    if status is not None and status not in STATUSES:
        raise InputError(f"unknown status {status!r} (use one of: {', '.join(STATUSES)})", where="status")
    if not 1 <= limit <= MAX_PAGE:
        raise InputError(f"limit must be between 1 and {MAX_PAGE}, not {limit}", where="limit")
    before = None
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 18:
            raise InputError(f"invalid cursor {cursor[:40]!r} (use the value of 'next' from the previous page)",
                             where="cursor")
        before = int(cursor)
    records, nxt = ctx.store.page_jobs(status=status, limit=limit, before=before)
    return [job_row(job) for job in records], None if nxt is None else str(nxt)


def job_row(job: dict[str, Any]) -> dict[str, Any]:
    """One row of `list_jobs` from a job record."""
    row = {k: job.get(k) for k in JOB_ROW_KEYS}
    row["objective"] = (job.get("spec") or {}).get("objective")
    return row


def job_finished(ctx: Context, job_id: str, min_age: float = 0.0) -> bool:
    """True once the job has ended for good: a terminal status and no operator request pending that
    could revive it (retry_step, resume_from_step...), at least ``min_age`` seconds ago (by its
    ``finishedAt``). Followers stop there."""
    job = ctx.store.get_job(job_id) or {}
    if job.get("status") not in TERMINAL or ctx.store.pending_control(job_id):
        return False
    if min_age <= 0:
        return True
    try:
        finished = datetime.fromisoformat(str(job.get("finishedAt")).replace("Z", "+00:00"))
    except ValueError:
        return True  # no (readable) finishedAt: nothing better to wait for
    return (datetime.now(timezone.utc) - finished).total_seconds() >= min_age


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
        if until_terminal and ended and job_finished(ctx, job_id):
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


def missing_artifacts(ctx: Context, job_id: str) -> str | None:
    """Why a job with checkpoints has no artifacts here: where this process looked and where the
    store says they were written; None when the store has no checkpoints either."""
    checkpoints = ctx.store.list_checkpoints(job_id, include_superseded=True)
    if not checkpoints:
        return None
    looked = ctx.artifacts(job_id).base
    written = sorted({str(c["artifactDir"]) for c in checkpoints if c.get("artifactDir")} - {str(looked)})
    where = f"; the store says they were written under {', '.join(written)}" if written else ""
    return (f"no artifacts of job {job_id} under {looked} though the store has {len(checkpoints)} checkpoints"
            f"{where} (set the artifact root every worker and this command share: SELFHEAL_ARTIFACT_ROOT, "
            "[state] artifact_root or selfheal_artifact_root)")


def export_artifacts(ctx: Context, job_id: str, dest: str | Path) -> Path:
    """Copy the job's artifact tree to ``dest/<job id>``; returns that folder."""
    require_job(ctx, job_id)
    arts = ctx.artifacts(job_id)
    target = Path(dest) / job_id
    base = arts.base.resolve()
    if target.resolve() == base or base in target.resolve().parents:
        raise InputError(f"{dest} is inside the job's own artifact folder {arts.base}; export elsewhere",
                         where="--export")
    if arts.base.exists():
        shutil.copytree(arts.base, target, dirs_exist_ok=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
    return target


def __getattr__(name: str) -> Any:
    """``recover`` (operator requests) is the control module's, imported on first use: it brings
    Celery's remote-control machinery, which the read-only calls above never need."""
    if name == "recover":
        from celery_selfheal.control.remote import recover

        return recover
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
