"""Day-two clean-up: ``selfheal gc`` and the ``[retention]`` pruning workers do.

`collect` finds the jobs that finished (succeeded, failed, cancelled) more than a duration ago and
removes everything they left: the workspace and prompt files on this host, the artifact folder,
the store records (`StateStore.delete_job`) and, on the embedded broker, messages still queued for
them. Queued, running and paused jobs are never touched: a job is re-read just before it goes, and
skipped if an operator revived it meanwhile.

`prune_succeeded_workspaces` is the worker's part (``[retention] succeeded_workspace_max_age``):
only the workspaces of succeeded jobs, which checkpoints and artifacts make redundant.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from celery_selfheal.context import Context
from celery_selfheal.core.duration import parse_duration
from celery_selfheal.core.job_state import TERMINAL

log = logging.getLogger(__name__)
#: config key of the worker's pruning (a duration string such as ``"7d"``)
WORKSPACE_MAX_AGE = "succeeded_workspace_max_age"
#: the tasks whose messages name a job in their kwargs
JOB_TASKS = ("selfheal.run_step", "selfheal.apply_control")


@dataclass(frozen=True)
class Removal:
    """What gc removes (or would) for one job."""

    job_id: str
    status: str
    finished_at: str
    #: workspace, artifact and prompt folders that exist on this host
    paths: tuple[Path, ...]
    #: embedded broker message files still queued for the job
    messages: tuple[Path, ...]


def cutoff(seconds: int, now: datetime | None = None) -> str:
    """The ``finishedAt`` bound: ``now - seconds`` as the store writes times."""
    at = (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_paths(ctx: Context, job_id: str) -> tuple[Path, ...]:
    """The job's folders on this host that exist."""
    paths = (ctx.workspace_path(job_id), ctx.artifacts(job_id).base, ctx.settings.run_dir / "prompts" / job_id)
    return tuple(p for p in paths if p.exists())


def queued_messages(ctx: Context) -> dict[str, list[Path]]:
    """Embedded broker message files of our tasks, by the job they name (nothing off the embedded)."""
    out: dict[str, list[Path]] = {}
    folder = ctx.settings.broker_dir / "queue"
    if not ctx.settings.embedded or not folder.is_dir():
        return out
    for path in folder.glob("*.msg"):
        job_id = _message_job(path)
        if job_id:
            out.setdefault(job_id, []).append(path)
    return out


def _message_job(path: Path) -> str | None:
    try:
        msg = json.loads(path.read_bytes())
        if msg.get("headers", {}).get("task") not in JOB_TASKS:
            return None
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        kwargs = json.loads(body)[1]
        return str(kwargs["job_id"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None  # not ours, or consumed while we looked


def plan(ctx: Context, older_than: int, *, now: datetime | None = None) -> list[Removal]:
    """What ``gc --older-than`` would remove, oldest first."""
    messages = queued_messages(ctx)
    return [Removal(job["jobId"], job["status"], str(job.get("finishedAt")), job_paths(ctx, job["jobId"]),
                    tuple(messages.get(job["jobId"], ())))
            for job in ctx.store.finished_jobs(cutoff(older_than, now), limit=100_000)]


def remove(ctx: Context, removal: Removal) -> bool:
    """Remove one job's leftovers; False (nothing done) if it is no longer finished."""
    job = ctx.store.get_job(removal.job_id)
    if job is None or job.get("status") not in TERMINAL:
        return False
    for path in removal.messages:
        path.unlink(missing_ok=True)
    for path in removal.paths:
        shutil.rmtree(path, ignore_errors=True)
    ctx.store.delete_job(removal.job_id)
    return True


def collect(ctx: Context, older_than: int, *, dry_run: bool = False,
            now: datetime | None = None) -> list[Removal]:
    """Remove (unless ``dry_run``) every job finished more than ``older_than`` seconds ago; returns
    what was removed (or would be)."""
    found = plan(ctx, older_than, now=now)
    return found if dry_run else [r for r in found if remove(ctx, r)]


def prune_succeeded_workspaces(ctx: Context, max_age: int, *, now: datetime | None = None) -> list[Path]:
    """Remove this host's workspaces of jobs that succeeded more than ``max_age`` seconds ago."""
    gone = []
    for job in ctx.store.finished_jobs(cutoff(max_age, now), limit=100_000):
        path = ctx.workspace_path(job["jobId"])
        if job.get("status") == "succeeded" and path.exists():
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


def workspace_max_age(retention: dict[str, object] | None) -> int | None:
    """``[retention] succeeded_workspace_max_age`` in seconds (None: keep workspaces)."""
    raw = (retention or {}).get(WORKSPACE_MAX_AGE)
    if raw is None:
        return None
    return parse_duration(str(raw), where=f"[retention] {WORKSPACE_MAX_AGE}")
