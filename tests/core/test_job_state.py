"""The typed job state reads and writes the stored camelCase record without losing a field."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.job_state import OUTCOME_FIELDS, TERMINAL, JobState, JobStatus, is_terminal

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3),
                           max_leaves=6)


@st.composite
def records(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    steps = [{"stepId": f"s{i}", "stepIndex": i, "title": draw(st.text(max_size=6)),
              "status": draw(st.sampled_from(["pending", "running", "retrying", "succeeded", "failed"])),
              "attempts": draw(st.integers(0, 9)), "round": draw(st.integers(0, 3))} for i in range(n)]
    extra = draw(st.dictionaries(st.sampled_from(["spec", "budgets", "repo", "baselineSha", "inflight",
                                                  "terminalReason", "finishedAt", "message"]), json_values))
    return {"jobId": "job-1", "status": draw(st.sampled_from([s.value for s in JobStatus])),
            "epoch": draw(st.integers(0, 9)), "currentStep": draw(st.integers(0, n - 1)),
            "paused": draw(st.booleans()), "takeover": draw(st.booleans()), "preempt": draw(st.booleans()),
            "parked": draw(st.none() | st.just({"stepIndex": 0, "strategy": "initial", "retryContext": None})),
            "resetsUsed": draw(st.integers(0, 3)), "queueRetriesUsed": draw(st.integers(0, 3)),
            "steps": steps, **extra}


@given(records())
def test_round_trip(rec: dict[str, Any]) -> None:
    state = JobState.from_record(rec)
    assert state.to_record() == rec
    assert JobState.from_record(state.to_record()) == state
    assert state.terminal == (rec["status"] in TERMINAL)
    for key, value in rec.items():
        if key != "steps":
            assert state.get(key) == value


def test_one_terminal_set() -> None:
    assert {s.value for s in JobStatus if is_terminal(s.value)} == {"succeeded", "failed", "cancelled"}
    assert "finishedAt" in OUTCOME_FIELDS
