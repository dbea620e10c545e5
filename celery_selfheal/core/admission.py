"""Should this step-task delivery run an attempt, stop (why) or park the job (why)?

A pure function of the job's state and the delivery, decided before anything else happens in a
step execution; the step execution (`celery_selfheal.steps.execute`) then only does what it says.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery_selfheal.core.job_state import INITIAL, JobState, StepStatus

TAKEOVER_REASON = "takeover: waiting for an operator action"
PAUSE_REASON = "paused"


class Verdict(str, enum.Enum):
    """What the step execution does with a delivery."""

    RUN = "run"    # run one attempt
    STOP = "stop"  # do nothing (stale, finished, duplicate): the rest of the chain must not run
    PARK = "park"  # pause the job here without holding a worker slot; resume re-sends this step


@dataclass(frozen=True)
class StepDelivery:
    """One step-task message: which step, at which epoch, how it was started."""

    job_id: str
    step_index: int
    epoch: int
    #: how the attempt starts: `INITIAL` or a Strategy value
    strategy: str = INITIAL
    retry_context: Mapping[str, Any] | None = None
    #: sent by an operator's request (a takeover does not park it)
    operator: bool = False


@dataclass(frozen=True)
class Admission:
    """The verdict and why."""

    verdict: Verdict
    reason: str = ""


def admit(job: JobState | None, delivery: StepDelivery) -> Admission:
    """Decide what ``delivery`` does given the job as stored now."""
    if job is None:
        return Admission(Verdict.STOP, f"unknown job {delivery.job_id}")
    if job.epoch != delivery.epoch:
        return Admission(Verdict.STOP, f"stale epoch {delivery.epoch} (job at {job.epoch})")
    if job.terminal:
        return Admission(Verdict.STOP, f"job is {job.status}")
    if not 0 <= delivery.step_index < len(job.steps):
        return Admission(Verdict.STOP, f"no step {delivery.step_index} in a job of {len(job.steps)} steps")
    if job.step_status(delivery.step_index) == StepStatus.SUCCEEDED.value:
        # a duplicate delivery of a finished step (operator reruns reset the step's status first)
        return Admission(Verdict.STOP, "step already succeeded in this epoch")
    if job.paused:
        return Admission(Verdict.PARK, PAUSE_REASON)
    if job.takeover and delivery.strategy != INITIAL and not delivery.operator:
        # an automatic retry under takeover waits for the operator; first attempts and operator
        # requests run (takeover stops recovery, not the job)
        return Admission(Verdict.PARK, TAKEOVER_REASON)
    return Admission(Verdict.RUN)
