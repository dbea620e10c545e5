"""The JSON API on a real uvicorn server with a real HTTP client, on jobs nobody runs (no worker),
so every state is the one the test made: auth, list/cursor/filter, status, events, log tail,
artifacts confinement and the control validation matrix."""

from __future__ import annotations

import http.client as httplib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from celery_selfheal.api import job_status
from tests.web.conftest import ALICE, BOB, Console, run_console, submit_queued


def test_healthz_needs_no_auth_and_api_needs_a_token(console: Console, make_repo, tmp_path: Path) -> None:
    job_id = submit_queued(console.selfheal, tmp_path, make_repo())
    with console.client(None) as anon:
        assert anon.get("/healthz").json() == {"ok": True}
        for path in ("/api/jobs", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/events", "/api/nothing-here"):
            resp = anon.get(path)
            assert resp.status_code == 401 and "error" in resp.json(), path
        assert anon.get("/api/jobs", headers={"Authorization": "Bearer wrong-token-xxxxxxxxxx"}).status_code == 401
        assert anon.get("/api/jobs", headers={"Authorization": f"Basic {console.token()}"}).status_code == 401
        resp = anon.post(f"/api/jobs/{job_id}/control", json={"action": "pause"})
        assert resp.status_code == 401
        assert anon.get("/", follow_redirects=False).headers["location"] == "/login"
        assert "Content-Security-Policy" in anon.get("/login").headers
    assert not console.ctx.store.list_control(job_id)


def test_jobs_list_pages_with_cursor_and_filters_by_status(console: Console, make_repo, tmp_path: Path) -> None:
    repo = make_repo()
    ids = [submit_queued(console.selfheal, tmp_path, repo, objective=f"objective {n}") for n in range(5)]
    console.ctx.store.update_job(ids[1], {"status": "failed", "finishedAt": "2026-01-01T00:00:00Z"})
    with console.client() as http:
        first = http.get("/api/jobs", params={"limit": 2}).json()
        assert [j["jobId"] for j in first["jobs"]] == [ids[4], ids[3]]
        assert list(first["jobs"][0]) == ["jobId", "status", "currentStep", "createdAt", "updatedAt",
                                          "finishedAt", "objective"]
        assert first["jobs"][0]["objective"] == "objective 4" and first["next"]
        second = http.get("/api/jobs", params={"limit": 2, "cursor": first["next"]}).json()
        third = http.get("/api/jobs", params={"limit": 2, "cursor": second["next"]}).json()
        assert [j["jobId"] for j in second["jobs"] + third["jobs"]] == [ids[2], ids[1], ids[0]]
        assert third["next"] is None
        failed = http.get("/api/jobs", params={"status": "failed"}).json()
        assert [(j["jobId"], j["status"]) for j in failed["jobs"]] == [(ids[1], "failed")]
        assert len(http.get("/api/jobs", params={"status": "queued"}).json()["jobs"]) == 4
        for bad in ({"status": "nope"}, {"limit": "0"}, {"limit": "x"}, {"cursor": "abc"}, {"limit": "100000"}):
            resp = http.get("/api/jobs", params=bad)
            assert resp.status_code == 400 and resp.json()["error"], bad


def test_status_and_events_documents(console: Console, make_repo, tmp_path: Path) -> None:
    job_id = submit_queued(console.selfheal, tmp_path, make_repo())
    for n in range(3):
        console.ctx.bus.emit("task.step.attempt.started", job_id, stepId="one", stepIndex=0, attempt=n + 1)
    with console.client() as http:
        doc = http.get(f"/api/jobs/{job_id}").json()
        assert doc == json.loads(json.dumps(job_status(console.ctx, job_id)))
        assert http.get("/api/jobs/unknown-job").status_code == 404
        assert http.get("/api/jobs/..%2F..%2Fetc").status_code == 404
        ev = http.get(f"/api/jobs/{job_id}/events").json()
        assert [e["seq"] for e in ev["events"]] == [1, 2, 3] and ev["last"] == 3
        assert ev["events"][0]["event"] == "task.step.attempt.started" and ev["events"][0]["jobId"] == job_id
        assert http.get(f"/api/jobs/{job_id}/events", params={"after": 2}).json()["last"] == 3
        assert http.get(f"/api/jobs/{job_id}/events", params={"after": 3}).json() == {"events": [], "last": 3}
        assert http.get(f"/api/jobs/{job_id}/events", params={"after": "-1"}).status_code == 400
        assert http.get("/api/jobs/unknown-job/events").status_code == 404


def test_attempt_log_tail_is_scrubbed_text(console: Console, make_repo, tmp_path: Path) -> None:
    job_id = submit_queued(console.selfheal, tmp_path, make_repo())
    log = console.ctx.artifacts(job_id).log_path(0, 1)
    log.parent.mkdir(parents=True)
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    log.write_text("x" * 5000 + f"\n<script>alert(1)</script> token {secret}\nlast line\n")
    with console.client() as http:
        resp = http.get(f"/api/jobs/{job_id}/steps/0/attempts/1/log", params={"tail": 200})
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        assert resp.text.endswith("last line\n") and len(resp.text) <= 200 and secret not in resp.text
        assert http.get(f"/api/jobs/{job_id}/steps/0/attempts/2/log").status_code == 404
        assert http.get(f"/api/jobs/{job_id}/steps/x/attempts/1/log").status_code == 404
        assert http.get(f"/api/jobs/{job_id}/steps/0/attempts/1/log", params={"tail": "-5"}).status_code == 400


def test_artifacts_list_and_files_confined_to_the_job_folder(console: Console, make_repo, tmp_path: Path) -> None:
    job_id = submit_queued(console.selfheal, tmp_path, make_repo())
    other = submit_queued(console.selfheal, tmp_path, make_repo("other"))
    arts, theirs = console.ctx.artifacts(job_id), console.ctx.artifacts(other)
    arts.step_state_path(0).parent.mkdir(parents=True)
    arts.step_state_path(0).write_text('{"stepId": "one"}')
    arts.patch_path(0).parent.mkdir(parents=True)
    arts.patch_path(0).write_text("diff --git a/x b/x\n")
    theirs.base.mkdir(parents=True)
    (theirs.base / "secret.json").write_text("{}")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    os.symlink(outside, arts.base / "state" / "link.json")
    os.symlink(theirs.base, arts.base / "linkdir")
    (arts.base / "page.html").write_text("<script>alert(1)</script>")
    with console.client() as http:
        listed = http.get(f"/api/jobs/{job_id}/artifacts").json()["artifacts"]
        assert {"path": "state/steps/step-0000.json", "size": 17} in listed
        one = http.get(f"/api/jobs/{job_id}/artifacts/state/steps/step-0000.json")
        assert one.status_code == 200 and one.json() == {"stepId": "one"}
        patch = http.get(f"/api/jobs/{job_id}/artifacts/patches/steps/step-0000.patch")
        assert patch.text.startswith("diff --git") and patch.headers["content-type"].startswith("text/plain")
        page = http.get(f"/api/jobs/{job_id}/artifacts/page.html")
        assert page.headers["content-type"] == "application/octet-stream"
        assert page.headers["content-disposition"].startswith("attachment")
        base = f"/api/jobs/{job_id}/artifacts/"
        port = int(console.url.rsplit(":", 1)[1])
        for rel in ("../" + other + "/secret.json", "%2e%2e/" + other + "/secret.json",
                    "..%2f" + other + "%2fsecret.json", "%2E%2E%2F%2E%2E%2Foutside.txt", "state/link.json",
                    "linkdir/secret.json", "%2Fetc%2Fpasswd", "/etc/passwd", "state/../../" + other + "/secret.json",
                    "state", "missing.json", "state/steps/%00.json", ".hidden", "state%5c..%5c..%5cx"):
            # http.client sends the path as given (httpx would remove the dot segments itself)
            conn = httplib.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", base + rel, headers={"Authorization": f"Bearer {console.token()}"})
            resp = conn.getresponse()
            body = resp.read().decode()
            conn.close()
            assert resp.status == 404, (rel, resp.status, body[:80])
            assert body not in ("outside", "{}")


def _control(http: httpx.Client, job_id: str, body: Any, **kw: Any) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return http.post(f"/api/jobs/{job_id}/control", content=body, headers={"Content-Type": "application/json"})
    return http.post(f"/api/jobs/{job_id}/control", json=body, **kw)


def test_control_validation_matrix_and_audit_actor(console: Console, make_repo, tmp_path: Path) -> None:
    job_id = submit_queued(console.selfheal, tmp_path, make_repo())
    with console.client(BOB) as http:
        for body in (b"not json", b"[1]", {"action": 7}, {"action": "explode"}, {"action": "pause", "stepId": 3},
                     {"action": "pause", "reason": ["x"]}, {"action": "pause", "extra": 1}, {},
                     {"action": "pause", "reason": "x" * 3000}):
            resp = _control(http, job_id, body)
            assert resp.status_code == 400 and resp.json()["error"], body
        assert _control(http, "no-such-job", {"action": "pause"}).status_code == 404
        assert _control(http, job_id, {"action": "retry_step", "stepId": "nope"}).status_code == 404
        assert not console.ctx.store.list_audit(job_id)  # nothing recorded for 400/404
        rejected = _control(http, job_id, {"action": "retry_step", "reason": "too early"})
        assert rejected.status_code == 409 and "not started" in rejected.json()["error"]
        assert _control(http, job_id, {"action": "resume"}).status_code == 409
        resp = _control(http, job_id, {"action": "pause", "reason": "look at it"})
        assert resp.status_code == 202, resp.text
        req = resp.json()
        assert req["requestId"] and req["action"] == "pause" and req["state"] == "pending" and req["actor"] == BOB
        doc = http.get(f"/api/jobs/{job_id}").json()
        assert [p["requestId"] for p in doc["pendingControl"]] == [req["requestId"]]  # pending until the ack
        audit = doc["audit"]
        assert [(a["action"], a["outcome"], a["actor"]) for a in audit] == [
            ("retry_step", "rejected", BOB), ("resume", "rejected", BOB), ("pause", "requested", BOB)]
        for key in ("actor", "action", "stepId", "reason", "requestId", "outcome", "at"):
            assert key in audit[-1]
        assert audit[-1]["reason"] == "look at it" and audit[-1]["requestId"] == req["requestId"]
    with console.client(ALICE) as http:
        view = http.get(f"/api/jobs/{job_id}/view").json()
        assert view["actions"]["pause"]["allowed"] is True and view["actions"]["retry_step"]["allowed"] is False
        assert "not started" in view["actions"]["retry_step"]["why"]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_api_on_both_stores(backend: str, request: pytest.FixtureRequest, make_repo, tmp_path: Path) -> None:
    from celery_selfheal.settings import load_settings
    from tests.integration.conftest import client_selfheal

    broker = request.getfixturevalue("redis_url") if backend == "redis" else None
    settings = load_settings(state_dir=tmp_path / "state", broker_url=broker, env={})
    settings.ensure_dirs()
    sh = client_selfheal(settings)
    assert settings.store_url.startswith("redis" if backend == "redis" else "sqlite")
    with run_console(sh) as console, console.client() as http:
        job_id = submit_queued(sh, tmp_path, make_repo())
        rows = http.get("/api/jobs", params={"status": "queued"}).json()["jobs"]
        assert job_id in [r["jobId"] for r in rows]
        assert http.get(f"/api/jobs/{job_id}").json()["jobId"] == job_id
        assert _control(http, job_id, {"action": "takeover"}).status_code == 202
        assert http.get(f"/api/jobs/{job_id}").json()["pendingControl"][0]["action"] == "takeover"
