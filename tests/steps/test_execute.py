"""One step execution in-process: admission, attempt, finish, against a real store and workspace."""

from __future__ import annotations

from celery_selfheal.core.job_state import TERMINAL, JobState
from celery_selfheal.jobs import transitions
from celery_selfheal.steps.outcome import OutcomeKind
from tests.engine import Engine


def test_success_of_the_last_step_ends_the_job(engine: Engine) -> None:
    job_id = engine.submit("echo done > out.txt")
    outcome = engine.run(job_id)
    assert outcome.kind is OutcomeKind.DONE
    job = engine.job(job_id)
    assert job["status"] == "succeeded" and job["finishedAt"] and job["terminalReason"] == "succeeded"
    assert job["steps"][0]["status"] == "succeeded" and job["steps"][0]["attempts"] == 1
    [cp] = engine.ctx.store.list_checkpoints(job_id)
    assert cp["changedFiles"] == ["out.txt"]
    assert engine.events(job_id) == ["task.job.started", "task.step.attempt.started", "task.step.attempt.finished",
                                     "task.job.succeeded"]
    assert engine.sent == []


def test_success_of_a_middle_step_moves_on(engine: Engine) -> None:
    job_id = engine.submit("true", "true")
    assert engine.run(job_id).kind is OutcomeKind.NEXT
    job = engine.job(job_id)
    assert job["status"] == "running" and job["currentStep"] == 1 and job.get("finishedAt") is None
    assert engine.run(job_id, 1, task_id="t-2").kind is OutcomeKind.DONE


def test_transient_failure_is_retried_with_an_envelope(engine: Engine) -> None:
    job_id = engine.submit("echo 'connection reset by peer'; exit 75")
    outcome = engine.run(job_id)
    assert outcome.kind is OutcomeKind.RETRY and outcome.strategy == "soft_reset"
    assert outcome.retry_context is not None and outcome.retry_context["attempt"] == 2
    assert outcome.extra["failureClass"] == "transient_runtime" and outcome.extra["detector"] == "exit"
    [attempt] = engine.ctx.store.list_attempts(job_id)
    assert attempt["status"] == "failed" and attempt["strategy"] == "soft_reset"
    assert engine.job(job_id)["steps"][0]["status"] == "retrying"
    started = [e for _, e in engine.ctx.store.list_events(job_id) if e["event"] == "task.step.attempt.started"]
    assert "strategy" not in started[0]  # a first attempt has no recovery strategy (contract enum)
    second = engine.run(job_id, strategy="soft_reset", retry_context=outcome.retry_context, task_id="t-2")
    assert second.kind is OutcomeKind.RETRY
    assert [a["attempt"] for a in engine.ctx.store.list_attempts(job_id)] == [1, 2]


def test_deterministic_failure_ends_the_job_with_finished_at(engine: Engine) -> None:
    job_id = engine.submit("echo 'permission denied'; exit 77")
    outcome = engine.run(job_id)
    assert outcome.kind is OutcomeKind.STOP
    job = engine.job(job_id)
    assert job["status"] == "failed" and job["finishedAt"]
    assert job["failureClass"] == job["terminalReason"] == "deterministic_policy"
    assert job["retryable"] is False and job["failedStep"] == 0
    assert "task.job.failed" in engine.events(job_id)


def test_stale_and_finished_deliveries_do_nothing(engine: Engine) -> None:
    job_id = engine.submit("true")
    assert engine.run(job_id, epoch=1).kind is OutcomeKind.STOP
    assert engine.ctx.store.list_attempts(job_id) == []
    engine.run(job_id)
    again = engine.run(job_id, task_id="t-dup")
    assert again.kind is OutcomeKind.STOP and "job is succeeded" in again.reason
    assert len(engine.ctx.store.list_attempts(job_id)) == 1


def test_a_paused_job_parks_without_an_attempt(engine: Engine) -> None:
    job_id = engine.submit("true")
    engine.ctx.store.update_job(job_id, {"paused": True})
    outcome = engine.run(job_id, strategy="soft_reset", retry_context={"attempt": 2})
    assert outcome.kind is OutcomeKind.STOP and outcome.reason == "paused"
    job = engine.job(job_id)
    assert job["status"] == "paused"
    assert job["parked"] == {"stepIndex": 0, "strategy": "soft_reset", "retryContext": {"attempt": 2}}
    assert engine.ctx.store.list_attempts(job_id) == []


def test_a_pending_request_is_applied_before_the_attempt(engine: Engine) -> None:
    from celery_selfheal.control.requests import request_control

    job_id = engine.submit("true")
    request_control(engine.ctx, job_id, "pause", actor="op", enqueue_apply=lambda _job_id: None)
    outcome = engine.run(job_id)
    assert outcome.kind is OutcomeKind.STOP and engine.job(job_id)["status"] == "paused"
    assert [a["outcome"] for a in engine.ctx.store.list_audit(job_id)] == ["requested", "acknowledged"]
    request_control(engine.ctx, job_id, "resume", actor="op", enqueue_apply=lambda _job_id: None)
    # this delivery applies the resume (the parked step is sent again) and, the job running again, runs
    assert engine.run(job_id, task_id="t-apply").kind is OutcomeKind.DONE
    assert engine.sent == [(job_id, 0, {"strategy": "initial", "retry_context": None, "operator": True})]
    # the re-sent message then finds the step done
    assert engine.run(job_id, task_id="t-resent", operator=True).kind is OutcomeKind.STOP


def test_every_terminal_status_has_finished_at(engine: Engine) -> None:
    from celery_selfheal.api import job_status

    ok = engine.submit("true")
    engine.run(ok)
    bad = engine.submit("exit 65")
    engine.run(bad)
    cancelled = engine.submit("true")
    assert transitions.cancel(engine.ctx, JobState.from_record(engine.job(cancelled)), {"actor": "op"})
    docs = {job_status(engine.ctx, j)["status"]: job_status(engine.ctx, j) for j in (ok, bad, cancelled)}
    assert set(docs) == set(TERMINAL)
    for doc in docs.values():
        assert doc["finishedAt"], doc
