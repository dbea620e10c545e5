"""The Redis store's round-trip savers: compare-and-set writes of one value (`cas_update`) or of a
job's stage (`write_job`), and the read of all a step needs, lease included (`job_state`).

Records are merged in Python and written by a script only if the stored text is still the text the
merge started from (`_redis_scripts`). The text comes from `_seen.Seen` when this process read or
wrote the value last (no read: one round trip for the whole write), else from a read. A refused
script (the value changed, or the guess was stale) is answered by a fresh read and another try; a
guard that fails on a guessed text is checked again on a fresh read, so a guess never decides.
A script whose reply was lost in a reconnect is retried and refused (the value changed: to ours);
the loop then reads our own write back, as WATCH/MULTI's rerun did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis

from celery_selfheal.store import _codec as codec
from celery_selfheal.store._redis_scripts import ACQUIRE
from celery_selfheal.store.base import AttemptWrite, JobSnapshot, Record

if TYPE_CHECKING:
    from celery_selfheal.store.redis import RedisStore


def cas_update(store: RedisStore, key: str, field: str | None, change: Callable[[Record], str | None]) -> bool:
    """Compare-and-set one JSON value (a string key, or a field of a hash): ``change`` turns the
    record into the new JSON text (None: leave it)."""
    client, cas, seen = store._r(), store._lua().cas, store._seen
    raw = seen.get(key, field or "")
    guessed = raw is not None
    while True:
        if not guessed:
            raw = client.get(key) if field is None else client.hget(key, field)
            seen.put(key, field or "", raw)
        new = None if raw is None else change(codec.loads(raw))
        if new is None:
            if guessed:
                guessed = False
                continue
            return False
        if cas(keys=[key], args=[field or "", raw, new]):
            seen.put(key, field or "", new)
            return True
        guessed = False


def _read(store: RedisStore, key: str, attempts: str, field: str) -> tuple[str | None, str | None]:
    """The job's text and, with ``field``, the attempt's, in one round trip."""
    pipe = store._r().pipeline(transaction=False)
    pipe.get(key)
    if field:
        pipe.hget(attempts, field)
    raw, raw_attempt = (*pipe.execute(), None)[:2]
    store._seen.put(key, "", raw)
    if field:
        store._seen.put(attempts, field, raw_attempt)
    return raw, raw_attempt


def write_job(store: RedisStore, job_id: str, changes: Record | None, expect: Record | None,
              step: tuple[int, Record] | None, attempt: AttemptWrite | None,
              events: Sequence[Record], checkpoint: tuple[int, int, Record] | None = None) -> list[int] | None:
    """`StateStore.write_job` on Redis (see the module docstring)."""
    texts = [codec.dumps(event) for event in events]  # refuse non-JSON input before touching anything
    codec.dumps([changes, step, attempt.changes if attempt else None])
    kept = ("", "") if checkpoint is None else (f"{checkpoint[0]}:{checkpoint[1]}",
                                                 codec.checkpoint_text(job_id, *checkpoint))
    key, attempts = store._job(job_id), store._job(job_id, ":attempts")
    field = f"{attempt.step_index}:{attempt.attempt}" if attempt is not None else ""
    guarded = attempt is not None and attempt.from_status is not None  # only then is the attempt read
    raw, raw_attempt = store._seen.get(key), store._seen.get(attempts, field) if guarded else None
    guessed = raw is not None and (raw_attempt is not None or not guarded)
    script = store._lua().write_job
    while True:
        if not guessed:
            raw, raw_attempt = _read(store, key, attempts, field if guarded else "")
        plan = _merge(job_id, raw, raw_attempt, changes, expect, step, attempt)
        if plan is None:
            if guessed:  # a guess never decides: look again
                guessed = False
                continue
            return None
        assert raw is not None
        new_job, new_attempt, old, new = plan
        mode = "" if attempt is None else ("cas" if guarded else "put")
        seqs = script(keys=[key, attempts, store._job(job_id, ":events"), f"{store.prefix}jobs",
                            store._by_status(old), store._by_status(new), store._job(job_id, ":checkpoints")],
                      args=[raw, new_job, field, mode, raw_attempt or "", new_attempt, job_id,
                            "1" if old != new else "0", *kept, *texts])
        if seqs is not None:
            store._seen.put(key, "", new_job)
            if field:
                store._seen.put(attempts, field, new_attempt)
            return [int(seq) for seq in seqs]
        guessed = False


def _merge(job_id: str, raw: str | None, raw_attempt: str | None, changes: Record | None, expect: Record | None,
           step: tuple[int, Record] | None, attempt: AttemptWrite | None) -> tuple[str, str, Any, Any] | None:
    """(new job text, new attempt text or '', old status, new status), or None when a guard fails."""
    if raw is None:
        return None
    before = codec.loads(raw)
    job = codec.job_written(before, changes, expect, step)
    if job is None:
        return None
    new_attempt = ""
    if attempt is not None:
        found = None if raw_attempt is None else codec.loads(raw_attempt)
        new_attempt = codec.attempt_written(job_id, found, attempt) or ""
        if not new_attempt:
            return None
    return codec.dumps(job), new_attempt, before.get("status"), job.get("status")


def job_state(store: RedisStore, job_id: str, lease: tuple[str, str, float] | None) -> JobSnapshot:
    """`StateStore.get_job_state` in one round trip: MULTI with the lease script (EVALSHA, loaded
    again if the server lost it) and the reads."""
    from celery_selfheal.store._redis_records import _checkpoints
    from celery_selfheal.store.redis import _ms

    client = store._r()
    acquire = store._lua().acquire
    for _ in range(2):
        pipe = client.pipeline(transaction=True)
        if lease is not None:
            key, owner, ttl = lease
            pipe.evalsha(acquire.sha, len(store._lease_keys), *store._lease_keys, key, owner, _ms(ttl), "0")
        pipe.get(store._job(job_id))
        pipe.hgetall(store._job(job_id, ":attempts"))
        pipe.lrange(store._job(job_id, ":control:order"), 0, -1)
        pipe.hgetall(store._job(job_id, ":control"))
        pipe.hgetall(store._job(job_id, ":checkpoints"))
        pipe.smembers(store._job(job_id, ":checkpoints:old"))
        try:
            replies = pipe.execute()
            break
        except redis.exceptions.NoScriptError:  # the server restarted without its scripts
            client.script_load(ACQUIRE)
    leased = bool(replies.pop(0)) if lease is not None else False
    raw, attempts, order, control, found, old = replies
    store._seen.put(store._job(job_id), "", raw)
    records = sorted((codec.loads(text) for text in attempts.values()),
                     key=lambda rec: (rec["stepIndex"], rec["attempt"]))
    requests = [codec.loads(control[rid]) for rid in order if rid in control]
    return JobSnapshot(job=codec.loads(raw) if raw is not None else None, attempts=records,
                       pending=[rec for rec in requests if rec.get("state") == codec.PENDING],
                       checkpoints=_checkpoints(found, old), leased=leased)
