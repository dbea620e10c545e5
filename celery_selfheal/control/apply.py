"""Operator recovery actions (REQ-08, REQ-09), the apply side (requests: `control.requests`).

`apply_pending_controls` runs in workers: in the ``selfheal.apply_control`` task and in the step
task (before an attempt, and after an attempt was preempted). Appliers of one job take turns
through a store lease, so requests apply once and in order even when both paths run at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.control.audit import ack, audit, reject
from celery_selfheal.control.requests import job_position
from celery_selfheal.core import control_rules as rules
from celery_selfheal.core.envelope import build_envelope, summarize_failure
from celery_selfheal.core.job_state import INITIAL, JobState, JobStatus, StepStatus
from celery_selfheal.core.model import Detector, FailureClass, Strategy
from celery_selfheal.errors import ControlError
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs import transitions
from celery_selfheal.jobs.records import next_attempt_number, spec_of, update_job

log = logging.getLogger(__name__)

#: ``enqueue(job, step_index, **first_kwargs) -> task id`` (see `wiring.routing.enqueue_from`)
Enqueue = Callable[..., str]

#: strategy of the attempt a rerun starts with
RERUN_STRATEGY = {
    "retry_step": Strategy.OPERATOR_REQUEST.value,   # same workspace, fresh attempt budget
    "hard_reset_step": Strategy.HARD_RESET.value,    # rebuilt from baseline + checkpoints
    "resume_from_step": Strategy.HARD_RESET.value,
}
LEASE_TTL = 120.0
LEASE_WAIT_SECONDS = 45.0
#: how long a rerun waits for the preempted attempt to end before it starts the new one
RUNNING_WAIT_SECONDS = 30.0
_POLL = 0.05
_CAS_TRIES = 50
_LOG_TAIL_BYTES = 16_384


def apply_pending_controls(ctx: Context, job_id: str, *, enqueue: Enqueue,
                           lease_wait: float = LEASE_WAIT_SECONDS) -> list[dict[str, Any]]:
    """Apply the job's pending requests, oldest first, each exactly once; returns the acknowledged ones.

    Safe to call from several processes at once: callers take turns on a per-job lease and claim
    each request with `resolve_control` before acting on it."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
    key = f"selfheal:control:{job_id}"
    done: list[dict[str, Any]] = []
    # Look again after releasing: a request added while we held the lease is ours to apply, since
    # its own applier may have given up on the lease meanwhile.
    while ctx.store.pending_control(job_id):
        if not _acquire(ctx, key, owner, lease_wait):
            log.warning("celery-selfheal: job %s: control lease busy for %.0fs; leaving requests pending",
                        job_id, lease_wait)
            break
        try:
            while pending := ctx.store.pending_control(job_id):
                for request in pending:
                    acked = _apply_one(ctx, job_id, request, enqueue, owner)
                    if acked is not None:
                        done.append(acked)
            _settle_preempt(ctx, job_id)
        finally:
            ctx.store.release_lease(key, owner)
    return done


