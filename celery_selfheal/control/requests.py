"""Operator recovery actions (REQ-08, REQ-09), the request side.

`request_control` runs wherever the operator is (CLI, Python API, HTTP, a worker's remote-control
handler): it validates against `core.control_rules`, audits, emits, queues the request on the job
and has a worker apply it (`control.apply`). A rejected request changes nothing but the audit trail.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Mapping
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.control.audit import audit, fields, reject
from celery_selfheal.core import control_rules as rules
from celery_selfheal.core.text_bounds import one_line
from celery_selfheal.errors import ControlError
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs.records import update_job

#: ``enqueue_apply(job_id)``: have a worker run `apply_pending_controls` for the job
EnqueueApply = Callable[[str], object]


def default_actor() -> str:
    """The OS user running this process (``unknown`` if it has no name)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no LOGNAME/USER and no passwd entry (containers)
        return "unknown"


def job_position(job: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `rules.validate` (except action and step) for a job record."""
    parked = job.get("parked") or None
    current = parked["stepIndex"] if parked else job.get("currentStep") or 0
    return {"status": job["status"], "paused": bool(job.get("paused")),
            "takeover": bool(job.get("takeover")), "current_step": int(current),
            "step_count": len(job["steps"]), "failed_step": job.get("failedStep"),
            "step_ids": [s["stepId"] for s in job["steps"]]}


def request_control(ctx: Context, job_id: str, action: str, *, step: str | None = None,
                    reason: str | None = None, actor: str | None = None, enqueue_apply: EnqueueApply,
                    via: str = "api", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate and queue one operator request; returns it (with ``requestId``, state ``pending``).

    Unknown job: `ControlError` (an `InputError`), nothing recorded. Rejected: audited, a
    ``task.control.recovery.rejected`` event, then `ControlError`; nothing else changes."""
    job = ctx.store.get_job(job_id)
    if job is None:
        raise ControlError(f"unknown job {job_id!r}")
    # an operator's text is stored and shown to other operators: one line, bounded, redacted
    def red(text: str) -> str:
        return ctx.redactor.redact(one_line(text))

    base: dict[str, Any] = {"action": action, "stepId": step or None, "stepIndex": None,
                            "actor": red(actor or default_actor())[:120], "reason": red(reason) if reason else None,
                            "requestedAt": utc_now_iso(), "via": via, **(extra or {})}
    pos = job_position(job)
    try:
        rules.check_action(action)
        index = rules.step_index_of(step, pos["step_ids"]) if step else None
        target = rules.validate(action, step_index=index, **pos)
    except ControlError as exc:
        reject(ctx, job_id, base, str(exc))
        raise
    record = {**base, "stepIndex": target, "stepId": None if target is None else pos["step_ids"][target]}
    if action in rules.PREEMPTING:
        # Set before the request is visible: an applier running in between can only clear it early
        # (its own state change still stops the attempt); set after, it could stay set for good.
        update_job(ctx, job_id, preempt=True)
    record["requestId"] = ctx.store.add_control(job_id, record)
    audit(ctx, job_id, record, "requested")
    ctx.bus.emit("task.control.recovery.requested", job_id, **fields(record))
    if action in rules.PREEMPTING:
        # after the flag and the request are stored (the attempt woken reads the job and sees
        # both) and after they were audited and announced: the woken attempt's applier acks at
        # once, and its ack must not come before the request in the audit trail and the events
        ctx.store.wake(job_id)
    enqueue_apply(job_id)
    return {**record, "state": "pending"}
