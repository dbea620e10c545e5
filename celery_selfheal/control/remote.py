"""Operator actions through Celery's own control plane, and the task that applies them.

- ``celery -A APP control selfheal_recover JOB_ID ACTION [STEP] [REASON] [ACTOR] [NONCE]``: runs
  `request_control` in the worker that receives it; replies in Celery's convention, so that
  ``celery control`` prints OK or ERROR and the reason: ``{"ok": MESSAGE, "requestId", …}`` when
  accepted, ``{"error": REASON, …}`` when rejected (a missing argument included, one line).
- ``celery -A APP inspect selfheal_active``: the attempts running on each worker (job, step,
  attempt, pid, secondsElapsed, secondsIdle).
- ``selfheal.apply_control``: the task `request_control` sends so that a job with no step task in
  flight (parked, failed, succeeded, waiting on a countdown) is handled too.

Custom commands live in Celery's process-global ``Panel`` registry, which the worker consults to run
them and the ``celery`` CLI consults to accept their names and parse their arguments. Both processes
import the app named by ``-A``; `SelfHeal(app)` calls `register_control_commands`, so the commands are
there in both. Importing this module registers nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.worker.control import Panel, control_command, inspect_command

from celery_selfheal.context import Context
from celery_selfheal.control.apply import apply_pending_controls
from celery_selfheal.control.requests import request_control
from celery_selfheal.errors import SelfHealError
from celery_selfheal.steps.running import RunningAttempts
from celery_selfheal.wiring.routing import default_queue, enqueue_from

log = logging.getLogger(__name__)

APPLY_CONTROL = "selfheal.apply_control"
RECOVER = "selfheal_recover"
ACTIVE = "selfheal_active"
#: ``celery control`` broadcasts to every worker: the first to take this lease handles the request
DEDUPE_TTL = 30.0
#: how long a worker that lost the race looks for the winner's outcome (it blocks its event loop)
DUPLICATE_WAIT = 0.3
_NO_STEP = ("", "-", "none", "None")


def send_apply(app: Celery, job_id: str) -> str:
    """Send ``selfheal.apply_control`` for ``job_id`` to the queue every worker consumes."""
    return str(app.send_task(APPLY_CONTROL, kwargs={"job_id": job_id}, queue=default_queue(app),
                             serializer="json").id)


def recover(selfheal: Any, job_id: str, action: str, *, step: str | None = None, reason: str | None = None,
            actor: str | None = None, via: str = "api") -> dict[str, Any]:
    """Python API: request an operator action on a job of ``selfheal``'s app (a `SelfHeal`).

    Returns the pending request (``requestId``); raises `ControlError` when rejected."""
    return request_control(selfheal.context(), job_id, action, step=step, reason=reason, actor=actor,
                           via=via, enqueue_apply=functools.partial(send_apply, selfheal.app))


def register_control_commands(app: Celery, get_context: Callable[[], Context]) -> None:
    """Register ``selfheal.apply_control`` on ``app`` and the remote-control commands (once per process;
    they find the context through the receiving worker's app)."""

    # shared=False: a shared task would be copied into every app created later in this process,
    # bound to this app and its context.
    @app.task(name=APPLY_CONTROL, shared=False, ignore_result=True, serializer="json", acks_late=True,
              reject_on_worker_lost=True, soft_time_limit=150, time_limit=180)
    def apply_control(job_id: str) -> int:
        enqueue = functools.partial(enqueue_from, app)
        return len(apply_pending_controls(get_context(), job_id, enqueue=enqueue))

    _fallback[:] = [get_context]
    if RECOVER not in Panel.data:
        control_command(name=RECOVER, args=[("job_id", str), ("action", str), ("step", str), ("reason", str),
                                           ("actor", str), ("nonce", str)],
                        signature="<job_id> <action> [step|-] [reason] [actor] [nonce]")(_recover)
        inspect_command(name=ACTIVE)(_active)


_fallback: list[Callable[[], Context]] = []


def _context(app: Celery) -> Context:
    selfheal = getattr(app, "selfheal", None)
    if selfheal is not None:
        return selfheal.context()
    return _fallback[0]()


USAGE = "usage: selfheal_recover <job_id> <action> [step|-] [reason] [actor] [nonce]"


def accepted(request_id: str, job_id: str, action: str, **more: Any) -> dict[str, Any]:
    """Celery's reply for an accepted request (``ok`` is the line ``celery control`` prints)."""
    return {"ok": f"{action} requested for job {job_id} (request {request_id})", "requestId": request_id,
            "jobId": job_id, "action": action, **more}


def _recover(state: Any, job_id: str | None = None, action: str | None = None, step: str | None = None,
             reason: str | None = None, actor: str | None = None, nonce: str | None = None) -> dict[str, Any]:
    """Request an operator action (pause, resume, takeover, cancel, retry_step, hard_reset_step,
    resume_from_step) on a celery-selfheal job."""
    app, me = state.consumer.app, state.consumer.hostname
    if not job_id or not action:
        return {"error": f"missing {'job_id' if not job_id else 'action'}; {USAGE}", "handledBy": me}
    ctx = _context(app)
    step = None if step in _NO_STEP else step
    ident = json.dumps([job_id, action, step, reason, actor, nonce])
    key = "selfheal:recover:" + hashlib.sha256(ident.encode()).hexdigest()[:32]
    if not ctx.store.acquire_lease(key, me, DEDUPE_TTL):
        return _duplicate(ctx, job_id, key)
    try:
        req = request_control(ctx, job_id, action, step=step, reason=reason, actor=actor or "celery-control",
                              via=f"celery control@{me}", enqueue_apply=functools.partial(send_apply, app),
                              extra={"broadcastId": key})
    except SelfHealError as exc:
        return {"error": str(exc), "jobId": job_id, "action": action, "handledBy": me}
    return accepted(req["requestId"], job_id, action, stepId=req.get("stepId"), handledBy=me)


def _duplicate(ctx: Context, job_id: str, key: str) -> dict[str, Any]:
    """The reply of a worker that got the same broadcast as the one handling it: the winner's outcome."""
    lease = ctx.store.get_lease(key) or {}
    owner = lease.get("owner")
    reply: dict[str, Any] = {"duplicate": True, "handledBy": owner}
    deadline = time.monotonic() + DUPLICATE_WAIT
    while ctx.store.get_job(job_id) is not None:
        for rec in reversed(ctx.store.list_audit(job_id)):
            if rec.get("broadcastId") == key and rec.get("outcome") in ("requested", "rejected"):
                if rec["outcome"] == "rejected":
                    return {**reply, "error": f"{rec.get('why')} (handled by {owner})"}
                return {**reply, **accepted(str(rec.get("requestId")), job_id, str(rec.get("action")),
                                            handledBy=owner)}
        if time.monotonic() > deadline:
            return {**reply, "ok": f"handled by {owner}"}
        time.sleep(0.02)
    return {**reply, "error": f"unknown job {job_id!r}"}


def _active(state: Any) -> list[dict[str, Any]]:
    """The celery-selfheal attempts running on this worker (job, step, attempt, pid, seconds
    elapsed, seconds idle)."""
    me = state.consumer.hostname
    ctx = _context(state.consumer.app)
    keys = ("jobId", "stepId", "stepIndex", "attempt", "epoch", "taskId", "secondsElapsed", "secondsIdle")
    return [{**{k: e.get(k) for k in keys}, "pid": e.get("pgid")}
            for e in RunningAttempts(ctx.settings.run_dir).all() if e.get("hostname") in (None, "", me)]
