"""A pending pause survives an operator rerun (retry_step): the rerun's first attempt parks at once
and the rerun's audit record says the pause stays."""

from __future__ import annotations

from celery_selfheal.control.apply import apply_pending_controls
from celery_selfheal.control.requests import request_control
from celery_selfheal.steps.outcome import OutcomeKind
from tests.engine import Engine


def _request(engine: Engine, job_id: str, action: str, step: str | None = None) -> None:
    request_control(engine.ctx, job_id, action, step=step, actor="op", enqueue_apply=lambda _job_id: None)
    apply_pending_controls(engine.ctx, job_id, enqueue=engine.enqueue)


def test_retry_step_keeps_an_acknowledged_pause(engine: Engine) -> None:
    job_id = engine.submit("true", "true")
    engine.run(job_id, 0)
    assert engine.job(job_id)["currentStep"] == 1 and engine.job(job_id)["status"] == "running"
    _request(engine, job_id, "pause")
    assert engine.job(job_id)["paused"] is True  # acknowledged, not yet parked (step 1 not started)
    _request(engine, job_id, "retry_step", step="s1")
    job = engine.job(job_id)
    assert job["epoch"] == 1 and job["paused"] is True, job
    rerun = [a for a in engine.ctx.store.list_audit(job_id) if a["action"] == "retry_step"]
    assert rerun[-1]["outcome"] == "acknowledged" and rerun[-1]["pauseKept"] is True
    assert "the pause stays" in rerun[-1]["effect"]
    # the rerun's message parks instead of running: no attempt of the new epoch
    sent = [s for s in engine.sent if s[1] == 1 and s[2].get("operator")]
    assert sent, engine.sent
    outcome = engine.run(job_id, 1, epoch=1, task_id="t-rerun", operator=True, strategy=sent[-1][2]["strategy"])
    assert outcome.kind is OutcomeKind.STOP and outcome.reason == "paused"
    assert engine.job(job_id)["status"] == "paused"
    assert [a for a in engine.ctx.store.list_attempts(job_id) if a.get("epoch") == 1] == []
    # resume then runs the step again
    _request(engine, job_id, "resume")
    assert engine.job(job_id)["status"] == "running" and not engine.job(job_id)["paused"]
