"""Embedded default: re-send a step's first message that a dead local worker had already fetched.

kombu's filesystem transport deletes a message file when a worker fetches it; a message the worker
reserved (prefetched while its pool was busy) dies with it, and nothing holds a lease for it yet.
Retries are covered by the lease hand-over (`wiring.tasks.retry_step`) and running attempts by
their lease (`cluster.sweeper`); what is left is a step that has not started: a job ``queued``, or
the next step of a chain. The local worker's sweeper looks for such steps when it is the only
worker alive on the state dir: a job whose current step is pending, with no attempt of it, no
lease, no message for it on disk and none reserved by this worker, quiet for `GRACE` seconds, lost
its message; it is sent again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery_selfheal.cluster.leases import lease_key
from celery_selfheal.context import Context
from celery_selfheal.wiring.routing import RUN_STEP

log = logging.getLogger(__name__)

#: a job must be this quiet (seconds since its last update) before its message counts as lost:
#: covers a submit between storing the job and sending its message
GRACE = 3.0
StepKey = tuple[str, int, int]


def step_of(payload: Mapping[str, Any]) -> StepKey | None:
    """(job id, step index, epoch) of a ``selfheal.run_step`` message payload, else None."""
    headers = payload.get("headers") or {}
    if headers.get("task") != RUN_STEP:
        return None
    body: Any = payload.get("body")
    try:
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _, kwargs, _ = json.loads(body)
        return str(kwargs["job_id"]), int(kwargs["step_index"]), int(kwargs["epoch"])
    except (binascii.Error, ValueError, TypeError, KeyError):
        return None


def steps_on_disk(folder: Path) -> set[StepKey]:
    """The steps that have a message waiting in the embedded queue folder."""
    found: set[StepKey] = set()
    for path in folder.glob("*.msg"):
        try:
            key = step_of(json.loads(path.read_bytes()))
        except (OSError, ValueError):  # consumed meanwhile
            continue
        if key is not None:
            found.add(key)
    return found


def steps_reserved_here() -> set[StepKey]:
    """The steps of the messages this worker process holds (reserved or running)."""
    from celery.worker import state

    found: set[StepKey] = set()
    for req in [*state.reserved_requests, *state.active_requests]:
        kwargs = getattr(req, "kwargs", None) or {}
        if getattr(req, "name", "") == RUN_STEP and "job_id" in kwargs:
            found.add((str(kwargs["job_id"]), int(kwargs.get("step_index", 0)), int(kwargs.get("epoch", 0))))
    return found


def _quiet_for(job: Mapping[str, Any], now: datetime) -> float:
    try:
        stamp = datetime.fromisoformat(str(job.get("updatedAt") or job.get("createdAt")).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (now - stamp).total_seconds()


def lost_steps(ctx: Context, jobs: Iterable[Mapping[str, Any]], known: set[StepKey], *,
               now: datetime | None = None) -> list[tuple[Mapping[str, Any], int]]:
    """(job, step index) of every pending step whose message is gone (module docstring)."""
    now = now or datetime.now(timezone.utc)
    lost = []
    for job in jobs:
        if job.get("status") not in ("queued", "running") or job.get("paused") or job.get("parked") \
                or job.get("preempt") or job.get("takeover"):
            continue
        idx, epoch, steps = int(job.get("currentStep") or 0), int(job.get("epoch", 0)), job.get("steps") or []
        if idx >= len(steps) or steps[idx].get("status") != "pending" or (job["jobId"], idx, epoch) in known:
            continue
        if _quiet_for(job, now) < GRACE or ctx.store.get_lease(lease_key(job["jobId"])) is not None:
            continue
        if any(name == lease_key(job["jobId"]) for name, _ in ctx.store.expired_leases(lease_key(job["jobId"]))):
            continue  # the sweeper's business
        if any(a.get("epoch", 0) == epoch for a in ctx.store.list_attempts(job["jobId"], idx)):
            continue
        lost.append((job, idx))
    return lost


def resend_lost(ctx: Context, app: Any, hostname: str) -> list[str]:
    """Send again the lost first messages of pending steps, if this is the only live worker on the
    state dir (another one may hold them reserved). Returns the job ids."""
    from celery_selfheal.embedded.local_worker import other_workers_alive
    from celery_selfheal.jobs.records import update_job
    from celery_selfheal.wiring.routing import enqueue_from

    settings = ctx.settings
    if not settings.embedded or other_workers_alive(settings, hostname):
        return []
    folder = Path(settings.broker_transport_options()["data_folder_in"])
    known = steps_on_disk(folder) | steps_reserved_here()
    done = []
    for job, idx in lost_steps(ctx, ctx.store.list_jobs(limit=200), known):
        # compare-and-set on updatedAt: sent once, and the job is not quiet any more for GRACE
        if not update_job(ctx, job["jobId"], expect={"updatedAt": job.get("updatedAt")}):
            continue
        log.warning("celery-selfheal: job %s: the message of step %s was lost with a local worker; sent again",
                    job["jobId"], idx)
        enqueue_from(app, ctx.store.get_job(job["jobId"]) or job, idx)
        done.append(str(job["jobId"]))
    return done
