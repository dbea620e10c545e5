"""The Redis store's records kept beside a job: checkpoints, operator control requests and audit
(key layout in `store.redis`). A mixin of `RedisStore`, which provides the client and key names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery_selfheal.store import _codec as codec
from celery_selfheal.store.base import Record


class JobRecords:
    """`StateStore`'s checkpoint, control-request and audit methods on Redis."""

    def _r(self) -> Any:
        raise NotImplementedError

    def _job(self, job_id: str, part: str = "") -> str:
        raise NotImplementedError

    def _update(self, key: str, field: str | None, change: Callable[[Record], str | None]) -> bool:
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------------------------
    def record_checkpoint(self, job_id: str, step_index: int, epoch: int, meta: Record) -> bool:
        data = codec.checkpoint_text(job_id, step_index, epoch, meta)
        return bool(self._r().hsetnx(self._job(job_id, ":checkpoints"), f"{step_index}:{epoch}", data))

    def list_checkpoints(self, job_id: str, *, include_superseded: bool = False) -> list[Record]:
        pipe = self._r().pipeline(transaction=True)  # one consistent snapshot of both keys
        pipe.hgetall(self._job(job_id, ":checkpoints"))
        pipe.smembers(self._job(job_id, ":checkpoints:old"))
        return _checkpoints(*pipe.execute(), include_superseded=include_superseded)

    def supersede_checkpoints(self, job_id: str, from_index: int) -> int:
        found, old = self._job(job_id, ":checkpoints"), self._job(job_id, ":checkpoints:old")

        def txn(pipe: Any) -> int:
            fields = [f for f in pipe.hkeys(found) if int(f.split(":")[0]) >= from_index]
            fresh = sorted(set(fields) - pipe.smembers(old))
            pipe.multi()
            if fresh:
                pipe.sadd(old, *fresh)
            return len(fresh)

        return int(self._r().transaction(txn, found, old, value_from_callable=True))

    # -- control requests -------------------------------------------------------------------
    def add_control(self, job_id: str, request: Record) -> str:
        request_id = codec.new_request_id()
        record = {**request, "jobId": job_id, "requestId": request_id, "state": codec.PENDING}
        pipe = self._r().pipeline(transaction=True)  # MULTI: both writes or neither
        pipe.hset(self._job(job_id, ":control"), request_id, codec.dumps(record))
        pipe.rpush(self._job(job_id, ":control:order"), request_id)
        pipe.execute()
        return request_id

    def _control(self, job_id: str) -> list[Record]:
        pipe = self._r().pipeline(transaction=True)
        pipe.lrange(self._job(job_id, ":control:order"), 0, -1)
        pipe.hgetall(self._job(job_id, ":control"))
        order, found = pipe.execute()
        return [codec.loads(found[rid]) for rid in order if rid in found]

    def pending_control(self, job_id: str) -> list[Record]:
        return [rec for rec in self._control(job_id) if rec.get("state") == codec.PENDING]

    def resolve_control(self, job_id: str, request_id: str, changes: Record) -> bool:
        codec.dumps(changes)
        return self._update(
            self._job(job_id, ":control"), request_id,
            lambda rec: codec.resolved(rec, changes) if rec.get("state") == codec.PENDING else None)

    def list_control(self, job_id: str) -> list[Record]:
        return self._control(job_id)

    # -- audit ------------------------------------------------------------------------------
    def append_audit(self, job_id: str, record: Record) -> None:
        self._r().rpush(self._job(job_id, ":audit"), codec.dumps(record))

    def list_audit(self, job_id: str) -> list[Record]:
        return [codec.loads(raw) for raw in self._r().lrange(self._job(job_id, ":audit"), 0, -1)]


def _checkpoints(found: dict[str, str], old: set[str], *, include_superseded: bool = False) -> list[Record]:
    """Checkpoint records from the checkpoints hash and the set of superseded fields."""
    records = sorted(({**codec.loads(raw), "superseded": field in old} for field, raw in found.items()),
                     key=lambda rec: (rec["stepIndex"], rec["epoch"]))
    return records if include_superseded else codec.active_checkpoints(records)
