"""The attempt artifact: ``state/self_heal/attempt-NNNN-AAAA.json`` (DESIGN section 6, "Artifacts")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_selfheal.artifacts import atomic_write_json
from celery_selfheal.context import Context


def write_attempt_artifact(ctx: Context, job_id: str, record: Mapping[str, Any],
                           retry_context: Mapping[str, Any] | None) -> None:
    """``state/self_heal/attempt-NNNN-AAAA.json`` with the contract fields and the attempt's events."""
    arts = ctx.artifacts(job_id)
    idx, attempt = record["stepIndex"], record["attempt"]
    events = [e for _, e in ctx.store.list_events(job_id)
              if e.get("stepIndex") == idx and e.get("attempt") == attempt]
    doc = {
        "jobId": job_id,
        "stepId": record["stepId"],
        "stepIndex": idx,
        "attempt": attempt,
        "round": record.get("round", 0),
        "epoch": record.get("epoch", 0),
        "status": record.get("status"),
        "attemptStrategy": record.get("attemptStrategy"),
        "strategy": record.get("strategy"),
        "failureClass": record.get("failureClass"),
        "failureSignature": record.get("failureSignature"),
        "detector": record.get("detector"),
        "exitCode": record.get("exitCode"),
        "signal": record.get("signal"),
        "diffHash": record.get("diffHash"),
        "changedFiles": record.get("changedFiles", []),
        "attemptPatch": record.get("attemptPatch"),
        "attemptPatchSha256": record.get("attemptPatchSha256"),
        "attemptPatchAbsent": record.get("attemptPatchAbsent"),
        "wallClockSeconds": record.get("wallClockSeconds"),
        "idleSeconds": record.get("idleSeconds"),
        "detectionLagSeconds": record.get("detectionLagSeconds"),
        "decision": record.get("decision"),
        "startedAt": record.get("startedAt"),
        "finishedAt": record.get("finishedAt"),
        "retryContext": dict(retry_context) if retry_context else None,
        "events": events,
    }
    # a copy of the store's record, rewritten whenever the attempt is recorded: no fsync needed
    atomic_write_json(arts.attempt_state_path(idx, attempt), ctx.redactor.redact_obj(doc), durable=False)
