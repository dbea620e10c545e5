"""Shared vocabulary of the pure core: failure classes, detectors, strategies, decisions.

The string values are part of the public contract (events, artifacts, metrics tags): never
rename them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FailureClass(str, enum.Enum):
    """How a failed attempt is classified (REQ-03). Only the first two are retried."""

    TRANSIENT_RUNTIME = "transient_runtime"
    STUCK_NO_PROGRESS = "stuck_no_progress"
    DETERMINISTIC_CONTRACT = "deterministic_contract"
    DETERMINISTIC_POLICY = "deterministic_policy"
    DETERMINISTIC_REPO = "deterministic_repo"

    @property
    def retryable(self) -> bool:
        return self in (FailureClass.TRANSIENT_RUNTIME, FailureClass.STUCK_NO_PROGRESS)


class Detector(str, enum.Enum):
    """What noticed that an attempt failed."""

    WALL_TIMEOUT = "wall_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    NO_PROGRESS = "no_progress"
    OUTPUT_LOOP = "output_loop"
    EXIT = "exit"
    SIGNAL = "signal"
    WORKER_LOST = "worker_lost"


class Strategy(str, enum.Enum):
    """How the next attempt is started."""

    SOFT_RESET = "soft_reset"
    HARD_RESET = "hard_reset"
    QUEUE_RETRY = "queue_retry"
    OPERATOR_REQUEST = "operator_request"


class DecisionKind(str, enum.Enum):
    """What the strategy controller tells the attempt loop to do next."""

    DONE = "done"
    SOFT_RESET = "soft_reset"
    HARD_RESET = "hard_reset"
    QUEUE_RETRY = "queue_retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class AttemptOutcome:
    """One finished attempt as the controller sees it."""

    #: one-based attempt number within the step (never reset)
    attempt: int
    #: True when the runtime exited 0
    ok: bool
    #: classification of a failed attempt (None on success)
    failure_class: FailureClass | None = None
    #: sha256 of the normalized failure text (None on success)
    signature: str | None = None
    #: sha256 of the workspace change after the attempt
    diff_hash: str = ""
    #: what detected the failure
    detector: Detector | None = None
    #: recovery round the attempt belongs to (bumped by every hard reset / queue retry / operator retry)
    round: int = 0


@dataclass(frozen=True)
class Decision:
    """The controller's answer: what to do after an attempt."""

    kind: DecisionKind
    #: strategy of the *next* attempt (None for DONE / GIVE_UP)
    strategy: Strategy | None = None
    #: seconds to wait before the next attempt
    countdown: float = 0.0
    #: human-readable why, shown in Flower and the CLI
    reason: str = ""
    #: class of the attempt that led here (possibly upgraded to stuck_no_progress)
    failure_class: FailureClass | None = None
    #: detector of the attempt (possibly upgraded to no_progress)
    detector: Detector | None = None
    #: for GIVE_UP: True when the failure was retryable but budgets are exhausted
    retryable: bool = False
    extra: dict[str, object] = field(default_factory=dict)
