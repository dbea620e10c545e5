"""The event bus: every event is redacted, persisted per job, then handed to each sink.

Event names and fields are a public contract (DESIGN section 6, "Events").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from celery_selfheal.core.redact import Redactor
from celery_selfheal.events.sink import EventSink
from celery_selfheal.store.base import StateStore

log = logging.getLogger(__name__)

EVENT_NAMES = frozenset({
    "task.job.started", "task.job.succeeded", "task.job.failed", "task.job.cancelled",
    "task.step.attempt.started", "task.step.attempt.finished", "task.step.attempt.failed",
    "task.self_heal.triggered", "task.self_heal.escalated", "task.self_heal.recovered",
    "task.self_heal.exhausted",
    "task.resume.from_step",
    "task.control.recovery.requested", "task.control.recovery.ack", "task.control.recovery.rejected",
})
TERMINAL_JOB_EVENTS = frozenset({"task.job.succeeded", "task.job.failed", "task.job.cancelled"})


def utc_now_iso() -> str:
    """Current UTC time as ISO-8601 with milliseconds and a ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventBus:
    """Redact → persist → fan out. Sink failures are logged and never reach the job.

    `emit` does all three; `build` and `publish` split them around a store write that persists the
    event in the same transaction as the change it reports (`StateStore.write_job`)."""

    def __init__(self, store: StateStore, redactor: Redactor, sinks: Iterable[EventSink] = ()) -> None:
        self.store = store
        self.redactor = redactor
        self.sinks: list[EventSink] = list(sinks)

    def add_sink(self, sink: EventSink) -> None:
        """Attach one more sink (e.g. Celery events once the worker's app is known)."""
        self.sinks.append(sink)

    def emit(self, name: str, job_id: str, **fields: Any) -> dict[str, Any]:
        """Build, redact, persist and fan out one event; returns the event as stored."""
        event = self.build(name, job_id, **fields)
        return self.publish(event, self.store.append_event(job_id, event))

    def build(self, name: str, job_id: str, **fields: Any) -> dict[str, Any]:
        """The redacted event, not persisted yet: for a store write that persists it together with
        the change it reports (`StateStore.write_job`); then `publish` it with its sequence number."""
        if name not in EVENT_NAMES:
            raise ValueError(f"unknown event name {name!r}")
        event: dict[str, Any] = {"event": name, "ts": utc_now_iso(), "jobId": job_id}
        event.update({k: v for k, v in fields.items() if v is not None})
        return self.redactor.redact_obj(event)

    def publish(self, event: dict[str, Any], seq: int) -> dict[str, Any]:
        """Hand a persisted event (``seq``: its sequence number) to every sink; returns it."""
        event["seq"] = seq
        name = event.get("event")
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception:  # a broken sink must not break the job
                log.warning("event sink %r failed on %s", sink, name, exc_info=True)
        return event
