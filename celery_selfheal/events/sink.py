"""The sink seam: every event, already redacted, is handed to each configured sink."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EventSink(Protocol):
    """Receives each event dict (``event``, ``ts``, ``jobId`` and contract fields), redacted.

    A sink must never raise into the job: the event bus logs and swallows sink errors, but a sink
    should also bound its own latency (UDP, non-blocking sends).
    """

    def handle(self, event: dict[str, Any]) -> None:
        """Deliver one event."""
        ...
