"""The JSON API (DESIGN section 6): thin handlers over `celery_selfheal.api`. Errors are
``{"error": "..."}``; sync handlers run in Starlette's thread pool (store calls block)."""

from __future__ import annotations

import json
import mimetypes
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from celery_selfheal import api
from celery_selfheal.core.control_rules import ACTIONS
from celery_selfheal.errors import ControlError, InputError
from celery_selfheal.web.files import DEFAULT_TAIL, NotFound, artifact_file, log_tail
from celery_selfheal.web.view import job_view

#: body fields of POST .../control
CONTROL_FIELDS = frozenset({"action", "stepId", "reason"})
MAX_REASON = 2000
#: served as these types; everything else as an opaque download, never as HTML
TEXT_TYPES = {".json": "application/json", ".log": "text/plain; charset=utf-8",
              ".patch": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


def error(status: int, message: str) -> JSONResponse:
    """The API's error body."""
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str, default: int, *, low: int = 0) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < low:
        raise InputError(f"{name} must be a whole number >= {low}, not {raw[:40]!r}", where=name)
    return int(raw)


def _job_or_404(request: Request) -> tuple[Any, str]:
    ctx = request.app.state.selfheal.context()
    job_id = request.path_params["job_id"]
    try:
        api.require_job(ctx, job_id)
    except (InputError, ValueError):
        raise NotFound(f"unknown job {job_id!r}") from None
    return ctx, job_id


def jobs(request: Request) -> Response:
    """``GET /api/jobs?status=S&limit=N&cursor=C``."""
    ctx = request.app.state.selfheal.context()
    query = request.query_params
    rows, nxt = api.list_jobs(ctx, status=query.get("status") or None, limit=_int(request, "limit", 50, low=1),
                              cursor=query.get("cursor") or None)
    return JSONResponse({"jobs": rows, "next": nxt})


def job(request: Request) -> Response:
    """``GET /api/jobs/{jobId}``: the ``status --json`` document."""
    ctx, job_id = _job_or_404(request)
    return JSONResponse(api.job_status(ctx, job_id))


def view(request: Request) -> Response:
    """``GET /api/jobs/{jobId}/view``: the console's job page data (status, allowed actions, summaries)."""
    ctx, job_id = _job_or_404(request)
    return JSONResponse(job_view(ctx, job_id))


def events(request: Request) -> Response:
    """``GET /api/jobs/{jobId}/events?after=SEQ``."""
    ctx, job_id = _job_or_404(request)
    after = _int(request, "after", 0)
    batch = ctx.store.list_events(job_id, after=after, limit=_int(request, "limit", 10_000, low=1))
    return JSONResponse({"events": [{"seq": seq, **event} for seq, event in batch],
                         "last": batch[-1][0] if batch else after})


async def stream(request: Request) -> Response:
    """``GET /api/jobs/{jobId}/events/stream?after=SEQ`` (``Last-Event-ID`` wins over ``after``)."""
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(_job_or_404, request)
    last_id = request.headers.get("last-event-id", "").strip()
    if last_id:
        if not last_id.isdigit():
            raise InputError(f"Last-Event-ID must be an event sequence number, not {last_id[:40]!r}",
                             where="Last-Event-ID")
        after = int(last_id)
    else:
        after = _int(request, "after", 0)
    body = request.app.state.feeds.stream(request.path_params["job_id"], after)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def attempt_log(request: Request) -> Response:
    """``GET /api/jobs/{jobId}/steps/{stepIndex}/attempts/{attempt}/log?tail=BYTES``."""
    ctx, job_id = _job_or_404(request)
    p = request.path_params
    text = log_tail(ctx, job_id, int(p["step_index"]), int(p["attempt"]), _int(request, "tail", DEFAULT_TAIL))
    return PlainTextResponse(text)


def artifacts(request: Request) -> Response:
    """``GET /api/jobs/{jobId}/artifacts``: ``{"artifacts": [{"path", "size"}]}``."""
    ctx, job_id = _job_or_404(request)
    rows = [{"path": rel, "size": size} for rel, size in api.list_artifacts(ctx, job_id)]
    return JSONResponse({"jobId": job_id, "artifacts": rows})


def artifact(request: Request) -> Response:
    """``GET /api/jobs/{jobId}/artifacts/{path}``: one file, confined to the job's folder."""
    ctx, job_id = _job_or_404(request)
    path = artifact_file(ctx, job_id, request.path_params["path"])
    media = TEXT_TYPES.get(path.suffix) or "application/octet-stream"
    guessed = mimetypes.guess_type(path.name)[0] or ""
    disposition = "inline" if path.suffix in TEXT_TYPES and "html" not in guessed else "attachment"
    return FileResponse(path, media_type=media, content_disposition_type=disposition, filename=path.name)


def parse_control_body(raw: bytes) -> dict[str, Any]:
    """The control request's fields, or `InputError` (400) naming what is wrong."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InputError("body is not JSON", where="body") from None
    if not isinstance(body, dict):
        raise InputError('body must be a JSON object {"action", "stepId"?, "reason"?}', where="body")
    unknown = sorted(set(body) - CONTROL_FIELDS)
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r} (fields: action, stepId, reason)", where="body")
    action = body.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise InputError(f"action must be one of: {', '.join(ACTIONS)}", where="action")
    for name in ("stepId", "reason"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InputError(f"{name} must be a string", where=name)
    if len(body.get("reason") or "") > MAX_REASON:
        raise InputError(f"reason is longer than {MAX_REASON} characters", where="reason")
    return {"action": action, "step": body.get("stepId") or None, "reason": body.get("reason") or None}


async def control(request: Request) -> Response:
    """``POST /api/jobs/{jobId}/control``: 202 with the pending request, 400/404/409 otherwise."""
    from starlette.concurrency import run_in_threadpool

    fields = parse_control_body(await request.body())
    return await run_in_threadpool(_control, request, fields)


def _control(request: Request, fields: dict[str, Any]) -> Response:
    ctx, job_id = _job_or_404(request)
    job_rec = ctx.store.get_job(job_id) or {}
    step = fields["step"]
    if step is not None and step not in [s["stepId"] for s in job_rec.get("steps", ())]:
        raise NotFound(f"unknown step {step!r} in job {job_id!r}")
    try:
        req = api.recover(request.app.state.selfheal, job_id, fields["action"], step=step,
                          reason=fields["reason"], actor=request.state.actor, via="web")
    except ControlError as exc:
        return error(409, str(exc))
    keys = ("requestId", "jobId", "action", "stepId", "stepIndex", "actor", "reason", "state", "requestedAt")
    return JSONResponse({k: req.get(k) for k in keys}, status_code=202)
