"""Operator recovery actions (issue 4) against a real prefork worker (concurrency 2), real git repos
and the scripted runtime: pause/resume, cancel, takeover + hard_reset_step, retry_step and
resume_from_step reviving jobs, rejections that change nothing, and the audit/ack trail of each."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.api import job_status
from celery_selfheal.context import build_context
from celery_selfheal.control.apply import apply_pending_controls
from celery_selfheal.control.remote import recover
from celery_selfheal.control.requests import request_control
from celery_selfheal.errors import ControlError
from celery_selfheal.settings import load_settings
from tests.conftest import process_alive, wait_for
from tests.integration.conftest import Harness, names

pytestmark = pytest.mark.slow
ACTOR = "tester"




def ctl(h: Harness, job_id: str, action: str, **kw: Any) -> dict[str, Any]:
    return recover(h.selfheal, job_id, action, actor=ACTOR, **kw)


def job(h: Harness, job_id: str) -> dict[str, Any]:
    return dict(h.ctx.store.get_job(job_id))


def running_attempt(h: Harness, job_id: str, step_index: int) -> dict[str, Any] | None:
    return next((a for a in h.attempts(job_id)
                 if a["stepIndex"] == step_index and a["status"] == "running" and a.get("pid")), None)


def attempts_per_step(h: Harness, job_id: str, steps: int) -> list[list[str]]:
    return [[a["status"] for a in h.attempts(job_id) if a["stepIndex"] == i] for i in range(steps)]


def wait_revived(h: Harness, job_id: str, old_epoch: int) -> dict[str, Any]:
    """Wait for the operator's rerun to be applied (new epoch), then for the job to end."""
    wait_for(lambda: job(h, job_id)["epoch"] > old_epoch, "the rerun to be applied")
    return h.wait(job_id)


def assert_acked(h: Harness, job_id: str, req: dict[str, Any], reason: str | None = None) -> None:
    """The request was audited (requested, then acknowledged by a worker) and acked by an event."""
    audit = [a for a in h.ctx.store.list_audit(job_id) if a.get("requestId") == req["requestId"]]
    assert [a["outcome"] for a in audit] == ["requested", "acknowledged"], audit
    for rec in audit:
        assert rec["action"] == req["action"] and rec["actor"] == ACTOR and rec["at"]
        assert rec["reason"] == reason
    acks = [e for e in h.events(job_id) if e["event"] == "task.control.recovery.ack"
            and e.get("requestId") == req["requestId"]]
    assert len(acks) == 1 and acks[0]["action"] == req["action"] and acks[0]["actor"] == ACTOR
    assert req["requestId"] in {e.get("requestId") for e in h.events(job_id)
                                if e["event"] == "task.control.recovery.requested"}
    assert not h.ctx.store.pending_control(job_id)


def test_pause_parks_between_steps_without_a_slot_and_resume_finishes(harness: Harness, make_repo) -> None:
    repo = make_repo()
    a = harness.submit(harness.job_file(repo, [
        {"id": "first", "instructions": "sleep 1.2\nwrite one.txt: 1"},
        {"id": "second", "instructions": "write two.txt: 2"},
        {"id": "third", "instructions": "write three.txt: 3"}]))
    wait_for(lambda: running_attempt(harness, a, 0), "step 0 to run")
    # No apply task sent: the request waits, visible on the job, until the next step task honours it.
    pause = request_control(harness.ctx, a, "pause", actor=ACTOR, reason="check step one",
                            enqueue_apply=lambda _job: None)
    assert [r["requestId"] for r in job_status(harness.ctx, a)["pendingControl"]] == [pause["requestId"]]
    wait_for(lambda: job(harness, a)["status"] == "paused", "the job to park")
    parked = job(harness, a)
    assert parked["parked"]["stepIndex"] == 1 and parked["paused"] is True
    assert_acked(harness, a, pause, "check step one")

    # Both slots are free while A is parked: two other jobs run at the same time.
    others = [harness.submit(harness.job_file(make_repo(f"other{i}"), [
        {"id": "only", "instructions": f"sleep 1\nwrite o{i}.txt: o"}])) for i in range(2)]
    runs = [harness.wait(o) and harness.attempts(o)[0] for o in others]
    assert all(r["status"] == "succeeded" for r in runs)
    assert runs[0]["startedAt"] < runs[1]["finishedAt"] and runs[1]["startedAt"] < runs[0]["finishedAt"]
    assert job(harness, a)["status"] == "paused"
    assert attempts_per_step(harness, a, 3) == [["succeeded"], [], []]

    resume = ctl(harness, a, "resume")
    assert harness.wait(a)["status"] == "succeeded"
    assert attempts_per_step(harness, a, 3) == [["succeeded"]] * 3
    assert_acked(harness, a, resume)
    assert job(harness, a)["paused"] is False and job(harness, a)["parked"] is None


