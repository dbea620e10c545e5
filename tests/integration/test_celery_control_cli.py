"""Operators' surfaces as subprocesses against a real prefork worker: ``celery -A
celery_selfheal.app inspect selfheal_active`` / ``control selfheal_recover``, and ``selfheal
control`` / ``follow`` / ``status``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from celery_selfheal.control.remote import recover, send_apply
from celery_selfheal.control.requests import request_control
from tests.conftest import process_alive
from tests.integration.conftest import Harness, start_worker
from tests.integration.test_controls import job, running_attempt, wait_for

pytestmark = pytest.mark.slow
CELERY = [sys.executable, "-m", "celery", "-A", "celery_selfheal.app"]
SELFHEAL = [sys.executable, "-c", "from celery_selfheal.cli.main import main; main()"]


def env(h: Harness) -> dict[str, str]:
    return {**os.environ, **h.settings.as_env()}


def run(h: Harness, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env(h), cwd=h.tmp, capture_output=True, text=True, timeout=60)


def last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


def test_celery_inspect_and_control_commands(harness: Harness, make_repo) -> None:
    a = harness.submit(harness.job_file(make_repo(), [{"id": "long", "instructions": "sleep 30"}]))
    attempt = wait_for(lambda: running_attempt(harness, a, 0), "the attempt to run")

    # -d: Celery then returns on the first reply instead of waiting out the timeout for others
    node = ["-d", attempt["hostname"], "--json", "--timeout", "20"]
    r = run(harness, [*CELERY, "inspect", "selfheal_active", *node])
    assert r.returncode == 0, r.stderr
    entries = [e for reply in last_json(r.stdout).values() for e in reply if e["jobId"] == a]
    assert len(entries) == 1, r.stdout
    entry = entries[0]
    assert (entry["stepId"], entry["stepIndex"], entry["attempt"]) == ("long", 0, 1)
    assert entry["pid"] == attempt["pid"] and entry["taskId"] == attempt["taskId"]
    assert entry["secondsElapsed"] >= 0 and entry["secondsIdle"] >= 0

    r = run(harness, [*CELERY, "control", "selfheal_recover", a, "cancel", "-", "stop it", "ops", *node])
    assert r.returncode == 0, r.stderr
    (reply,) = [v for node in last_json(r.stdout) for v in node.values()]
    assert "error" not in reply and reply["requestId"] in reply["ok"], reply
    wait_for(lambda: job(harness, a)["status"] == "cancelled", "the job to be cancelled", timeout=10)
    wait_for(lambda: not process_alive(attempt["pid"]), "the runtime to end", timeout=10)
    audit = harness.ctx.store.list_audit(a)
    assert [x["outcome"] for x in audit] == ["requested", "acknowledged"]
    assert audit[0]["actor"] == "ops" and audit[0]["reason"] == "stop it"
    assert audit[0]["via"].startswith("celery control@") and audit[0]["requestId"] == reply["requestId"]

    r = run(harness, [*CELERY, "control", "selfheal_recover", a, "resume", *node])
    assert r.returncode == 0, r.stderr
    (reply,) = [v for node in last_json(r.stdout) for v in node.values()]
    assert "ok" not in reply and "job is cancelled" in reply["error"], reply
    assert harness.ctx.store.list_audit(a)[-1]["outcome"] == "rejected"

    # without --json: Celery's own rendering says ERROR and the reason, not "OK" and "False"
    plain = [*CELERY, "control", "selfheal_recover", a, "resume", "-", "again", "ops", "n2", "-d",
             attempt["hostname"], "--timeout", "20"]
    r = run(harness, plain)
    assert "ERROR" in r.stdout and "job is cancelled" in r.stdout and "OK" not in r.stdout, r.stdout
    # a missing argument: one line naming it and the usage, not a TypeError
    r = run(harness, [*CELERY, "control", "selfheal_recover", a, *node])
    (reply,) = [v for node in last_json(r.stdout) for v in node.values()]
    assert reply["error"].startswith("missing action; usage: selfheal_recover <job_id> <action>"), reply
    assert "TypeError" not in r.stdout and "\n" not in reply["error"]


def test_selfheal_control_cli_and_follow_of_a_revived_job(harness: Harness, make_repo) -> None:
    a = harness.submit(harness.job_file(make_repo(), [
        {"id": "s0", "instructions": "write a.txt: a"},
        {"id": "s1", "instructions": "fail@1 65 schema validation failed\nwrite b.txt: b"}]))
    failed = harness.wait(a)
    assert failed["status"] == "failed"

    for argv, message in [([a, "resume"], "job has failed; there is nothing to resume"),
                          ([a, "retry_step", "--step", "s0"], "only reruns the job's current step"),
                          ([a, "resume_from_step", "--step", "zz"], "unknown step 'zz'"),
                          (["job-missing", "cancel"], "unknown job 'job-missing'")]:
        r = run(harness, [*SELFHEAL, "control", *argv])
        assert r.returncode == 2 and r.stdout == "", (argv, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert job(harness, a) == failed

    # Pending but not yet applied: `follow` must wait for the revival instead of ending at "failed".
    req = request_control(harness.ctx, a, "retry_step", actor="alice", reason="fixed",
                          enqueue_apply=lambda _job: None)
    follow = subprocess.Popen([*SELFHEAL, "follow", a, "--json"], env=env(harness), cwd=harness.tmp,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert follow.stdout is not None
        for line in follow.stdout:  # until follow has printed the failure it must not stop at
            seen.append(json.loads(line)["event"])
            if seen[-1] == "task.job.failed":
                break
        assert follow.poll() is None, follow.communicate()
        send_apply(harness.selfheal.app, a)
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, err
    events = seen + [json.loads(line)["event"] for line in out.splitlines()]
    assert "task.job.failed" in seen  # it followed on past the failure, to the revival's end
    assert events[-1] == "task.job.succeeded" and "task.control.recovery.ack" in events

    r = run(harness, [*SELFHEAL, "control", a, "resume_from_step", "--step", "s1", "--actor", "bob"])
    assert r.returncode == 0, r.stderr
    request_id = r.stdout.strip()
    assert len(request_id) == 32
    r = run(harness, [*SELFHEAL, "follow", a])
    assert r.returncode == 0, r.stderr
    assert "resumed from step 1 s1" in r.stdout

    r = run(harness, [*SELFHEAL, "status", a, "--json"])
    doc = json.loads(r.stdout)
    assert doc["status"] == "succeeded" and doc["pendingControl"] == [] and doc["epoch"] == 2
    trail = [(x["actor"], x["action"], x["outcome"]) for x in doc["audit"] if x["outcome"] != "rejected"]
    assert trail == [("alice", "retry_step", "requested"), ("alice", "retry_step", "acknowledged"),
                     ("bob", "resume_from_step", "requested"), ("bob", "resume_from_step", "acknowledged")]
    assert {x["requestId"] for x in doc["audit"] if x["actor"] == "bob"} == {request_id}
    assert req["requestId"] in {x["requestId"] for x in doc["audit"]}
    r = run(harness, [*SELFHEAL, "status", a])
    assert "bob resume_from_step s1 -> acknowledged" in r.stdout


def test_a_broadcast_to_two_workers_makes_one_request(harness: Harness, make_repo) -> None:
    """``celery control`` without ``-d`` reaches every worker: one handles it, the other reports that."""
    log2 = harness.tmp / "worker2.log"
    second = start_worker(harness.settings, log2, concurrency=1)
    try:
        # start_worker returns once *a* worker runs on this state dir: wait for this one
        wait_for(lambda: " ready." in log2.read_text(), "the second worker to be ready")
        a = harness.submit(harness.job_file(make_repo(), [{"id": "long", "instructions": "sleep 30"}]))
        wait_for(lambda: running_attempt(harness, a, 0), "the attempt to run")
        r = run(harness, [*CELERY, "control", "selfheal_recover", a, "takeover", "-", "one please", "ops",
                          "--json", "--timeout", "2"])
        assert r.returncode == 0, r.stderr
        replies = [v for node in last_json(r.stdout) for v in node.values()]
        assert len(replies) == 2, replies
        handled = [x for x in replies if not x.get("duplicate")]
        dup = [x for x in replies if x.get("duplicate")]
        assert len(handled) == 1 and len(dup) == 1, replies
        assert "error" not in handled[0] and "error" not in dup[0] and "ok" in dup[0], replies
        assert dup[0]["requestId"] == handled[0]["requestId"]
        assert dup[0]["handledBy"] == handled[0]["handledBy"]
        assert [c["requestId"] for c in harness.ctx.store.list_control(a)] == [handled[0]["requestId"]]
        wait_for(lambda: job(harness, a)["takeover"], "the takeover to be applied")
        recover(harness.selfheal, a, "cancel", actor="tester")
        wait_for(lambda: job(harness, a)["status"] == "cancelled", "the job to be cancelled")
        wait_for(lambda: harness.attempts(a)[0]["status"] == "cancelled", "the runtime to be ended")
    finally:
        # Its work is over (job cancelled, nothing queued): skip the multi-second warm shutdown.
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(10)
