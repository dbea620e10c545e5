"""Record encoding and the few record rules both backends share (no I/O).

Records are stored as strict JSON (no NaN, no pickle, no custom types): a value that is not JSON
raises ``TypeError``/``ValueError`` before anything is written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from celery_selfheal.store.base import AttemptWrite, Record

#: the state a control request has until a worker resolves it
PENDING = "pending"
#: the state ``resolve_control`` sets unless ``changes`` names another one (e.g. ``rejected``)
DONE = "done"


def dumps(obj: Any) -> str:
    """Compact, strict JSON text of ``obj`` (ASCII-escaped, so even a lone surrogate from a
    subprocess's output is stored and read back unchanged)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def loads(raw: str | bytes) -> Record:
    """Decode one stored record."""
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"stored record is not a JSON object: {raw!r:.80}")
    return value


def matches(record: Record, expect: Record | None) -> bool:
    """True when every ``expect`` field has that value in ``record`` (a missing field is None).

    ``expect`` goes through a JSON round trip first so that e.g. a tuple compares equal to the
    list that was stored.
    """
    if not expect:
        return True
    wanted = json.loads(dumps(expect))
    return all(record.get(key) == value for key, value in wanted.items())


def merged(record: Record, changes: Record) -> str:
    """The JSON text of ``record`` with ``changes`` merged in (shallow, top-level keys)."""
    return dumps({**record, **changes})


def job_written(job: Record, changes: Record | None, expect: Record | None,
                step: tuple[int, Record] | None) -> Record | None:
    """The job after the job part of `StateStore.write_job`, or None when a guard fails (an
    ``expect`` field differs, or there is no ``steps[step[0]]`` entry to merge into)."""
    if not matches(job, expect):
        return None
    new = {**job, **(changes or {})}
    if step is not None:
        index, step_changes = step
        steps = new.get("steps")
        if not isinstance(steps, list) or not 0 <= index < len(steps) or not isinstance(steps[index], dict):
            return None
        steps = list(steps)
        steps[index] = {**steps[index], **step_changes}
        new["steps"] = steps
    return new


def attempt_written(job_id: str, record: Record | None, write: AttemptWrite) -> str | None:
    """JSON text of the attempt after the attempt part of `StateStore.write_job` (``record``: the
    stored one, or None), or None when it is guarded and not in its ``from_status``."""
    ids = {"jobId": job_id, "stepIndex": write.step_index, "attempt": write.attempt}
    if write.from_status is None:
        return dumps({**write.changes, **ids})
    if record is None or record.get("status") != write.from_status:
        return None
    return merged(record, write.changes)


def new_request_id() -> str:
    """A fresh, unguessable control-request id."""
    return uuid.uuid4().hex


def resolved(request: Record, changes: Record) -> str:
    """JSON text of a control request after ``resolve_control``: state ``done`` unless the
    caller's ``changes`` set another terminal state."""
    record = {**request, "state": DONE, **changes}
    if record["state"] == PENDING:  # resolving must never leave it pending (it would run again)
        record["state"] = DONE
    return dumps(record)


def checkpoint_text(job_id: str, step_index: int, epoch: int, meta: Record) -> str:
    """The stored text of a step's checkpoint for an epoch (`StateStore.record_checkpoint`)."""
    return dumps({**meta, "jobId": job_id, "stepIndex": step_index, "epoch": epoch})


def active_checkpoints(ordered: Iterable[Record]) -> list[Record]:
    """From checkpoints ordered by (stepIndex, epoch), the newest non-superseded one per step."""
    newest: dict[int, Record] = {}
    for record in ordered:
        if not record.get("superseded"):
            newest[record["stepIndex"]] = record
    return [newest[index] for index in sorted(newest)]
