"""The admission decision (run / stop / park a delivery) as a table, plus properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.admission import PAUSE_REASON, TAKEOVER_REASON, StepDelivery, Verdict, admit
from celery_selfheal.core.job_state import INITIAL, TERMINAL, JobState


def job(status: str = "running", *, epoch: int = 3, steps: tuple[str, ...] = ("succeeded", "running", "pending"),
        **flags: Any) -> JobState:
    return JobState.from_record({
        "jobId": "j1", "status": status, "epoch": epoch, "currentStep": 1,
        "steps": [{"stepId": f"s{i}", "stepIndex": i, "status": s} for i, s in enumerate(steps)], **flags})


def delivery(step: int = 1, *, epoch: int = 3, strategy: str = INITIAL, operator: bool = False) -> StepDelivery:
    return StepDelivery(job_id="j1", step_index=step, epoch=epoch, strategy=strategy, operator=operator)


TABLE = [
    # (job, delivery, verdict, reason fragment)
    (None, delivery(), Verdict.STOP, "unknown job j1"),
    (job(), delivery(epoch=2), Verdict.STOP, "stale epoch 2 (job at 3)"),
    (job("succeeded"), delivery(), Verdict.STOP, "job is succeeded"),
    (job("failed"), delivery(), Verdict.STOP, "job is failed"),
    (job("cancelled", paused=True), delivery(), Verdict.STOP, "job is cancelled"),
    (job(), delivery(0), Verdict.STOP, "already succeeded"),
    (job(), delivery(7), Verdict.STOP, "no step 7"),
    (job(), delivery(), Verdict.RUN, ""),
    (job("queued"), delivery(), Verdict.RUN, ""),
    (job("paused"), delivery(), Verdict.RUN, ""),  # a resumed, parked job
    (job(paused=True), delivery(), Verdict.PARK, PAUSE_REASON),
    (job(paused=True), delivery(operator=True), Verdict.PARK, PAUSE_REASON),  # pause wins over everything
    (job(takeover=True), delivery(strategy="soft_reset"), Verdict.PARK, TAKEOVER_REASON),
    (job(takeover=True), delivery(strategy="queue_retry"), Verdict.PARK, TAKEOVER_REASON),
    (job(takeover=True), delivery(), Verdict.RUN, ""),  # takeover stops recovery, not the next step
    (job(takeover=True), delivery(strategy="operator_request", operator=True), Verdict.RUN, ""),
]


@pytest.mark.parametrize(("state", "d", "verdict", "why"), TABLE)
def test_admission_table(state: JobState | None, d: StepDelivery, verdict: Verdict, why: str) -> None:
    got = admit(state, d)
    assert got.verdict is verdict
    assert why in got.reason


statuses = st.sampled_from(["queued", "running", "paused", "succeeded", "failed", "cancelled"])


@given(status=statuses, job_epoch=st.integers(0, 5), epoch=st.integers(0, 5), paused=st.booleans(),
       takeover=st.booleans(), step=st.integers(0, 2), strategy=st.sampled_from([INITIAL, "soft_reset"]),
       operator=st.booleans())
def test_admission_properties(status: str, job_epoch: int, epoch: int, paused: bool, takeover: bool,
                              step: int, strategy: str, operator: bool) -> None:
    state = job(status, epoch=job_epoch, paused=paused, takeover=takeover)
    got = admit(state, delivery(step, epoch=epoch, strategy=strategy, operator=operator))
    if status in TERMINAL or job_epoch != epoch or step == 0:
        assert got.verdict is Verdict.STOP  # nothing ever runs on an ended job, a stale epoch or a done step
    elif paused:
        assert got.verdict is Verdict.PARK
    if got.verdict is Verdict.RUN:
        assert not paused and (not takeover or strategy == INITIAL or operator)
