"""Pure ASGI middleware (streaming-safe, unlike BaseHTTPMiddleware): security headers on every
response, authentication of every ``/api/`` request, and an access log without query strings."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celery_selfheal.web.auth import COOKIE, CSRF_HEADER, Tokens

log = logging.getLogger("celery_selfheal.web")

#: nothing inline, nothing from elsewhere: scripts, styles and fetches from this origin only
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
           (b"cross-origin-opener-policy", b"same-origin"), (b"cross-origin-resource-policy", b"same-origin")]
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def actor_of(scope: Scope, tokens: Tokens) -> tuple[str | None, str]:
    """(actor or None, why not) of a request: a bearer token, or a session cookie (plus its CSRF
    token on a state-changing method)."""
    request = Request(scope)
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "use Authorization: Bearer TOKEN"
        name = tokens.actor_for(token.strip())
        return (name, "") if name else (None, "invalid token")
    cookie = request.cookies.get(COOKIE)
    name = tokens.session_actor(cookie)
    if name is None:
        return None, "authentication required (Authorization: Bearer TOKEN, or log in at /login)"
    if scope["method"] in UNSAFE and not tokens.csrf_ok(str(cookie), request.headers.get(CSRF_HEADER)):
        return None, "csrf"
    return name, ""


class Guard:
    """Headers, ``/api/`` authentication and the access log around the app."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), [0]

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        path = scope["path"]
        try:
            if path.startswith("/api/") or path == "/api":
                actor, why = actor_of(scope, self.tokens)
                if actor is None:
                    code = 403 if why == "csrf" else 401
                    text = "missing or wrong CSRF token (X-CSRF-Token)" if why == "csrf" else why
                    await _json(send_wrapped, code, {"error": text}, www=code == 401)
                    return
                scope.setdefault("state", {})["actor"] = actor
            await self.app(scope, receive, send_wrapped)
        finally:
            # the path only: the login URL's query carries a token, and logs must never show one
            log.info("%s %s %s %.0fms", scope["method"], path, status[0], (time.monotonic() - started) * 1000)


async def _json(send: Send, status: int, body: dict[str, Any], *, www: bool) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
               (b"cache-control", b"no-store")]
    if www:
        headers.append((b"www-authenticate", b'Bearer realm="selfheal"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})