def test_cancel_ends_the_whole_process_tree_and_the_job_quickly(harness: Harness, make_repo) -> None:
    pidfile = harness.tmp / f"gc-{time.time_ns()}.pid"
    a = harness.submit(harness.job_file(make_repo(), [
        {"id": "hang", "instructions": f"grandchild-hang {pidfile}"}], kill_grace_seconds=0.5))
    attempt = wait_for(lambda: pidfile.exists() and pidfile.read_text() and running_attempt(harness, a, 0),
                       "the runtime and its grandchild")
    leader, grandchild = attempt["pid"], int(pidfile.read_text())
    assert process_alive(leader) and process_alive(grandchild)
    started = time.monotonic()
    req = ctl(harness, a, "cancel", reason="wrong branch")
    wait_for(lambda: job(harness, a)["status"] == "cancelled", "the job to be cancelled", timeout=10)
    job_ended = time.monotonic() - started
    wait_for(lambda: not process_alive(leader) and not process_alive(grandchild), "the process tree to end", timeout=10)
    tree_ended = time.monotonic() - started
    wait_for(lambda: harness.attempts(a)[0]["status"] == "cancelled", "the attempt to be recorded")
    print(f"\ncancel: job cancelled after {job_ended:.2f}s, process tree gone after {tree_ended:.2f}s "
          f"(kill grace 0.5s, preempt poll 0.25s)")
    # the grandchild ignores SIGTERM: TERM, the 0.5 s grace, then KILL of the group (the figures:
    # bench/bench_cancel.py); here only that it all ends, within the waits' deadlines
    assert_acked(harness, a, req, "wrong branch")
    evs = names(harness.events(a))
    assert "task.job.cancelled" in evs and "task.job.failed" not in evs
    final = job(harness, a)
    assert final["terminalReason"] == "cancelled" and not final.get("preempt")
    with pytest.raises(ControlError, match="job is cancelled"):
        ctl(harness, a, "retry_step")


def test_takeover_parks_instead_of_retrying_then_hard_reset_step(harness: Harness, make_repo) -> None:
    a = harness.submit(harness.job_file(make_repo(), [
        {"id": "fix", "instructions": "sleep@1 1\nfail-unless-hard-reset\nwrite fixed.txt: ok"}],
        soft_reset_backoff_seconds=0.2))
    wait_for(lambda: running_attempt(harness, a, 0), "attempt 1")
    take = ctl(harness, a, "takeover", reason="I will drive")
    wait_for(lambda: job(harness, a)["status"] == "paused", "the job to wait for the operator")
    time.sleep(0.6)  # longer than the soft-reset backoff: no automatic retry may start
    assert [x["status"] for x in harness.attempts(a)] == ["failed"]
    parked = job(harness, a)
    assert parked["takeover"] is True and parked["parked"]["stepIndex"] == 0
    assert parked["pausedReason"].startswith("takeover")
    assert_acked(harness, a, take, "I will drive")

    reset = ctl(harness, a, "hard_reset_step", reason="rebuild it")
    assert reset["stepId"] == "fix" and reset["stepIndex"] == 0
    final = wait_revived(harness, a, parked["epoch"])
    assert final["status"] == "succeeded", final
    first, second = harness.attempts(a)
    assert first["status"] == "failed" and first["attemptStrategy"] == "initial"
    assert second["attemptStrategy"] == "hard_reset" and second["epoch"] == parked["epoch"] + 1
    # the runtime got the envelope with strategy hard_reset (fail-unless-hard-reset passed on it)
    doc = json.loads(harness.ctx.artifacts(a).attempt_state_path(0, 2).read_text())
    assert doc["retryContext"]["strategy"] == "hard_reset"
    assert final["resetsUsed"] == 0  # an operator's reset does not spend job_self_heal_max_resets
    assert_acked(harness, a, reset, "rebuild it")


def test_retry_step_revives_a_failed_job(harness: Harness, make_repo) -> None:
    a = harness.submit(harness.job_file(make_repo(), [
        {"id": "prep", "instructions": "write prep.txt: p"},
        {"id": "apply", "instructions": "fail@1 65 schema validation failed\nwrite applied.txt: a"}]))
    failed = harness.wait(a)
    assert failed["status"] == "failed" and failed["failedStep"] == 1
    req = ctl(harness, a, "retry_step", reason="schema fixed")
    assert req["stepId"] == "apply"  # defaults to the failed step
    final = wait_revived(harness, a, failed["epoch"])
    assert final["status"] == "succeeded" and final["terminalReason"] == "succeeded"
    assert attempts_per_step(harness, a, 2) == [["succeeded"], ["failed", "succeeded"]]
    second = harness.attempts(a)[-1]
    assert second["attemptStrategy"] == "operator_request"
    doc = harness.ctx.artifacts(a).attempt_state_path(1, 2).read_text()
    assert '"deterministic_contract"' in doc and '"operator_request"' in doc  # the retry envelope
    assert_acked(harness, a, req, "schema fixed")


