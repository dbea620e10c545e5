"""The audit trail of operator requests: one redacted entry per request and outcome, plus the ack.

Entries carry who, when, why and how it ended (``requested``, ``rejected``, ``acknowledged``,
``error``); DESIGN section 6 lists the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.events.bus import utc_now_iso

#: the request fields that audit entries and control events carry
FIELDS = ("action", "stepId", "stepIndex", "actor", "reason", "requestId", "via")


def fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The audited fields of a request."""
    return {k: record.get(k) for k in FIELDS}


def audit(ctx: Context, job_id: str, record: Mapping[str, Any], outcome: str, **more: Any) -> None:
    """Append one redacted audit entry for ``record``."""
    entry = {"at": utc_now_iso(), **fields(record), "requestedAt": record.get("requestedAt"),
             "outcome": outcome, **more}
    if record.get("broadcastId"):
        entry["broadcastId"] = record["broadcastId"]
    ctx.store.append_audit(job_id, ctx.redactor.redact_obj(entry))


def ack(ctx: Context, job_id: str, request: Mapping[str, Any], **details: Any) -> dict[str, Any]:
    """Audit and announce (``task.control.recovery.ack``) that a request was applied."""
    audit(ctx, job_id, request, "acknowledged", **details)
    ctx.bus.emit("task.control.recovery.ack", job_id, **fields(request), **details)
    return {**request, "state": "acknowledged", **details}


def reject(ctx: Context, job_id: str, request: Mapping[str, Any], why: str) -> None:
    """Audit and announce (``task.control.recovery.rejected``) that a request was refused."""
    audit(ctx, job_id, request, "rejected", why=why)
    ctx.bus.emit("task.control.recovery.rejected", job_id, **fields(request), why=why)
