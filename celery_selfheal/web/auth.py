"""Who may use the console: named bearer tokens, the browser's session cookie and its CSRF token.

Tokens come from ``SELFHEAL_WEB_TOKEN`` (actor: the OS user), or a ``--token-file`` of ``NAME:TOKEN``
lines (NAME is the actor the audit records), else one random token kept in
``<state dir>/run/web-token`` (mode 0600, shared by every console on that state dir).

The session cookie is stateless, so several console processes with the same tokens accept each
other's sessions: ``NAME.ISSUED.NONCE.MAC`` with MAC = HMAC-SHA256(token of NAME, the rest). The CSRF
token is HMAC(token, "csrf" + cookie). Every comparison is `hmac.compare_digest`; a token is never
logged or put in a URL other than the login link printed at start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from celery_selfheal.errors import InputError

COOKIE = "selfheal_session"
CSRF_HEADER = "x-csrf-token"
#: how long a browser session lasts before the login page is shown again
SESSION_SECONDS = 12 * 3600
#: shorter tokens are refused: they could be guessed
MIN_TOKEN_CHARS = 16
NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


@dataclass(frozen=True)
class Tokens:
    """The accepted tokens by actor name; ``explicit`` is False for a generated token."""

    by_name: Mapping[str, str]
    explicit: bool
    source: str

    def actor_for(self, presented: str) -> str | None:
        """The name whose token is ``presented``, in constant time per token (all are compared)."""
        found = None
        given = presented.encode()
        for name, token in self.by_name.items():
            if hmac.compare_digest(given, token.encode()):
                found = name
        return found

    def session_for(self, name: str, *, now: float | None = None) -> str:
        """A new session cookie value for ``name``."""
        body = f"{name}.{int(time.time() if now is None else now)}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._mac(name, 'session', body)}"

    def session_actor(self, cookie: str | None, *, now: float | None = None) -> str | None:
        """The actor of a valid, unexpired session cookie, else None."""
        parts = (cookie or "").split(".")
        if len(parts) != 4 or parts[0] not in self.by_name or not parts[1].isdigit():
            return None
        name, issued, body = parts[0], int(parts[1]), ".".join(parts[:3])
        if not hmac.compare_digest(parts[3], self._mac(name, "session", body)):
            return None
        age = (time.time() if now is None else now) - issued
        return name if 0 <= age <= SESSION_SECONDS else None

    def csrf_for(self, cookie: str) -> str:
        """The CSRF token that goes with a (valid) session cookie."""
        return self._mac(cookie.split(".")[0], "csrf", cookie)

    def csrf_ok(self, cookie: str, presented: str | None) -> bool:
        """Whether ``presented`` is the CSRF token of ``cookie``."""
        return bool(presented) and hmac.compare_digest(str(presented), self.csrf_for(cookie))

    def _mac(self, name: str, purpose: str, body: str) -> str:
        key = self.by_name[name].encode()
        return hmac.new(key, f"{purpose}|{body}".encode(), hashlib.sha256).hexdigest()


def parse_token_file(path: Path) -> dict[str, str]:
    """``NAME:TOKEN`` lines (blank lines and ``#`` comments skipped); `InputError` naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read token file: {exc.strerror}", where=str(path)) from None
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        where = f"{path}: line {number}"
        if not sep or not NAME.match(name.strip()):
            raise InputError("expected NAME:TOKEN with NAME of [A-Za-z0-9._@-]{1,64}", where=where)
        check_token(token.strip(), where)
        if name.strip() in found:
            raise InputError(f"name {name.strip()!r} is given twice", where=where)
        if token.strip() in found.values():
            raise InputError("this token is already given to another name", where=where)
        found[name.strip()] = token.strip()
    if not found:
        raise InputError("no NAME:TOKEN line", where=str(path))
    return found


def check_token(token: str, where: str) -> str:
    """``token`` if it is long enough and printable without spaces, else `InputError`."""
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
        raise InputError(f"a token needs at least {MIN_TOKEN_CHARS} printable characters and no spaces",
                         where=where)
    return token


def load_tokens(*, env: Mapping[str, str], token_file: str | None, run_dir: Path, default_name: str) -> Tokens:
    """The console's tokens: ``--token-file``, else ``SELFHEAL_WEB_TOKEN``, else the generated one."""
    if token_file:
        return Tokens(parse_token_file(Path(token_file)), explicit=True, source=f"token file {token_file}")
    if env.get("SELFHEAL_WEB_TOKEN"):
        token = check_token(env["SELFHEAL_WEB_TOKEN"].strip(), "SELFHEAL_WEB_TOKEN")
        return Tokens({default_name: token}, explicit=True, source="SELFHEAL_WEB_TOKEN")
    path = run_dir / "web-token"
    return Tokens({default_name: generated_token(path)}, explicit=False, source=str(path))


def generated_token(path: Path) -> str:
    """The token in ``path``, made (random, mode 0600) if the file does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another console on this state dir made it: share its token
        if path.stat().st_mode & 0o077:
            raise InputError("token file is readable by others (chmod 600 it, or delete it)",
                             where=str(path)) from None
        return check_token(path.read_text(encoding="utf-8").strip(), str(path))
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token
