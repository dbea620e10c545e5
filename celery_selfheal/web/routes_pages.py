"""HTML: the login page, the job list (``/``) and the job page (``/jobs/{jobId}``).

Pages are static templates; the few values filled in server-side (actor, CSRF token, an error line)
are HTML-escaped, and everything about jobs arrives as JSON that the scripts put in the page as text
(``textContent``), so nothing a job file or a runtime wrote is ever parsed as HTML.
"""

from __future__ import annotations

import html
from importlib import resources
from string import Template
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from celery_selfheal.web.auth import COOKIE, SESSION_SECONDS, Tokens

MAX_FORM = 4096


def _template(name: str) -> Template:
    return Template(resources.files("celery_selfheal.web").joinpath("templates", name).read_text("utf-8"))


def render(name: str, status: int = 200, /, **values: str) -> HTMLResponse:
    """A template with every value HTML-escaped."""
    body = _template(name).safe_substitute({k: html.escape(v, quote=True) for k, v in values.items()})
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _tokens(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    return tokens


def _session(request: Request) -> tuple[str, str] | None:
    cookie = request.cookies.get(COOKIE)
    actor = _tokens(request).session_actor(cookie)
    return None if actor is None or cookie is None else (actor, cookie)


def _logged_in(request: Request, token: str) -> Response:
    tokens = _tokens(request)
    actor = tokens.actor_for(token)
    if actor is None:
        return render("login.html", 401, error="That token is not valid.")
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(COOKIE, tokens.session_for(actor), max_age=SESSION_SECONDS, path="/", httponly=True,
                    samesite="strict", secure=request.url.scheme == "https")
    return resp


async def login(request: Request) -> Response:
    """``GET /login[?token=T]`` and ``POST /login`` (form field ``token``)."""
    if request.method == "POST":
        raw = await request.body()
        form = parse_qs(raw[:MAX_FORM].decode("utf-8", "replace"))
        return _logged_in(request, (form.get("token") or [""])[0].strip())
    token = request.query_params.get("token")
    if token:
        return _logged_in(request, token.strip())
    return render("login.html", error="")


async def logout(request: Request) -> Response:
    """``POST /logout``: drop the session cookie."""
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return resp


def _page(request: Request, name: str, **values: str) -> Response:
    session = _session(request)
    if session is None:
        return RedirectResponse("/login", status_code=303)
    actor, cookie = session
    return render(name, actor=actor, csrf=_tokens(request).csrf_for(cookie), **values)


async def index(request: Request) -> Response:
    """``GET /``: the job list."""
    return _page(request, "jobs.html")


async def job_page(request: Request) -> Response:
    """``GET /jobs/{jobId}``: the job page (its data comes from the API)."""
    return _page(request, "job.html", job_id=request.path_params["job_id"])
