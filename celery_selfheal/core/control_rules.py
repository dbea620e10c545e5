"""Which operator action is allowed in which job state (REQ-09). Pure: no I/O, no Celery.

`validate` answers one question: may ``action`` be requested for a job in this state, and which step
does it target? It returns the target step index (``None`` for job-level actions) or raises
`ControlError` with one sentence an operator can act on. The matrix is documented in
``docs/controls.md`` and pinned by a table-driven test (``tests/core/test_control_rules.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from celery_selfheal.errors import ControlError

#: every operator action, in the order the CLI help lists them
ACTIONS: tuple[str, ...] = (
    "pause", "resume", "takeover", "cancel", "retry_step", "hard_reset_step", "resume_from_step",
)
#: actions that rerun a step (they revive failed and finished jobs)
STEP_ACTIONS = frozenset({"retry_step", "hard_reset_step", "resume_from_step"})
#: actions that stop the running attempt at once (its process group is ended)
PREEMPTING = frozenset({"cancel", "retry_step", "hard_reset_step", "resume_from_step"})
#: job statuses (DESIGN section 2)
STATUSES: tuple[str, ...] = ("queued", "running", "paused", "succeeded", "failed", "cancelled")
#: how many step ids an "unknown step" message lists before it abbreviates
_MAX_LISTED = 10


def check_action(action: str) -> str:
    """``action`` if it is one of `ACTIONS`, else `ControlError` naming the valid ones."""
    if action not in ACTIONS:
        raise ControlError(f"unknown action {action!r} (use one of: {', '.join(ACTIONS)})")
    return action


def step_index_of(step_id: str, step_ids: Sequence[str]) -> int:
    """The index of ``step_id`` among the job's steps, or `ControlError` naming it."""
    try:
        return list(step_ids).index(step_id)
    except ValueError:
        listed = ", ".join(step_ids[:_MAX_LISTED]) + (", ..." if len(step_ids) > _MAX_LISTED else "")
        raise ControlError(f"unknown step {step_id!r} (this job's steps: {listed})") from None


def _name(index: int, step_ids: Sequence[str]) -> str:
    if 0 <= index < len(step_ids):
        return f"step {step_ids[index]!r} (index {index})"
    return f"step index {index}"


def reached_step(*, status: str, current_step: int, step_count: int, failed_step: int | None) -> int:
    """The furthest step a job has reached: the failed step of a failed job, every step of a
    succeeded one, otherwise the current step (clamped to the job's steps)."""
    if status == "succeeded":
        return step_count - 1
    if status == "failed" and failed_step is not None:
        current_step = failed_step
    return max(0, min(current_step, step_count - 1))


def validate(
    action: str,
    *,
    status: str,
    paused: bool,
    takeover: bool,
    step_index: int | None,
    current_step: int,
    step_count: int,
    failed_step: int | None,
    step_ids: Sequence[str] = (),
) -> int | None:
    """The target step index of ``action`` (None for job-level actions), or `ControlError`.

    ``step_index`` is the step the operator named (None if they named none); ``current_step`` is the
    step the job is at (the parked step of a paused job); ``failed_step`` the step a failed job
    stopped at. ``step_ids`` only makes messages name steps by id.
    """
    check_action(action)
    if status not in STATUSES:
        raise ControlError(f"job has an unknown status {status!r}; no operator action applies")
    if status == "cancelled":
        raise ControlError(f"job is cancelled; {action} cannot apply to it "
                           "(only status, events and artifacts)")
    if action not in STEP_ACTIONS and step_index is not None:
        raise ControlError(f"{action} applies to the whole job and takes no step "
                           f"(a step is only for {', '.join(sorted(STEP_ACTIONS))})")
    if action not in STEP_ACTIONS:
        _check_job_action(action, status=status, paused=paused, takeover=takeover)
        return None
    if status == "queued":
        raise ControlError(f"job has not started yet; {action} needs a step the job has reached")
    reached = reached_step(status=status, current_step=current_step, step_count=step_count,
                           failed_step=failed_step)
    if action == "resume_from_step" and step_index is None:
        raise ControlError("resume_from_step needs a step (--step STEP_ID)")
    if step_index is not None and step_index > reached:
        raise ControlError(f"{_name(step_index, step_ids)} has not been reached yet "
                           f"(the job is at {_name(reached, step_ids)})")
    if action == "resume_from_step":
        return step_index
    # retry_step / hard_reset_step: the step the job is at (or failed at, or finished with)
    if step_index is not None and step_index != reached:
        raise ControlError(f"{action} only reruns the job's current step, {_name(reached, step_ids)}, "
                           f"not {_name(step_index, step_ids)} (resume_from_step goes back further)")
    return reached


def _check_job_action(action: str, *, status: str, paused: bool, takeover: bool) -> None:
    """pause / resume / takeover / cancel: `ControlError` unless valid in this state."""
    ended = status in ("succeeded", "failed")
    held = paused or status == "paused"
    if action == "pause":
        if ended:
            raise ControlError(f"job has already {status}; there is nothing to pause")
        if held:
            raise ControlError("job is already paused")
    elif action == "resume":
        if ended:
            raise ControlError(f"job has {status}; there is nothing to resume "
                               "(retry_step, hard_reset_step or resume_from_step revive it)")
        if not (held or takeover):
            raise ControlError("job is neither paused nor taken over; there is nothing to resume")
    elif action == "takeover":
        if ended:
            raise ControlError(f"job has already {status}; there is nothing to take over")
        if takeover:
            raise ControlError("job is already taken over")
    elif ended:  # cancel
        raise ControlError(f"job has already {status}; there is nothing to cancel")
