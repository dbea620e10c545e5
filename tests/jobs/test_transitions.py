"""Every job status change in one module: one compare-and-set, one event, the same fields each time."""

from __future__ import annotations

from celery_selfheal.core.job_state import OUTCOME_FIELDS, JobState
from celery_selfheal.jobs import transitions
from tests.engine import Engine


def state(engine: Engine, job_id: str) -> JobState:
    return JobState.from_record(engine.job(job_id))


def test_terminal_transitions_set_every_outcome_field(engine: Engine) -> None:
    a, b, c = engine.submit("true"), engine.submit("true"), engine.submit("true")
    for job_id in (a, b):
        assert transitions.start(engine.ctx, state(engine, job_id))
    assert transitions.succeed(engine.ctx, a, 0, step_id="s0", step_index=0)
    assert transitions.fail(engine.ctx, b, 0, step_id="s0", step_index=0, failure_class="deterministic_repo",
                            reason="boom", retryable=False)
    assert transitions.cancel(engine.ctx, state(engine, c), {"actor": "op"})
    for job_id, status in ((a, "succeeded"), (b, "failed"), (c, "cancelled")):
        job = engine.job(job_id)
        assert job["status"] == status
        assert set(OUTCOME_FIELDS) <= set(job), (status, job)
        assert job["finishedAt"] and job["terminalReason"]


def test_each_transition_is_one_compare_and_set_and_one_event(engine: Engine) -> None:
    job_id = engine.submit("true")
    queued = state(engine, job_id)
    assert transitions.start(engine.ctx, queued)
    assert not transitions.start(engine.ctx, queued)  # the status it was read with is gone
    assert transitions.succeed(engine.ctx, job_id, 0, step_id="s0", step_index=0)
    assert not transitions.succeed(engine.ctx, job_id, 0, step_id="s0", step_index=0)
    assert not transitions.fail(engine.ctx, job_id, 0, step_id="s0", step_index=0, failure_class="x", reason="y",
                                retryable=True)
    assert engine.events(job_id) == ["task.job.started", "task.job.succeeded"]
    assert engine.job(job_id)["status"] == "succeeded"


def test_revive_clears_exactly_what_the_terminal_transitions_set(engine: Engine) -> None:
    job_id = engine.submit("true")
    transitions.start(engine.ctx, state(engine, job_id))
    transitions.fail(engine.ctx, job_id, 0, step_id="s0", step_index=0, failure_class="transient_runtime",
                     reason="exhausted", retryable=True)
    assert transitions.revive(engine.ctx, state(engine, job_id), 0)
    job = engine.job(job_id)
    assert job["status"] == "running" and job["epoch"] == 1 and job["currentStep"] == 0
    assert all(job[k] is None for k in OUTCOME_FIELDS), job
    assert not transitions.revive(engine.ctx, JobState.from_record({**job, "epoch": 0}), 0)  # stale read


def test_park_loses_to_a_concurrent_flag_change(engine: Engine) -> None:
    job_id = engine.submit("true")
    engine.ctx.store.update_job(job_id, {"paused": True})
    read = state(engine, job_id)
    engine.ctx.store.update_job(job_id, {"paused": False})  # a resume landed in between
    assert not transitions.park(engine.ctx, read, 0, "initial", None)
    assert transitions.park(engine.ctx, state(engine, job_id), 0, "initial", None)
    assert engine.job(job_id)["status"] == "paused"
