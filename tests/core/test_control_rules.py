"""The operator-action matrix (action x job state x step) as a table, plus properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.control_rules import (
    ACTIONS,
    STATUSES,
    STEP_ACTIONS,
    check_action,
    step_index_of,
    validate,
)
from celery_selfheal.errors import ControlError, InputError

STEP_IDS = ("plan", "build", "ship")
#: (status, paused flag, takeover flag); every job is at step 1 ("build") unless it succeeded
STATES = {
    "queued": ("queued", False, False),
    "running": ("running", False, False),
    "pausing": ("running", True, False),          # pause applied, the next boundary parks
    "parked": ("paused", True, False),
    "parked_takeover": ("paused", False, True),   # parked by takeover after a failed attempt
    "takeover": ("running", False, True),
    "succeeded": ("succeeded", False, False),
    "failed": ("failed", False, False),
    "cancelled": ("cancelled", False, False),
}

# Expected outcome with no step named: an int is the target step, a string is a fragment of the error.
NO_STEP = {
    #                  pause               resume                takeover             cancel
    #                  retry_step          hard_reset_step       resume_from_step
    "queued": ("ok", "neither paused", "ok", "ok", "not started", "not started", "not started"),
    "running": ("ok", "neither paused", "ok", "ok", 1, 1, "needs a step"),
    "pausing": ("already paused", "ok", "ok", "ok", 1, 1, "needs a step"),
    "parked": ("already paused", "ok", "ok", "ok", 1, 1, "needs a step"),
    "parked_takeover": ("already paused", "ok", "already taken over", "ok", 1, 1, "needs a step"),
    "takeover": ("ok", "ok", "already taken over", "ok", 1, 1, "needs a step"),
    "succeeded": ("nothing to pause", "revive", "nothing to take over", "nothing to cancel", 2, 2,
                  "needs a step"),
    "failed": ("nothing to pause", "revive", "nothing to take over", "nothing to cancel", 1, 1,
               "needs a step"),
    "cancelled": ("cancelled",) * 7,
}

# Step actions with a named step: (state, action, step) -> outcome.
WITH_STEP = [
    ("running", "retry_step", 1, 1),
    ("running", "retry_step", 0, "only reruns the job's current step, step 'build'"),
    ("running", "retry_step", 2, "step 'ship' (index 2) has not been reached yet"),
    ("running", "hard_reset_step", 1, 1),
    ("running", "hard_reset_step", 0, "only reruns"),
    ("parked", "hard_reset_step", 1, 1),
    ("failed", "retry_step", 1, 1),
    ("failed", "retry_step", 2, "not been reached"),
    ("succeeded", "retry_step", 2, 2),
    ("succeeded", "retry_step", 1, "only reruns"),
    ("running", "resume_from_step", 0, 0),
    ("running", "resume_from_step", 1, 1),
    ("running", "resume_from_step", 2,
     "step 'ship' (index 2) has not been reached yet (the job is at step 'build'"),
    ("pausing", "resume_from_step", 0, 0),
    ("parked_takeover", "resume_from_step", 1, 1),
    ("failed", "resume_from_step", 0, 0),
    ("failed", "resume_from_step", 2, "not been reached"),
    ("succeeded", "resume_from_step", 0, 0),
    ("succeeded", "resume_from_step", 2, 2),
    ("queued", "resume_from_step", 0, "not started"),
    ("cancelled", "resume_from_step", 0, "cancelled"),
    ("cancelled", "retry_step", 1, "cancelled"),
    # job-level actions take no step
    ("running", "pause", 1, "takes no step"),
    ("parked", "resume", 1, "takes no step"),
    ("running", "takeover", 0, "takes no step"),
    ("running", "cancel", 1, "takes no step"),
]


def _run(state: str, action: str, step: int | None) -> int | str | None:
    status, paused, takeover = STATES[state]
    try:
        return validate(action, status=status, paused=paused, takeover=takeover, step_index=step,
                        current_step=1, step_count=3, failed_step=1 if status == "failed" else None,
                        step_ids=STEP_IDS)
    except ControlError as exc:
        return f"error: {exc}"


def _check(outcome: int | str | None, expected: int | str) -> None:
    if expected == "ok":
        assert outcome is None, outcome
    elif isinstance(expected, int):
        assert outcome == expected
    else:
        assert isinstance(outcome, str) and outcome.startswith("error: "), outcome
        assert expected in outcome, outcome
        assert "\n" not in outcome


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("index", range(len(ACTIONS)), ids=list(ACTIONS))
def test_matrix_without_step(state: str, index: int) -> None:
    _check(_run(state, ACTIONS[index], None), NO_STEP[state][index])


@pytest.mark.parametrize(("state", "action", "step", "expected"), WITH_STEP)
def test_matrix_with_step(state: str, action: str, step: int, expected: int | str) -> None:
    _check(_run(state, action, step), expected)


def test_the_table_covers_every_action_and_state() -> None:
    assert set(NO_STEP) == set(STATES)
    assert all(len(row) == len(ACTIONS) for row in NO_STEP.values())
    assert {s for s, *_ in STATES.values()} == set(STATUSES)


def test_unknown_action_names_the_valid_ones() -> None:
    with pytest.raises(ControlError, match=r"unknown action 'restart' \(use one of: pause, resume"):
        check_action("restart")
    assert _run("running", "restart", None) == (
        "error: unknown action 'restart' (use one of: pause, resume, takeover, cancel, retry_step, "
        "hard_reset_step, resume_from_step)")


def test_unknown_step_is_named() -> None:
    assert step_index_of("ship", STEP_IDS) == 2
    with pytest.raises(ControlError, match=r"unknown step 'deploy' \(this job's steps: plan, build, ship\)"):
        step_index_of("deploy", STEP_IDS)
    many = [f"s{i}" for i in range(30)]
    with pytest.raises(ControlError, match=r"s9, \.\.\.\)$"):
        step_index_of("x", many)


def test_control_error_is_an_input_error() -> None:
    # the CLI maps InputError to exit 2 with one line
    assert issubclass(ControlError, InputError)


@given(
    action=st.sampled_from(ACTIONS),
    status=st.sampled_from(STATUSES),
    paused=st.booleans(),
    takeover=st.booleans(),
    step_count=st.integers(1, 6),
    data=st.data(),
)
def test_properties(action: str, status: str, paused: bool, takeover: bool, step_count: int,
                    data: st.DataObject) -> None:
    current = data.draw(st.integers(0, step_count - 1))
    failed = data.draw(st.none() | st.integers(0, step_count - 1))
    step = data.draw(st.none() | st.integers(0, step_count - 1))
    try:
        target = validate(action, status=status, paused=paused, takeover=takeover, step_index=step,
                          current_step=current, step_count=step_count, failed_step=failed)
    except ControlError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert status != "cancelled"
    if action in STEP_ACTIONS:
        assert target is not None and 0 <= target < step_count
        assert status != "queued"
        if step is not None:
            assert target == step
        furthest = step_count - 1 if status == "succeeded" else (
            failed if status == "failed" and failed is not None else current)
        assert target <= furthest
    else:
        assert target is None and step is None
