"""Registry of the attempts running on this host: one small JSON file per Celery task id.

The pool child that runs an attempt writes it as soon as the runtime starts (with its process-group
id) and removes it when the attempt ends. The worker MainProcess reads it when Celery's hard time
limit kills a pool child (``task_failure`` fires there without request context), so it can end the
orphaned runtime group and record the attempt from state we own. The ``selfheal_active`` inspect
command lists it; idle seconds come from the file's mtime, touched on output at most twice a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from celery_selfheal.artifacts import check_safe_id, write_fresh

TOUCH_INTERVAL = 0.5


class RunningAttempts:
    """Per-host files under ``<run dir>/attempts``."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "attempts"

    def _path(self, task_id: str) -> Path:
        return self.dir / f"{check_safe_id(task_id, what='task id')}.json"

    def register(self, task_id: str, record: dict[str, Any]) -> None:
        """Record a running attempt (``jobId, stepIndex, attempt, epoch, pgid, ...``)."""
        # written in place (one created file, no rename, no fsync: a registry of live processes is
        # meaningless after an OS crash): a reader that catches it half-written takes it for not yet
        # registered, as in the moment between the runtime's start and this call
        write_fresh(self._path(task_id), json.dumps({**record, "taskId": task_id, "registeredAt": time.time()}))

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The record of a task, or None."""
        try:
            data: dict[str, Any] = json.loads(self._path(task_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError, ValueError):
            return None
        return data

    def unregister(self, task_id: str) -> None:
        """Forget a task (idempotent)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            self._path(task_id).unlink()

    def all(self) -> list[dict[str, Any]]:
        """Every running attempt with ``secondsElapsed`` and ``secondsIdle`` computed now."""
        out: list[dict[str, Any]] = []
        if not self.dir.exists():
            return out
        now = time.time()
        for path in sorted(self.dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                mtime = path.stat().st_mtime
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            data["secondsElapsed"] = round(now - data.get("registeredAt", now), 3)
            data["secondsIdle"] = round(now - mtime, 3)
            out.append(data)
        return out


class OutputToucher:
    """Touches a task's registry file on output, rate-limited, so idle time is visible from outside."""

    def __init__(self, registry: RunningAttempts, task_id: str) -> None:
        self.path = registry._path(task_id)
        self._last = 0.0

    def __call__(self, _chunk: str) -> None:
        now = time.monotonic()
        if now - self._last >= TOUCH_INTERVAL:
            self._last = now
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)
