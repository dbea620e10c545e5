"""The step board of ``selfheal run``/``follow``: what each step is doing, folded from the job's events.

Pure (no I/O, no clock): `StepBoard.apply` takes events in order; `StepBoard.rows` formats the
table for a given ``now`` and the idle seconds of running attempts when the caller knows them.
`celery_selfheal.cli.progress` draws it with rich.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: the table's columns, in order
COLUMNS = ("step", "status", "attempt", "strategy", "elapsed", "idle", "detector", "note")
#: ``(stepIndex, attempt) -> seconds since the attempt's last output``
IdleMap = Mapping[tuple[int, int], float]


def epoch_seconds(ts: Any) -> float | None:
    """POSIX seconds of an event's ISO ``ts`` (``…Z``), None when missing or unreadable."""
    if not isinstance(ts, str) or not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def seconds_text(value: float | None) -> str:
    """``3.2s``, ``4m05s`` or empty for unknown."""
    if value is None:
        return ""
    value = max(0.0, value)
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class StepRow:
    """One step's line on the board (its current or last attempt)."""

    index: int
    step_id: str = ""
    #: pending, running, retrying, succeeded, failed, cancelled
    status: str = "pending"
    attempt: int | None = None
    #: the strategy that started the current attempt (``initial`` for a first attempt)
    strategy: str = ""
    #: POSIX start of the current attempt (from the event's ``ts``)
    started: float | None = None
    #: wall / idle seconds of the attempt once it ended
    wall: float | None = None
    idle: float | None = None
    #: detector of the last failure (kept while the next attempt runs: it says why)
    detector: str = ""
    note: str = ""

    @property
    def running(self) -> bool:
        return self.status == "running" and self.wall is None

    def cells(self, now: float, idle: IdleMap) -> tuple[str, ...]:
        """The row's cells, in `COLUMNS` order."""
        elapsed = self.wall
        idle_s = self.idle
        if self.running:
            elapsed = None if self.started is None else now - self.started
            idle_s = idle.get((self.index, self.attempt or 0))
        label = f"{self.index} {self.step_id}".rstrip()
        return (label, self.status, "" if self.attempt is None else str(self.attempt), self.strategy,
                seconds_text(elapsed), seconds_text(idle_s), self.detector, self.note)


class StepBoard:
    """Per-step state of one job, from its events."""

    def __init__(self, job_id: str = "", steps: Sequence[Mapping[str, Any]] = ()) -> None:
        self.job_id = job_id
        self.job_status = "queued"
        self.job_started: float | None = None
        self.job_ended: float | None = None
        #: the last job-level note (operator control, terminal reason)
        self.note = ""
        self._rows: dict[int, StepRow] = {}
        for i, step in enumerate(steps):
            index = int(step.get("stepIndex", i))
            self._rows[index] = StepRow(index, str(step.get("stepId", "")))

    def row(self, index: int, step_id: Any = None) -> StepRow:
        """The row of step ``index`` (created on first sight)."""
        row = self._rows.setdefault(index, StepRow(index))
        if step_id and not row.step_id:
            row.step_id = str(step_id)
        return row

    def apply(self, e: Mapping[str, Any]) -> None:
        """Fold one event in (unknown events and missing fields are ignored)."""
        name = str(e.get("event", ""))
        self.job_id = self.job_id or str(e.get("jobId", ""))
        ts = epoch_seconds(e.get("ts"))
        index = e.get("stepIndex")
        row = self.row(index, e.get("stepId")) if isinstance(index, int) and not isinstance(index, bool) else None
        if name.startswith("task.job."):
            self._job_event(name, e, ts, row)
        elif name.startswith("task.control.recovery."):
            kind = name.rsplit(".", 1)[-1]
            self.note = f"control {e.get('action', '?')} {kind}" + (f": {e['reason']}" if e.get("reason") else "")
        elif row is not None:
            self._step_event(name, e, ts, row)

    def _job_event(self, name: str, e: Mapping[str, Any], ts: float | None, row: StepRow | None) -> None:
        status = name.rsplit(".", 1)[-1]
        if status == "started":
            self.job_status, self.job_started, self.job_ended = "running", ts, None
            return
        self.job_status, self.job_ended = status, ts
        if status == "failed" and row is not None:
            row.status = "failed"
            row.note = str(e.get("reason") or e.get("failureClass") or row.note)
        if status == "cancelled":
            for row in self._rows.values():
                if row.status in ("running", "retrying"):
                    row.status = "cancelled"
        self.note = str(e.get("reason") or "") if status == "failed" else ""

    def _step_event(self, name: str, e: Mapping[str, Any], ts: float | None, row: StepRow) -> None:
        strategy = str(e.get("strategy") or "")
        if name == "task.step.attempt.started":
            row.status, row.started, row.wall, row.idle = "running", ts, None, None
            row.attempt = e.get("attempt") if isinstance(e.get("attempt"), int) else row.attempt
            row.strategy = str(e.get("attemptStrategy") or strategy or "initial")
            row.note = f"after {row.detector}" if row.detector else ""
        elif name in ("task.step.attempt.finished", "task.step.attempt.failed"):
            row.wall, row.idle = _num(e.get("wallClockSeconds")), _num(e.get("idleSeconds"))
            if name.endswith("finished"):
                row.status, row.detector = "succeeded", ""
                files = e.get("changedFiles")
                row.note = f"{len(files)} file(s) checkpointed" if isinstance(files, list) else "checkpointed"
            else:
                row.status, row.detector = "failed", str(e.get("detector") or "")
                cls = e.get("failureClass") or "failure"
                row.note = f"{cls}; next: {strategy}" if strategy else f"{cls}; giving up"
        elif name == "task.self_heal.triggered":
            countdown = _num(e.get("countdown"))
            row.status = "retrying"
            row.note = f"{strategy} in {countdown:g}s" if countdown else f"{strategy} now"
        elif name == "task.self_heal.escalated":
            row.status, row.note = "retrying", f"escalated to {strategy}"
        elif name == "task.self_heal.recovered":
            row.note = f"recovered by {e.get('attemptStrategy') or strategy or 'retry'}"
        elif name == "task.self_heal.exhausted":
            row.note = "recovery exhausted"
        elif name == "task.resume.from_step":
            for other in self._rows.values():
                if other.index >= row.index:
                    other.status, other.wall, other.idle, other.started = "pending", None, None, None
            row.note = f"resumed (epoch {e.get('epoch')})"

    def running(self) -> list[StepRow]:
        """Rows whose attempt is running now."""
        return [r for r in self._rows.values() if r.running]

    def rows(self, now: float, idle: IdleMap | None = None) -> list[tuple[str, ...]]:
        """Every step's cells, by index; ``idle`` gives live idle seconds of running attempts."""
        return [self._rows[i].cells(now, idle or {}) for i in sorted(self._rows)]

    def title(self, now: float) -> str:
        """``job <id>  <status>  <elapsed>`` plus the last job-level note."""
        end = self.job_ended if self.job_ended is not None else now
        took = seconds_text(None if self.job_started is None else end - self.job_started)
        text = f"job {self.job_id}  {self.job_status}  {took}".rstrip()
        return f"{text}  ({self.note})" if self.note else text
