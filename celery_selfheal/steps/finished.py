"""The one record of a finished attempt, built once, rendered three ways.

`FinishedAttempt` holds what happened (the supervisor's result and the change), what it means
(class, signature, detector) and what the controller decided. The stored attempt record, the event
fields and the Flower retry reason are all rendered from it, so they cannot disagree. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery_selfheal.core.classify import Classifier, FailureFacts, classify
from celery_selfheal.core.envelope import attempt_summary, summarize_failure
from celery_selfheal.core.model import Decision, DecisionKind, Detector, FailureClass
from celery_selfheal.core.signature import failure_signature
from celery_selfheal.runtime.supervisor import RuntimeResult
from celery_selfheal.steps.attempt import AttemptPlan
from celery_selfheal.workspace.git import Change

#: why a runtime that never started never will (the supervisor's "cannot start runtime" reasons)
_NEVER_STARTS = ("No such file or directory", "Exec format error", "Not a directory", "empty command")


@dataclass(frozen=True)
class FinishedAttempt:
    """One finished (not cancelled) attempt and the controller's decision about it."""

    plan: AttemptPlan
    result: RuntimeResult
    change: Change
    finished_at: str
    #: the scrubbed tail of the output, as the failure summary
    summary: str
    decision: Decision
    ok: bool = False
    failure_class: FailureClass | None = None
    signature: str | None = None

    @property
    def detector(self) -> Detector:
        """What ended the attempt, as decided (a refused secret turns an exit 0 into a failure)."""
        return self.decision.detector or self.result.detector

    @property
    def outcome_class(self) -> FailureClass:
        """The failure class the records carry (the decision's, else the classifier's)."""
        return self.decision.failure_class or self.failure_class or FailureClass.TRANSIENT_RUNTIME

    @property
    def next_strategy(self) -> str | None:
        """The strategy of the next attempt, if there is one."""
        return self.decision.strategy.value if self.decision.strategy else None

    def timings(self) -> dict[str, Any]:
        """Wall-clock and idle seconds (rounded as stored)."""
        r = self.result
        return {"wallClockSeconds": round(r.wall_seconds, 3), "idleSeconds": round(r.idle_seconds, 3)}

    def record_fields(self, status: str) -> dict[str, Any]:
        """What the stored attempt record gets when it leaves ``running``."""
        r, change = self.result, self.change
        fields: dict[str, Any] = {
            "status": status, "exitCode": r.exit_code, "signal": r.signal, **self.timings(),
            "diffHash": change.diff_hash, "changedFiles": list(change.changed_files), "treeAfter": change.tree or None,
            "finishedAt": self.finished_at,
            "detectionLagSeconds": None if r.detection_lag is None else round(r.detection_lag, 4),
        }
        if self.ok:
            fields["decision"] = {"kind": "done"}
        else:
            d = self.decision
            fields.update({"failureClass": self.outcome_class.value, "failureSignature": self.signature or "",
                           "detector": self.detector.value, "strategy": self.next_strategy,
                           "decision": {"kind": d.kind.value, "reason": d.reason, "countdown": d.countdown}})
        return fields

    def event_fields(self) -> dict[str, Any]:
        """The fields every event about this attempt carries."""
        p = self.plan
        return {"epoch": p.epoch, "stepId": p.step.id, "stepIndex": p.step.index, "attempt": p.attempt,
                "attemptStrategy": p.recovery_strategy, "diffHash": self.change.diff_hash, **self.timings()}

    def failure_fields(self) -> dict[str, Any]:
        """`event_fields` plus what the failure events carry."""
        return {**self.event_fields(), "failureClass": self.outcome_class.value,
                "failureSignature": self.signature or "", "detector": self.detector.value,
                "exitCode": self.result.exit_code, "signal": self.result.signal, "reason": self.decision.reason}

    def retry_extra(self) -> dict[str, Any]:
        """What the step task puts in Flower's retry reason (`wiring.tasks.retry_message`)."""
        p = self.plan
        return {"stepId": p.step.id, "attempt": p.attempt, "detector": self.detector.value,
                "failureClass": self.outcome_class.value, "maxAttempts": p.budgets.step_max_attempts,
                "attemptInRound": self.decision.extra.get("attempt_in_round", p.attempt)}


def judge(plan: AttemptPlan, result: RuntimeResult, change: Change,
          classifiers: Sequence[Classifier] = ()) -> tuple[bool, FailureClass | None, str | None, str]:
    """(ok, class, signature, summary) of an ended attempt: exit 0 on its own is success."""
    ok = result.detector == Detector.EXIT and result.exit_code == 0
    if ok:
        return True, None, None, summarize_failure(result.tail)
    # a failure's summary says what happened (no output for N s, the repeated block, the signal...)
    summary = attempt_summary(result.detector, result.tail, note=result.note, idle_seconds=result.idle_seconds,
                              wall_seconds=result.wall_seconds)
    cls = classify(failure_facts(result), classifiers)
    if result.pid == 0 and any(why in result.tail for why in _NEVER_STARTS):
        # the runtime could not even be started (no such program): retrying cannot help
        cls = FailureClass.DETERMINISTIC_CONTRACT
    signature = failure_signature(f"{result.detector.value} exit={result.exit_code} signal={result.signal}\n{summary}")
    return False, cls, signature, summary


def failure_facts(result: RuntimeResult) -> FailureFacts:
    """What the classifiers read of an ended attempt."""
    return FailureFacts(exit_code=result.exit_code, signal=result.signal, detector=result.detector,
                        output_tail=result.tail)


def refused_secret(decision_reason: str) -> Decision:
    """The decision for a step whose change contains a secret: end the job, not retryable."""
    return Decision(DecisionKind.GIVE_UP, reason=decision_reason, detector=Detector.EXIT,
                    failure_class=FailureClass.DETERMINISTIC_POLICY)
