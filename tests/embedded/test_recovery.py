"""Which pending steps lost their message (embedded recovery), against a real store."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

from celery_selfheal.cluster.leases import lease_key
from celery_selfheal.embedded.recovery import lost_steps, step_of
from tests.engine import Engine


def _later(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def test_a_quiet_pending_step_without_message_lease_or_attempt_is_lost(engine: Engine) -> None:
    job_id = engine.submit("true")
    jobs = lambda: [engine.job(job_id)]  # noqa: E731
    assert [(j["jobId"], i) for j, i in lost_steps(engine.ctx, jobs(), set(), now=_later(10))] == [(job_id, 0)]
    assert lost_steps(engine.ctx, jobs(), set(), now=_later(0.5)) == []  # not quiet yet
    assert lost_steps(engine.ctx, jobs(), {(job_id, 0, 0)}, now=_later(10)) == []  # its message waits
    assert engine.ctx.store.acquire_lease(lease_key(job_id), "someone", 30)
    assert lost_steps(engine.ctx, jobs(), set(), now=_later(10)) == []  # a worker holds it
    engine.ctx.store.release_lease(lease_key(job_id), "someone")
    engine.ctx.store.update_job(job_id, {"paused": True})
    assert lost_steps(engine.ctx, jobs(), set(), now=_later(10)) == []
    engine.ctx.store.update_job(job_id, {"paused": False})
    engine.run(job_id)  # it ran: succeeded, nothing pending
    assert lost_steps(engine.ctx, jobs(), set(), now=_later(10)) == []


def test_step_of_reads_a_celery_message_payload() -> None:
    body = base64.b64encode(json.dumps([[], {"job_id": "j1", "step_index": 2, "epoch": 1}, {}]).encode()).decode()
    payload = {"body": body, "headers": {"task": "selfheal.run_step"}, "properties": {"body_encoding": "base64"}}
    assert step_of(payload) == ("j1", 2, 1)
    assert step_of({**payload, "headers": {"task": "other"}}) is None
    assert step_of({**payload, "body": "%%%"}) is None
