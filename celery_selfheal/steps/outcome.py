"""What a step-task execution tells the Celery layer: continue, retry, stop (and the limits).

Celery-free: `wiring.tasks` turns a `StepOutcome` into "let the chain continue", ``Task.retry`` or
"stop the chain".
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_selfheal.core.budgets import Budgets
from celery_selfheal.core.model import Strategy

#: ``enqueue(job, step_index, countdown=0.0, **first_kwargs) -> first task id``
Enqueue = Callable[..., str]


class OutcomeKind(str, enum.Enum):
    """What the Celery layer does after a step-task execution."""

    NEXT = "next"      # step succeeded: let the chain continue
    DONE = "done"      # job succeeded
    RETRY = "retry"    # run the step again (Task.retry)
    STOP = "stop"      # stop the chain: stale, cancelled, parked, failed


@dataclass(frozen=True)
class StepOutcome:
    """The result of one execution, for the Celery layer."""

    kind: OutcomeKind
    step_index: int
    reason: str = ""
    countdown: float = 0.0
    strategy: str | None = None
    retry_context: Mapping[str, Any] | None = None
    budgets: Budgets | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the attempt was stopped by a cancel, a new epoch or an operator's preempting request
    preempted: bool = False

    @classmethod
    def stop(cls, step_index: int, reason: str) -> StepOutcome:
        """Stop the chain: stale, cancelled, parked, failed or a duplicate."""
        return cls(OutcomeKind.STOP, step_index, reason=reason)

    @property
    def same_worker(self) -> bool:
        """Soft resets stay on the worker that has the workspace."""
        return self.strategy == Strategy.SOFT_RESET.value


def time_limits(budgets: Budgets) -> tuple[float, float]:
    """Celery (soft, hard) limits backing up the in-process watchdogs, with room for the kill grace,
    workspace preparation and the checkpoint."""
    soft = budgets.step_timeout_seconds + budgets.kill_grace_seconds + 15.0
    return soft, soft + 15.0
