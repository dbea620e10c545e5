"""The console's route table and the ASGI app (Starlette: routing as data, small pure-ASGI middleware,
`StreamingResponse` for SSE; no FastAPI: the API has no request models that would pay for it)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from celery_selfheal.errors import InputError
from celery_selfheal.web import routes_api as api
from celery_selfheal.web import routes_pages as pages
from celery_selfheal.web.auth import Tokens
from celery_selfheal.web.files import NotFound
from celery_selfheal.web.middleware import Guard
from celery_selfheal.web.sse import KEEPALIVE_SECONDS, POLL_SECONDS, Feeds

JOB = "/api/jobs/{job_id}"


def healthz(request: Request) -> Response:
    """``GET /healthz`` (no auth)."""
    return JSONResponse({"ok": True})


ROUTES = [
    Route("/healthz", healthz),
    Route("/login", pages.login, methods=["GET", "POST"]),
    Route("/logout", pages.logout, methods=["POST"]),
    Route("/", pages.index),
    Route("/jobs/{job_id}", pages.job_page),
    Route("/api/jobs", api.jobs),
    Route(JOB, api.job),
    Route(JOB + "/view", api.view),
    Route(JOB + "/events", api.events),
    Route(JOB + "/events/stream", api.stream),
    Route(JOB + "/steps/{step_index:int}/attempts/{attempt:int}/log", api.attempt_log),
    Route(JOB + "/artifacts", api.artifacts),
    Route(JOB + "/artifacts/{path:path}", api.artifact),
    Route(JOB + "/control", api.control, methods=["POST"]),
]


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=404)


async def _bad_input(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_api(request):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


def build_app(selfheal: Any, tokens: Tokens, *, poll: float = POLL_SECONDS,
              keepalive: float = KEEPALIVE_SECONDS) -> Starlette:
    """The console for ``selfheal`` (a `SelfHeal`), accepting ``tokens``."""
    static = str(resources.files("celery_selfheal.web").joinpath("static"))
    app = Starlette(
        routes=[*ROUTES, Mount("/static", StaticFiles(directory=static), name="static")],
        middleware=[Middleware(Guard, tokens=tokens)],
        exception_handlers={NotFound: _not_found, InputError: _bad_input, HTTPException: _http},
    )
    app.state.selfheal = selfheal
    app.state.tokens = tokens
    app.state.feeds = Feeds(selfheal.context(), poll=poll, keepalive=keepalive)
    return app
