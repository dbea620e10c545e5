"""The API next to a real prefork worker: SSE follows a job healing live (idle timeout -> soft reset)
and ends with it, ``Last-Event-ID`` resumes, keep-alive comments flow, two console processes serve
the same store, and control through HTTP is acknowledged by the worker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.conftest import ALICE, run_console, submit_queued, wait_for, write_job

pytestmark = pytest.mark.slow


def sse(http: httpx.Client, path: str, *, headers: dict[str, str] | None = None,
        stop_after: int | None = None) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Read an SSE stream until the server ends it (or ``stop_after`` events): events and comments."""
    events: list[tuple[int, dict[str, Any]]] = []
    comments: list[str] = []
    seq, data = None, None
    with http.stream("GET", path, headers=headers or {}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                assert seq is not None
                events.append((seq, data))
                seq, data = None, None
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events, comments


def test_sse_follows_a_job_healing_live_on_two_consoles(harness: Any, make_repo) -> None:
    from concurrent.futures import ThreadPoolExecutor

    steps = [{"id": "implement", "instructions": "silent@1\nwrite out.txt: done"}]
    job_file = write_job(harness.tmp, make_repo(), steps,
                         step_idle_timeout_seconds=1.0, soft_reset_backoff_seconds=0.1)
    with run_console(harness.selfheal) as one, run_console(harness.selfheal) as two, \
            one.client() as h1, two.client() as h2, ThreadPoolExecutor(2) as pool:
        from celery_selfheal.api import submit

        job_id = submit(harness.selfheal, job_file)["jobId"]
        streams = [pool.submit(sse, h, f"/api/jobs/{job_id}/events/stream") for h in (h1, h2)]
        got = [s.result(timeout=90) for s in streams]  # each ends by itself when the job has ended
        stored = h1.get(f"/api/jobs/{job_id}/events").json()["events"]
        wait_for(lambda: not one.app.state.feeds.followed and not two.app.state.feeds.followed,
                 "the feeds to go once their clients left")
    for events, _ in got:
        assert [seq for seq, _ in events] == [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
        names = [e["event"] for _, e in events]
        assert names[-1] == "task.job.succeeded"
        triggered = next(e for _, e in events if e["event"] == "task.self_heal.triggered")
        assert triggered["strategy"] == "soft_reset" and triggered["detector"] == "idle_timeout"
    assert harness.ctx.store.get_job(job_id)["status"] == "succeeded"


def test_last_event_id_wins_and_a_finished_stream_ends(harness: Any, make_repo) -> None:
    job_id = harness.submit(write_job(harness.tmp, make_repo(), [{"id": "a", "instructions": "print one"}]))
    harness.wait(job_id)
    with run_console(harness.selfheal) as console, console.client() as http:
        total = http.get(f"/api/jobs/{job_id}/events").json()["last"]
        assert total >= 4
        events, _ = sse(http, f"/api/jobs/{job_id}/events/stream?after=1", headers={"Last-Event-ID": "2"})
        assert [seq for seq, _ in events] == list(range(3, total + 1))
        events, _ = sse(http, f"/api/jobs/{job_id}/events/stream?after={total}")
        assert events == []  # resumed after the end: nothing more, and the stream still ends
        assert http.get(f"/api/jobs/{job_id}/events/stream", headers={"Last-Event-ID": "x"}).status_code == 400
        assert http.get("/api/jobs/nope/events/stream").status_code == 404


def test_keep_alive_comments_on_a_quiet_job(embedded: Any, make_repo, tmp_path: Path) -> None:
    job_id = submit_queued(embedded, tmp_path, make_repo())
    embedded.context().bus.emit("task.step.attempt.started", job_id, stepId="one", stepIndex=0, attempt=1)
    lines: list[str] = []
    with run_console(embedded, keepalive=0.2) as console, console.client() as http, \
            http.stream("GET", f"/api/jobs/{job_id}/events/stream") as resp:
        for line in resp.iter_lines():
            lines.append(line)
            if lines.count(": keep-alive") >= 2:
                break
    assert "id: 1" in lines and lines.index("id: 1") < lines.index(": keep-alive")


def test_pause_over_http_pending_then_acked_then_resume(harness: Any, make_repo) -> None:
    release = harness.tmp / f"release-{uuid.uuid4().hex[:8]}"
    # step 0 runs until the pause has been asked for (a console starting on a loaded machine can
    # take longer than any fixed step duration)
    job_id = harness.submit(write_job(harness.tmp, make_repo(), [
        {"id": "first", "instructions": f"wait-for {release}\nwrite one.txt: 1"},
        {"id": "second", "instructions": "write two.txt: 2"}]))
    wait_for(lambda: any(a["status"] == "running" for a in harness.attempts(job_id)), "step 0 to run")
    with run_console(harness.selfheal) as console, console.client(ALICE) as http:
        resp = http.post(f"/api/jobs/{job_id}/control", json={"action": "pause", "reason": "look"})
        assert resp.status_code == 202, resp.text
        request_id = resp.json()["requestId"]
        doc = http.get(f"/api/jobs/{job_id}").json()
        pending = [p["requestId"] for p in doc["pendingControl"]]
        acked = any(a.get("requestId") == request_id and a["outcome"] == "acknowledged" for a in doc["audit"])
        assert request_id in pending or acked  # pending in the document until the worker's ack
        assert doc["status"] == "running"
        release.touch()  # step 0 ends now; the job parks at the step boundary
        wait_for(lambda: http.get(f"/api/jobs/{job_id}").json()["status"] == "paused", "the job to park")
        doc = http.get(f"/api/jobs/{job_id}").json()
        assert doc["pendingControl"] == []
        ours = [a for a in doc["audit"] if a.get("requestId") == request_id]
        assert [(a["outcome"], a["actor"]) for a in ours] == [("requested", ALICE), ("acknowledged", ALICE)]
        ack = [e for e in http.get(f"/api/jobs/{job_id}/events").json()["events"]
               if e["event"] == "task.control.recovery.ack" and e.get("requestId") == request_id]
        assert len(ack) == 1 and ack[0]["actor"] == ALICE
        assert http.post(f"/api/jobs/{job_id}/control", json={"action": "pause"}).status_code == 409
        assert http.post(f"/api/jobs/{job_id}/control", json={"action": "resume"}).status_code == 202
        assert harness.wait(job_id)["status"] == "succeeded"
        # a finished job: pause is refused, resume_from_step revives it
        assert http.post(f"/api/jobs/{job_id}/control", json={"action": "pause"}).status_code == 409
        epoch = harness.ctx.store.get_job(job_id)["epoch"]
        resp = http.post(f"/api/jobs/{job_id}/control", json={"action": "resume_from_step", "stepId": "second"})
        assert resp.status_code == 202 and resp.json()["stepId"] == "second"
        events, _ = sse(http, f"/api/jobs/{job_id}/events/stream?after="
                        + str(http.get(f"/api/jobs/{job_id}/events").json()["last"] - 1))
        names = [e["event"] for _, e in events]
        assert "task.resume.from_step" in names and names[-1] == "task.job.succeeded"  # followed across the revival
        assert harness.ctx.store.get_job(job_id)["epoch"] == epoch + 1


def test_console_on_redis_next_to_a_worker(redis_url: str, make_repo, tmp_path: Path) -> None:
    from tests.integration.test_cluster import Cluster

    cluster = Cluster(tmp_path, redis_url)
    try:
        cluster.start("a")
        assert cluster.client is not None and cluster.client.settings.store_url.startswith("redis")
        with run_console(cluster.client) as console, console.client() as http:
            job_id = cluster.submit(make_repo(), [{"id": "s0", "instructions": "fail@1 75 connection reset\nprint ok"},
                                                  {"id": "s1", "instructions": "print two"}],
                                    soft_reset_backoff_seconds=0.1)
            events, _ = sse(http, f"/api/jobs/{job_id}/events/stream")
            names = [e["event"] for _, e in events]
            assert "task.self_heal.triggered" in names and names[-1] == "task.job.succeeded"
            assert job_id in [j["jobId"] for j in http.get("/api/jobs", params={"status": "succeeded"}).json()["jobs"]]
            assert http.post(f"/api/jobs/{job_id}/control", json={"action": "cancel"}).status_code == 409
            resp = http.post(f"/api/jobs/{job_id}/control", json={"action": "retry_step", "reason": "again"})
            assert resp.status_code == 202
            wait_for(lambda: any(a.get("outcome") == "acknowledged" and a.get("requestId") == resp.json()["requestId"]
                                 for a in http.get(f"/api/jobs/{job_id}").json()["audit"]), "the worker's ack")
            cluster.wait_all([job_id], 60)
    finally:
        cluster.stop()
