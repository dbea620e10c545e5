"""The job record's typed state (pure): status enums, the one terminal set, and a frozen read of a record.

The store keeps a job as a camelCase JSON object (the public ``status --json`` shape is built from
it). `JobState.from_record` reads it once into typed fields; `JobState.to_record` writes the same
object back. Every *change* of a job's status goes through `celery_selfheal.jobs.transitions`.
Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from celery_selfheal.core.jobfile import JobSpec


class JobStatus(str, enum.Enum):
    """A job's status (DESIGN section 2)."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(str, enum.Enum):
    """One step's status in the job record."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptStatus(str, enum.Enum):
    """An attempt record's status."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: its worker died; recorded by the lost-worker sweeper
    LOST = "lost"
    CANCELLED = "cancelled"


#: the statuses a job ends in (a pending operator request may still revive it)
TERMINAL: frozenset[str] = frozenset({JobStatus.SUCCEEDED.value, JobStatus.FAILED.value,
                                      JobStatus.CANCELLED.value})
#: finished attempts the strategy controller reads as history (cancelled ones are not decisions)
DECIDED_ATTEMPTS: frozenset[str] = frozenset({AttemptStatus.SUCCEEDED.value, AttemptStatus.FAILED.value,
                                              AttemptStatus.LOST.value})
#: how a step's first attempt was started (the ``attemptStrategy`` of attempt records); events carry
#: no ``strategy`` for it, since the contract's strategies name recoveries
INITIAL = "initial"

#: the fields every terminal transition sets (and a rerun clears): one definition for both
OUTCOME_FIELDS = ("terminalReason", "finishedAt", "failureClass", "retryable", "failedStep", "message")
#: the fields of a parked (paused / taken-over) job
PARK_FIELDS = ("paused", "parked", "pausedReason", "preempt")


def is_terminal(status: str | None) -> bool:
    """True for succeeded, failed and cancelled."""
    return status in TERMINAL


@dataclass(frozen=True)
class StepState:
    """One entry of the record's ``steps`` list."""

    step_id: str
    step_index: int
    status: str
    attempts: int = 0
    round: int = 0
    #: the rest of the entry (title, epoch...), written back unchanged
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> StepState:
        """Read one ``steps`` entry."""
        known = {"stepId", "stepIndex", "status", "attempts", "round"}
        return cls(step_id=rec["stepId"], step_index=int(rec["stepIndex"]), status=rec.get("status", "pending"),
                   attempts=int(rec.get("attempts", 0)), round=int(rec.get("round", 0)),
                   extra={k: v for k, v in rec.items() if k not in known})

    def to_record(self) -> dict[str, Any]:
        """The same entry as stored."""
        return {"stepId": self.step_id, "stepIndex": self.step_index, **self.extra, "status": self.status,
                "attempts": self.attempts, "round": self.round}


_JOB_KEYS = {"jobId", "status", "epoch", "currentStep", "paused", "takeover", "preempt", "parked",
             "resetsUsed", "queueRetriesUsed", "steps"}


@dataclass(frozen=True)
class JobState:
    """A frozen read of one job record: what the engine decides on."""

    job_id: str
    status: str
    epoch: int
    current_step: int
    steps: tuple[StepState, ...]
    paused: bool = False
    takeover: bool = False
    preempt: bool = False
    #: where a paused job resumes: ``{"stepIndex", "strategy", "retryContext"}``
    parked: Mapping[str, Any] | None = None
    resets_used: int = 0
    queue_retries_used: int = 0
    #: every other field of the record (spec, budgets, repo, baselineSha, timestamps...), unchanged
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> JobState:
        """Read a stored job record."""
        return cls(job_id=rec["jobId"], status=rec["status"], epoch=int(rec.get("epoch", 0)),
                   current_step=int(rec.get("currentStep") or 0),
                   steps=tuple(StepState.from_record(s) for s in rec.get("steps", ())),
                   paused=bool(rec.get("paused")), takeover=bool(rec.get("takeover")),
                   preempt=bool(rec.get("preempt")), parked=rec.get("parked") or None,
                   resets_used=int(rec.get("resetsUsed", 0)), queue_retries_used=int(rec.get("queueRetriesUsed", 0)),
                   extra={k: v for k, v in rec.items() if k not in _JOB_KEYS})

    def to_record(self) -> dict[str, Any]:
        """The record as stored (camelCase JSON)."""
        return {"jobId": self.job_id, "status": self.status, "epoch": self.epoch, **self.extra,
                "currentStep": self.current_step, "paused": self.paused, "takeover": self.takeover,
                "preempt": self.preempt, "parked": dict(self.parked) if self.parked else None,
                "resetsUsed": self.resets_used, "queueRetriesUsed": self.queue_retries_used,
                "steps": [s.to_record() for s in self.steps]}

    @property
    def terminal(self) -> bool:
        """The job has ended (succeeded, failed or cancelled)."""
        return is_terminal(self.status)

    @cached_property
    def spec(self) -> JobSpec:
        """The job's (redacted) spec."""
        return JobSpec.from_dict(self.extra["spec"])

    def step_status(self, step_index: int) -> str:
        """The status of one step."""
        return self.steps[step_index].status

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the stored record by its camelCase name."""
        return self.to_record().get(key, default) if key in _JOB_KEYS else self.extra.get(key, default)
