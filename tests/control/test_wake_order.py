"""A preempting request wakes the running attempt only once it is audited and announced: the woken
attempt's applier acknowledges at once, and its ack must never come first in the audit trail or the
event stream (seen once as `acknowledged` before `requested` with the push)."""

from __future__ import annotations

from typing import Any

import pytest

from celery_selfheal.control.requests import request_control
from tests.engine import Engine


@pytest.mark.parametrize("action", ["cancel", "retry_step"])
def test_the_wake_up_comes_after_the_audit_and_the_event(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                         action: str) -> None:
    job_id = engine.submit("true", "true")
    engine.run(job_id, 0)
    store = engine.ctx.store
    seen: list[dict[str, Any]] = []

    def wake(woken: str) -> None:
        seen.append({"audit": [a["outcome"] for a in store.list_audit(woken)],
                     "events": [e["event"] for _, e in store.list_events(woken)]})

    monkeypatch.setattr(store, "wake", wake)
    request_control(engine.ctx, job_id, action, step="s1" if action == "retry_step" else None, actor="op",
                    enqueue_apply=lambda _job_id: None)
    assert len(seen) == 1, seen
    assert seen[0]["audit"][-1] == "requested"
    assert seen[0]["events"][-1] == "task.control.recovery.requested"