def test_retry_step_preempts_a_running_attempt(harness: Harness, make_repo) -> None:
    a = harness.submit(harness.job_file(make_repo(), [
        {"id": "slow", "instructions": "sleep@1 30\nwrite done.txt: done"}]))
    first = wait_for(lambda: running_attempt(harness, a, 0), "attempt 1")
    req = ctl(harness, a, "retry_step", step="slow")
    final = wait_revived(harness, a, 0)
    assert final["status"] == "succeeded" and final["epoch"] == 1
    old, new = harness.attempts(a)
    assert old["status"] == "cancelled" and old["epoch"] == 0 and not process_alive(first["pid"])
    assert new["status"] == "succeeded" and new["attemptStrategy"] == "operator_request"
    assert new["startedAt"] >= old["finishedAt"]  # the new runtime never shared the workspace
    assert_acked(harness, a, req)


def test_resume_from_step_revives_a_failed_job(harness: Harness, make_repo) -> None:
    a = harness.submit(harness.job_file(make_repo(), [
        {"id": "s0", "instructions": "write a.txt: a"},
        {"id": "s1", "instructions": "write b.txt: b"},
        {"id": "s2", "instructions": "fail@1 77 permission denied\nwrite c.txt: c"}]))
    failed = harness.wait(a)
    assert failed["status"] == "failed" and failed["failedStep"] == 2
    req = ctl(harness, a, "resume_from_step", step="s1")
    final = wait_revived(harness, a, failed["epoch"])
    assert final["status"] == "succeeded"
    assert attempts_per_step(harness, a, 3) == [["succeeded"], ["succeeded"] * 2, ["failed", "succeeded"]]
    assert_acked(harness, a, req)


def test_resume_from_step_of_a_finished_job_redoes_exactly_the_later_steps(harness: Harness,
                                                                           make_repo) -> None:
    a = harness.submit(harness.job_file(make_repo(), [
        {"id": "a", "instructions": "write a.txt: a"},
        {"id": "b", "instructions": "write b.txt: b"},
        {"id": "c", "instructions": "write c.txt: c"}]))
    done = harness.wait(a)
    assert done["status"] == "succeeded"
    before = harness.ctx.store.list_checkpoints(a)
    req = ctl(harness, a, "resume_from_step", step="b", reason="redo b and c")
    final = wait_revived(harness, a, done["epoch"])
    assert final["status"] == "succeeded"
    assert attempts_per_step(harness, a, 3) == [["succeeded"], ["succeeded"] * 2, ["succeeded"] * 2]
    resumed = [e for e in harness.events(a) if e["event"] == "task.resume.from_step"]
    assert len(resumed) == 1
    assert resumed[0]["stepId"] == "b" and resumed[0]["stepIndex"] == 1 and resumed[0]["epoch"] == 1
    assert resumed[0]["replayedDiffHashes"] == [before[0]["diffHash"]]
    active = harness.ctx.store.list_checkpoints(a)
    assert [c["epoch"] for c in active] == [0, 1, 1]
    history = harness.ctx.store.list_checkpoints(a, include_superseded=True)
    assert len(history) == 5 and sum(1 for c in history if c.get("superseded")) == 2
    assert_acked(harness, a, req, "redo b and c")


