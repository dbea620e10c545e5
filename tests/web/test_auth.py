"""Tokens, the session cookie and CSRF: pure checks, then the same through a real server."""

from __future__ import annotations

import re
import string
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.errors import InputError
from celery_selfheal.web.auth import COOKIE, SESSION_SECONDS, Tokens, generated_token, parse_token_file
from tests.web.conftest import ALICE, BOB, Console, make_tokens, submit_queued


def test_tokens_sessions_and_csrf() -> None:
    tokens = make_tokens()
    assert tokens.actor_for(tokens.by_name[BOB]) == BOB
    assert tokens.actor_for("x" * 32) is None and tokens.actor_for("") is None
    cookie = tokens.session_for(ALICE, now=1000)
    assert tokens.session_actor(cookie, now=1000 + SESSION_SECONDS) == ALICE
    assert tokens.session_actor(cookie, now=1001 + SESSION_SECONDS) is None  # expired
    assert tokens.session_actor(cookie.replace(ALICE, BOB, 1), now=1000) is None  # forged name
    assert tokens.session_actor(cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), now=1000) is None
    assert tokens.session_actor(None) is None and tokens.session_actor("a.b.c") is None
    other = Tokens({ALICE: "another-token-of-alice-123"}, explicit=True, source="t")
    assert other.session_actor(cookie, now=1000) is None  # signed with the token: a new token ends sessions
    csrf = tokens.csrf_for(cookie)
    assert tokens.csrf_ok(cookie, csrf) and not tokens.csrf_ok(cookie, None)
    assert not tokens.csrf_ok(cookie, csrf[:-1] + "x") and not tokens.csrf_ok(tokens.session_for(ALICE), csrf)


NAMES = st.text(string.ascii_letters + string.digits + "._@-", min_size=1, max_size=64)
SECRETS = st.text(string.ascii_letters + string.digits + "-_:=+/!", min_size=16, max_size=80)


@given(st.dictionaries(NAMES, SECRETS, min_size=1, max_size=6).filter(lambda d: len(set(d.values())) == len(d)),
       st.sampled_from(["\n", "\r\n"]))
def test_token_file_round_trip(pairs: dict[str, str], newline: str) -> None:
    import tempfile

    text = "# console tokens\n\n" + newline.join(f"{name}:{token}" for name, token in pairs.items()) + newline
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens"
        path.write_bytes(text.encode())
        assert parse_token_file(path) == pairs


@pytest.mark.parametrize(("text", "message"), [
    ("alice\n", "line 1: expected NAME:TOKEN"),
    ("al ice:0123456789abcdefgh\n", "line 1: expected NAME:TOKEN"),
    ("alice:short\n", "line 1: a token needs at least 16"),
    ("a:0123456789abcdefgh\na:0123456789abcdefgX\n", "line 2: name 'a' is given twice"),
    ("a:0123456789abcdefgh\nb:0123456789abcdefgh\n", "line 2: this token is already given"),
    ("# nothing\n", "no NAME:TOKEN line"),
])
def test_token_file_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)) as err:
        parse_token_file(path)
    assert str(path) in str(err.value) and "0123456789" not in str(err.value)


def test_generated_token_is_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "run" / "web-token"
    token = generated_token(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert generated_token(path) == token  # a second console on the same state dir shares it
    path.chmod(0o644)
    with pytest.raises(InputError, match="readable by others"):
        generated_token(path)


def _login(http: httpx.Client, token: str) -> None:
    resp = http.get("/login", params={"token": token}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    header = resp.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header.replace("Strict", "strict") and "Path=/" in header


def test_browser_session_and_csrf(console: Console, make_repo, tmp_path: Path) -> None:
    job_id = submit_queued(console.selfheal, tmp_path, make_repo())
    url = f"/api/jobs/{job_id}/control"
    with httpx.Client(base_url=console.url, timeout=30) as http:
        _login(http, console.token(BOB))
        page = http.get(f"/jobs/{job_id}")
        assert page.status_code == 200 and page.headers["content-security-policy"].startswith("default-src 'none'")
        csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
        assert http.get("/api/jobs").status_code == 200  # the cookie authenticates GETs
        assert http.post(url, json={"action": "pause"}).status_code == 403  # no CSRF token
        assert http.post(url, json={"action": "pause"}, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
        cross = http.post(url, json={"action": "pause"}, headers={"Origin": "https://evil.example",
                                                                  "Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        assert not console.ctx.store.list_control(job_id)
        ok = http.post(url, json={"action": "pause"}, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 202 and ok.json()["actor"] == BOB
        with httpx.Client(base_url=console.url, cookies={COOKIE: http.cookies[COOKIE] + "0"}) as forged:
            assert forged.get("/api/jobs").status_code == 401
        assert http.post("/logout", follow_redirects=False).status_code == 303
    with httpx.Client(base_url=console.url, timeout=30) as anon:
        bad = anon.post("/login", data={"token": "not-the-token-at-all"}, follow_redirects=False)
        assert bad.status_code == 401 and COOKIE not in bad.headers.get("set-cookie", "")
        good = anon.post("/login", data={"token": console.token(ALICE)}, follow_redirects=False)
        assert good.status_code == 303 and anon.get("/api/jobs").status_code == 200
    audit = console.ctx.store.list_audit(job_id)
    assert [(a["actor"], a["outcome"]) for a in audit] == [(BOB, "requested")]