def _acquire(ctx: Context, key: str, owner: str, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while not ctx.store.acquire_lease(key, owner, LEASE_TTL):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


def _apply_one(ctx: Context, job_id: str, request: dict[str, Any], enqueue: Enqueue,
               owner: str) -> dict[str, Any] | None:
    action, index, request_id = request["action"], request.get("stepIndex"), request["requestId"]
    job = ctx.store.get_job(job_id)
    try:
        if job is None:
            raise ControlError(f"job {job_id!r} no longer exists")
        # A rerun names a step the job had reached when it was asked for; the job may have moved on
        # since (the attempt finished before the preemption reached it): rerun from that step.
        rules.validate("resume_from_step" if action in rules.STEP_ACTIONS else action, step_index=index,
                       **job_position(job))
    except ControlError as exc:
        why = f"no longer applies: {exc}"
        if ctx.store.resolve_control(job_id, request_id, {"state": "rejected", "why": why,
                                                          "resolvedAt": utc_now_iso(), "resolvedBy": owner}):
            reject(ctx, job_id, request, why)
        return None
    if not ctx.store.resolve_control(job_id, request_id, {"state": "acknowledged", "ackAt": utc_now_iso(),
                                                          "resolvedBy": owner}):
        return None  # claimed by another applier (only after our lease expired)
    try:
        return _EFFECTS[action](ctx, job_id, request, enqueue)
    except Exception as exc:  # claimed but not applied: say so loudly, keep the other requests going
        log.exception("celery-selfheal: job %s: applying %s failed", job_id, action)
        audit(ctx, job_id, request, "error", why=f"{type(exc).__name__}: {exc}")
        return None


def _pause(ctx: Context, job_id: str, request: dict[str, Any], enqueue: Enqueue) -> dict[str, Any]:
    update_job(ctx, job_id, paused=True)  # the step execution parks at the next step boundary
    return ack(ctx, job_id, request, effect="pauses at the next attempt or step boundary")


def _takeover(ctx: Context, job_id: str, request: dict[str, Any], enqueue: Enqueue) -> dict[str, Any]:
    update_job(ctx, job_id, takeover=True)  # the step execution parks instead of retrying by itself
    return ack(ctx, job_id, request, effect="automatic recovery stopped")


def _resume(ctx: Context, job_id: str, request: dict[str, Any], enqueue: Enqueue) -> dict[str, Any]:
    for _ in range(_CAS_TRIES):
        job = _job(ctx, job_id)
        parked = job.parked
        if job.status == JobStatus.PAUSED.value and parked:
            if transitions.resume_parked(ctx, job):
                acked = ack(ctx, job_id, request, effect="parked step re-enqueued", resumedStep=parked["stepIndex"])
                enqueue(job.to_record(), parked["stepIndex"], strategy=parked.get("strategy") or INITIAL,
                        retry_context=parked.get("retryContext"), operator=True)
                return acked
        elif transitions.clear_flags(ctx, job):
            return ack(ctx, job_id, request, effect="flags cleared; the job was not parked")
    raise RuntimeError("the job kept changing while it was resumed")


def _cancel(ctx: Context, job_id: str, request: dict[str, Any], enqueue: Enqueue) -> dict[str, Any]:
    for _ in range(_CAS_TRIES):
        job = _job(ctx, job_id)
        if job.terminal:
            return ack(ctx, job_id, request, effect=f"job had already {job.status}")
        acked: list[dict[str, Any]] = []

        def ack_first(acked: list[dict[str, Any]] = acked) -> None:  # the ack comes before the terminal event
            acked.append(ack(ctx, job_id, request, effect="job cancelled"))

        if transitions.cancel(ctx, job, request, before_event=ack_first):
            return acked[0]
    raise RuntimeError("the job kept changing while it was cancelled")


def _rerun(ctx: Context, job_id: str, request: dict[str, Any], enqueue: Enqueue) -> dict[str, Any]:
    action, k = request["action"], int(request["stepIndex"])
    strategy = RERUN_STRATEGY[action]
    for _ in range(_CAS_TRIES):  # 1. fence: a new epoch stops old messages and the running attempt
        job = _job(ctx, job_id)
        old_epoch, paused = job.epoch, job.paused
        # a pause asked for (or in force) survives the rerun: its first attempt parks at once
        if transitions.revive(ctx, job, k, keep_pause=paused):
            break
    else:
        raise RuntimeError("the job kept changing while it was revived")
    # 2. the old runtime must be gone before a new one uses the workspace
    _wait_attempts_done(ctx, job_id, old_epoch)
    # 3. steps k.. start over; their checkpoints are kept as history, not replayed
    record = _job(ctx, job_id).to_record()
    steps = [s if s["stepIndex"] < k else {**s, "status": StepStatus.PENDING.value,
                                           "round": s.get("round", 0) + (1 if s["stepIndex"] == k else 0)}
             for s in record["steps"]]
    update_job(ctx, job_id, expect={"epoch": old_epoch + 1}, steps=steps, currentStep=k)
    ctx.store.supersede_checkpoints(job_id, k)
    replayed = [c.get("diffHash") for c in ctx.store.list_checkpoints(job_id) if c["stepIndex"] < k]
    retry_context = None if action == "resume_from_step" else _retry_context(ctx, record, k, strategy)
    effect = f"step {k} rerun ({strategy})" + ("; the pause stays: resume to continue" if paused else "")
    acked = ack(ctx, job_id, request, effect=effect, epoch=old_epoch + 1, strategy=strategy, pauseKept=paused)
    if action == "resume_from_step":
        ctx.bus.emit("task.resume.from_step", job_id, epoch=old_epoch + 1, stepId=request["stepId"],
                     stepIndex=k, strategy=strategy, replayedDiffHashes=replayed, actor=request.get("actor"),
                     requestId=request["requestId"])
    enqueue({**record, "steps": steps}, k, strategy=strategy, retry_context=retry_context, operator=True)
    return acked


_EFFECTS: dict[str, Callable[[Context, str, dict[str, Any], Enqueue], dict[str, Any]]] = {
    "pause": _pause, "resume": _resume, "takeover": _takeover, "cancel": _cancel,
    "retry_step": _rerun, "hard_reset_step": _rerun, "resume_from_step": _rerun,
}


def _job(ctx: Context, job_id: str) -> JobState:
    job = ctx.store.get_job(job_id)
    if job is None:
        raise ControlError(f"job {job_id!r} no longer exists")
    return JobState.from_record(job)


def _wait_attempts_done(ctx: Context, job_id: str, epoch: int, timeout: float = RUNNING_WAIT_SECONDS) -> bool:
    def running() -> bool:
        return any(a.get("status") == "running" and a.get("epoch", 0) == epoch
                   for a in ctx.store.list_attempts(job_id))

    deadline = time.monotonic() + timeout
    while running():
        if time.monotonic() > deadline:
            log.warning("celery-selfheal: job %s: an attempt of epoch %s still looks running after %.0fs; "
                        "rerunning anyway", job_id, epoch, timeout)
            return False
        time.sleep(_POLL * 2)
    return True


def _retry_context(ctx: Context, job: Mapping[str, Any], k: int, strategy: str) -> dict[str, Any] | None:
    """The retry envelope of the step's last failure (None if its last finished attempt succeeded)."""
    job_id = job["jobId"]
    finished = [a for a in ctx.store.list_attempts(job_id, k) if a.get("status") in ("failed", "succeeded")]
    if not finished or finished[-1].get("status") != "failed":
        return None
    last = finished[-1]
    spec = spec_of(job)
    return build_envelope(
        objective=spec.objective, step=spec.steps[k], attempt=next_attempt_number(ctx, job_id, k),
        strategy=Strategy(strategy),
        failure_class=FailureClass(last.get("failureClass") or FailureClass.TRANSIENT_RUNTIME.value),
        detector=Detector(last.get("detector") or "exit"),
        failure_summary=summarize_failure(_tail(ctx.artifacts(job_id).log_path(k, last["attempt"]))),
        failure_signature=last.get("failureSignature") or "", changed_files=last.get("changedFiles") or [],
        diff_hash=last.get("diffHash") or "", redact=ctx.redactor.redact)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - _LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _settle_preempt(ctx: Context, job_id: str) -> None:
    """Clear the preempt flag once no preempting request is waiting (a rejected one set it too)."""
    job = ctx.store.get_job(job_id) or {}
    waiting = any(r["action"] in rules.PREEMPTING for r in ctx.store.pending_control(job_id))
    if job.get("preempt") and not waiting:
        update_job(ctx, job_id, expect={"preempt": True}, preempt=False)
