"""The attempt artifact: ``state/self_heal/attempt-NNNN-AAAA.json`` (DESIGN section 6, "Artifacts")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery_selfheal.artifacts import atomic_write_json
from celery_selfheal.context import Context


def write_attempt_artifact(ctx: Context, job_id: str, record: Mapping[str, Any],
                           retry_context: Mapping[str, Any] | None, *, after: int = 0,
                           new_events: Sequence[Mapping[str, Any]] = (),
                           stored: Sequence[Mapping[str, Any]] | None = None) -> None:
    """``state/self_heal/attempt-NNNN-AAAA.json`` with the contract fields and the attempt's events:
    the stored ones after sequence number ``after`` (the attempt's own start: no need to read the
    job's whole history; ``stored``: those events, when the caller knows them), then ``new_events``
    (about to be stored with the record)."""
    arts = ctx.artifacts(job_id)
    idx, attempt = record["stepIndex"], record["attempt"]
    if stored is None:
        stored = [e for _, e in ctx.store.list_events(job_id, after=after)]
    events = [{k: v for k, v in e.items() if k != "seq"} for e in [*stored, *new_events]
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