def test_rejected_requests_change_nothing_but_the_audit(harness: Harness, make_repo) -> None:
    a = harness.submit(harness.job_file(make_repo(), [
        {"id": "one", "instructions": "write one.txt: 1"},
        {"id": "two", "instructions": "fail 65 bad input"},
        {"id": "three", "instructions": "write three.txt: 3"}]))
    assert harness.wait(a)["status"] == "failed"
    before = job(harness, a)
    cases = [
        ("resume", None, "job has failed; there is nothing to resume"),
        ("pause", None, "nothing to pause"),
        ("cancel", None, "nothing to cancel"),
        ("retry_step", "nope", "unknown step 'nope' (this job's steps: one, two, three)"),
        ("resume_from_step", "three", "step 'three' (index 2) has not been reached yet"),
        ("retry_step", "one", "only reruns the job's current step"),
        ("resume_from_step", None, "needs a step"),
        ("explode", None, "unknown action 'explode'"),
    ]
    for action, step, message in cases:
        with pytest.raises(ControlError) as err:
            ctl(harness, a, action, step=step, reason="why not")
        assert message in str(err.value) and "\n" not in str(err.value)
    assert job(harness, a) == before
    assert harness.ctx.store.list_control(a) == []
    audit = harness.ctx.store.list_audit(a)
    assert [(r["action"], r["outcome"]) for r in audit] == [(c[0], "rejected") for c in cases]
    assert all(r["why"] and r["actor"] == ACTOR and r["reason"] == "why not" for r in audit)
    assert names(harness.events(a)).count("task.control.recovery.rejected") == len(cases)
    with pytest.raises(ControlError, match="unknown job 'job-nope'"):
        ctl(harness, "job-nope", "cancel")
    assert harness.ctx.store.list_audit("job-nope") == []


# -- applying without Celery: concurrency and late rejection, on both real store backends --------

@pytest.fixture(params=["sqlite", "redis"])
def store_ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    settings = load_settings(state_dir=tmp_path / "state", store_url=url, env={})
    settings.ensure_dirs()
    return build_context(settings, sinks=[])


def _stored_job(ctx: Any, status: str, **extra: Any) -> str:
    job_id = f"job-{time.time_ns()}"
    steps = [{"stepId": "a", "stepIndex": 0, "status": "succeeded", "round": 0},
             {"stepId": "b", "stepIndex": 1, "status": "failed" if status == "failed" else "running",
              "round": 0}]
    ctx.store.create_job({"jobId": job_id, "status": status, "epoch": 0, "steps": steps, "currentStep": 1,
                          "paused": False, "takeover": False, "parked": None, **extra})
    return job_id


def test_concurrent_appliers_apply_each_request_once_in_order(store_ctx: Any) -> None:
    job_id = _stored_job(store_ctx, "failed", failedStep=1)
    asked = [("retry_step", None), ("hard_reset_step", None), ("resume_from_step", "a")]
    reqs = [request_control(store_ctx, job_id, action, step=step, actor=ACTOR, enqueue_apply=lambda _j: None)
            for action, step in asked]
    sent: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    busy = [0, 0]  # appliers inside enqueue now, most at once

    def enqueue(job: dict[str, Any], step_index: int, **kw: Any) -> str:
        with lock:
            busy[0] += 1
            busy[1] = max(busy)
            sent.append((job["epoch"], step_index, kw["strategy"]))
        time.sleep(0.05)  # a slow broker: appliers that did not take turns would overlap here
        with lock:
            busy[0] -= 1
        return "task-id"

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: apply_pending_controls(store_ctx, job_id, enqueue=enqueue),
                                range(4)))
    assert sorted(r["requestId"] for batch in results for r in batch) == sorted(r["requestId"] for r in reqs)
    assert sent == [(1, 1, "operator_request"), (2, 1, "hard_reset"), (3, 0, "hard_reset")]
    assert busy[1] == 1
    final = store_ctx.store.get_job(job_id)
    assert final["epoch"] == 3 and final["status"] == "running" and final["currentStep"] == 0
    assert not final["preempt"] and not store_ctx.store.pending_control(job_id)
    outcomes = [(a["requestId"], a["outcome"]) for a in store_ctx.store.list_audit(job_id)]
    assert [o for o in outcomes if o[1] == "acknowledged"] == [(r["requestId"], "acknowledged") for r in reqs]


def test_a_request_that_no_longer_applies_is_rejected_when_applied(store_ctx: Any) -> None:
    job_id = _stored_job(store_ctx, "running")
    req = request_control(store_ctx, job_id, "cancel", actor=ACTOR, enqueue_apply=lambda _j: None)
    assert store_ctx.store.get_job(job_id)["preempt"] is True  # the running attempt stops at once
    store_ctx.store.update_job(job_id, {"status": "succeeded"})  # it finished before the worker applied
    assert apply_pending_controls(store_ctx, job_id, enqueue=lambda *a, **k: "x") == []
    final = store_ctx.store.get_job(job_id)
    assert final["status"] == "succeeded" and final["preempt"] is False
    (resolved,) = store_ctx.store.list_control(job_id)
    assert resolved["state"] == "rejected" and "nothing to cancel" in resolved["why"]
    audit = store_ctx.store.list_audit(job_id)
    assert [(a["requestId"], a["outcome"]) for a in audit] == [(req["requestId"], "requested"),
                                                               (req["requestId"], "rejected")]
    assert audit[-1]["why"].startswith("no longer applies: ")
