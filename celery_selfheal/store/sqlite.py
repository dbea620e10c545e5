"""SQLite state store: the embedded default (one machine, many processes, zero setup).

URL: ``sqlite:///`` followed by a path, as in SQLAlchemy and Celery's ``db+sqlite://`` backend, so
``f"sqlite:///{path}"`` works for both kinds: ``sqlite:///relative/state.db`` (relative to the
current directory) and ``sqlite:////abs/state.db`` (four slashes: an absolute path). Parent
directories and the schema are created on first use.

Concurrency: WAL mode (readers never block the writer, so the CLI can follow while workers write),
a 10 s busy timeout, one short ``BEGIN IMMEDIATE`` transaction per read-modify-write (taking the
write lock up front, so two processes never both read the old value), and unique keys where an
insert must happen once (checkpoints per job/step/epoch, event sequence numbers per job).
Connections are per thread and per process: a store created before ``fork()`` opens a new
connection in the child on first use.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence

from celery_selfheal.store import _codec as codec
from celery_selfheal.store import _wake_fifo
from celery_selfheal.store._sqlite_db import SQLiteDB, sqlite_path
from celery_selfheal.store.base import FINISHED, AttemptWrite, Record, StateStore, WakeListener

__all__ = ["SQLiteStore", "sqlite_path"]

log = logging.getLogger(__name__)


class SQLiteStore(SQLiteDB, StateStore):
    """The state store in one SQLite file (see the module docstring for URL and concurrency)."""

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    # -- jobs -------------------------------------------------------------------------------
    def create_job(self, job: Record) -> None:
        job_id = job["jobId"]
        try:
            self._db().execute("insert into jobs (job_id, data) values (?, ?)", (job_id, codec.dumps(job)))
        except sqlite3.IntegrityError:
            raise KeyError(job_id) from None

    def get_job(self, job_id: str) -> Record | None:
        row = self._db().execute("select data from jobs where job_id = ?", (job_id,)).fetchone()
        return codec.loads(row[0]) if row else None

    def update_job(self, job_id: str, changes: Record, *, expect: Record | None = None) -> bool:
        with self._write() as db:
            row = db.execute("select data from jobs where job_id = ?", (job_id,)).fetchone()
            if row is None or not codec.matches(job := codec.loads(row[0]), expect):
                return False
            db.execute("update jobs set data = ? where job_id = ?", (codec.merged(job, changes), job_id))
            return True

    def write_job(self, job_id: str, changes: Record | None = None, *, expect: Record | None = None,
                  step: tuple[int, Record] | None = None, attempt: AttemptWrite | None = None,
                  events: Sequence[Record] = (), checkpoint: tuple[int, int, Record] | None = None,
                  ) -> list[int] | None:
        texts = [codec.dumps(event) for event in events]  # refuse non-JSON input before the lock
        codec.dumps([changes, step, attempt.changes if attempt else None])
        kept = None if checkpoint is None else (job_id, checkpoint[0], checkpoint[1],
                                                 codec.checkpoint_text(job_id, *checkpoint))
        with self._write() as db:  # one transaction: every part or none
            row = db.execute("select data from jobs where job_id = ?", (job_id,)).fetchone()
            job = None if row is None else codec.job_written(codec.loads(row[0]), changes, expect, step)
            if job is None:
                return None
            if attempt is not None:
                key = (job_id, attempt.step_index, attempt.attempt)
                found = db.execute("select data from attempts where job_id = ? and step_index = ? and attempt = ?",
                                   key).fetchone()
                text = codec.attempt_written(job_id, codec.loads(found[0]) if found else None, attempt)
                if text is None:
                    return None
                db.execute("insert or replace into attempts values (?, ?, ?, ?)", (*key, text))
            db.execute("update jobs set data = ? where job_id = ?", (codec.dumps(job), job_id))
            if kept is not None:
                db.execute("insert or ignore into checkpoints (job_id, step_index, epoch, data) "
                           "values (?, ?, ?, ?)", kept)
            if not texts:
                return []
            (seq,) = db.execute("select coalesce(max(seq), 0) from events where job_id = ?", (job_id,)).fetchone()
            db.executemany("insert into events values (?, ?, ?)",
                           [(job_id, seq + 1 + i, text) for i, text in enumerate(texts)])
        return [int(seq) + 1 + i for i in range(len(texts))]

    def list_jobs(self, limit: int = 100) -> list[Record]:
        rows = self._db().execute("select data from jobs order by seq desc limit ?", (limit,))
        return [codec.loads(data) for (data,) in rows]

    def page_jobs(self, *, status: str | None = None, limit: int = 50,
                  before: int | None = None) -> tuple[list[Record], int | None]:
        # the status filter repeats the index expression exactly, so SQLite uses jobs_by_status
        where: list[str] = ["seq < ?"]
        args: list[object] = [before if before is not None else 2**63 - 1]
        if status is not None:
            where.append("json_extract(data, '$.status') = ?")
            args.append(status)
        rows = self._db().execute(f"select seq, data from jobs where {' and '.join(where)} "
                                  "order by seq desc limit ?", (*args, max(limit, 0) + 1)).fetchall()
        page = rows[:max(limit, 0)]
        nxt = page[-1][0] if len(rows) > len(page) and page else None
        return [codec.loads(data) for _, data in page], nxt

    # -- attempts ---------------------------------------------------------------------------
    def put_attempt(self, job_id: str, step_index: int, attempt: int, record: Record) -> None:
        data = codec.dumps({**record, "jobId": job_id, "stepIndex": step_index, "attempt": attempt})
        self._db().execute("insert or replace into attempts values (?, ?, ?, ?)",
                           (job_id, step_index, attempt, data))

    def get_attempt(self, job_id: str, step_index: int, attempt: int) -> Record | None:
        row = self._db().execute(
            "select data from attempts where job_id = ? and step_index = ? and attempt = ?",
            (job_id, step_index, attempt)).fetchone()
        return codec.loads(row[0]) if row else None

    def transition_attempt(
        self, job_id: str, step_index: int, attempt: int, from_status: str, changes: Record
    ) -> bool:
        key = (job_id, step_index, attempt)
        with self._write() as db:
            row = db.execute("select data from attempts where job_id = ? and step_index = ? and attempt = ?",
                             key).fetchone()
            if row is None or (record := codec.loads(row[0])).get("status") != from_status:
                return False
            db.execute("update attempts set data = ? where job_id = ? and step_index = ? and attempt = ?",
                       (codec.merged(record, changes), *key))
            return True

    def list_attempts(self, job_id: str, step_index: int | None = None) -> list[Record]:
        if step_index is None:
            rows = self._db().execute(
                "select data from attempts where job_id = ? order by step_index, attempt", (job_id,))
        else:
            rows = self._db().execute(
                "select data from attempts where job_id = ? and step_index = ? order by attempt",
                (job_id, step_index))
        return [codec.loads(data) for (data,) in rows]

    # -- events -----------------------------------------------------------------------------
    def append_event(self, job_id: str, event: Record) -> int:
        data = codec.dumps(event)
        with self._write() as db:
            # the write lock is held, so max(seq) + 1 cannot be taken twice; the primary key
            # (job_id, seq) would refuse a duplicate anyway.
            (seq,) = db.execute("select coalesce(max(seq), 0) + 1 from events where job_id = ?",
                                (job_id,)).fetchone()
            db.execute("insert into events values (?, ?, ?)", (job_id, seq, data))
        return int(seq)

    def list_events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Record]]:
        # a range scan of the (job_id, seq) primary key: cheap enough to poll every 100 ms
        rows = self._db().execute(
            "select seq, data from events where job_id = ? and seq > ? order by seq limit ?",
            (job_id, after, -1 if limit is None else limit))
        return [(seq, codec.loads(data)) for seq, data in rows]

    # -- checkpoints ------------------------------------------------------------------------
    def record_checkpoint(self, job_id: str, step_index: int, epoch: int, meta: Record) -> bool:
        data = codec.checkpoint_text(job_id, step_index, epoch, meta)
        cur = self._db().execute("insert or ignore into checkpoints (job_id, step_index, epoch, data) "
                                 "values (?, ?, ?, ?)", (job_id, step_index, epoch, data))
        return cur.rowcount == 1

    def list_checkpoints(self, job_id: str, *, include_superseded: bool = False) -> list[Record]:
        rows = self._db().execute("select data, superseded from checkpoints where job_id = ? "
                                  "order by step_index, epoch", (job_id,))
        records = [{**codec.loads(data), "superseded": bool(flag)} for data, flag in rows]
        return records if include_superseded else codec.active_checkpoints(records)

    def supersede_checkpoints(self, job_id: str, from_index: int) -> int:
        cur = self._db().execute("update checkpoints set superseded = 1 "
                                 "where job_id = ? and step_index >= ? and superseded = 0",
                                 (job_id, from_index))
        return cur.rowcount

    # -- control requests -------------------------------------------------------------------
    def add_control(self, job_id: str, request: Record) -> str:
        request_id = codec.new_request_id()
        record = {**request, "jobId": job_id, "requestId": request_id, "state": codec.PENDING}
        self._db().execute("insert into control (job_id, request_id, state, data) values (?, ?, ?, ?)",
                           (job_id, request_id, codec.PENDING, codec.dumps(record)))
        return request_id

    def pending_control(self, job_id: str) -> list[Record]:
        rows = self._db().execute("select data from control where job_id = ? and state = ? order by seq",
                                  (job_id, codec.PENDING))
        return [codec.loads(data) for (data,) in rows]

    def resolve_control(self, job_id: str, request_id: str, changes: Record) -> bool:
        with self._write() as db:
            row = db.execute("select data from control where job_id = ? and request_id = ? and state = ?",
                             (job_id, request_id, codec.PENDING)).fetchone()
            if row is None:
                return False
            data = codec.resolved(codec.loads(row[0]), changes)
            db.execute("update control set state = ?, data = ? where request_id = ?",
                       (codec.loads(data)["state"], data, request_id))
            return True

    def list_control(self, job_id: str) -> list[Record]:
        rows = self._db().execute("select data from control where job_id = ? order by seq", (job_id,))
        return [codec.loads(data) for (data,) in rows]

    # -- audit ------------------------------------------------------------------------------
    def append_audit(self, job_id: str, record: Record) -> None:
        self._db().execute("insert into audit (job_id, data) values (?, ?)", (job_id, codec.dumps(record)))

    def list_audit(self, job_id: str) -> list[Record]:
        rows = self._db().execute("select data from audit where job_id = ? order by seq", (job_id,))
        return [codec.loads(data) for (data,) in rows]

    # -- leases -----------------------------------------------------------------------------
    # A lease row lives until its owner releases it or another owner takes it after it expired;
    # "live" means expires_at is in the future (this host's clock: SQLite is one machine).
    def acquire_lease(self, key: str, owner: str, ttl: float, *, take_expired: bool = True) -> bool:
        now = time.time()
        cur = self._db().execute(
            "insert into leases values (?, ?, ?) on conflict (name) do update "
            "set owner = excluded.owner, expires_at = excluded.expires_at "
            "where leases.owner = excluded.owner or (? and leases.expires_at <= ?)",
            (key, owner, now + ttl, int(take_expired), now))
        return cur.rowcount == 1

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        cur = self._db().execute("update leases set expires_at = ? where name = ? and owner = ?",
                                 (time.time() + ttl, key, owner))
        return cur.rowcount == 1

    def release_lease(self, key: str, owner: str) -> bool:
        cur = self._db().execute("delete from leases where name = ? and owner = ?", (key, owner))
        return cur.rowcount == 1

    def get_lease(self, key: str) -> Record | None:
        row = self._db().execute("select owner, expires_at from leases where name = ? and expires_at > ?",
                                 (key, time.time())).fetchone()
        return {"owner": row[0], "expiresAt": row[1]} if row else None

    def expired_leases(self, prefix: str) -> list[tuple[str, Record]]:
        rows = self._db().execute(
            "select name, owner, expires_at from leases "
            "where substr(name, 1, ?) = ? and expires_at <= ? order by expires_at",
            (len(prefix), prefix, time.time()))
        return [(name, {"owner": owner, "expiresAt": expires}) for name, owner, expires in rows]

    # -- wake-ups (`_wake_fifo`: one FIFO per listening attempt next to the database) ----------
    def wake(self, job_id: str) -> None:
        _wake_fifo.wake(_wake_fifo.wake_dir(self.path), job_id)

    def wake_listener(self, job_id: str) -> WakeListener | None:
        try:
            return _wake_fifo.FifoListener(_wake_fifo.wake_dir(self.path), job_id)
        except OSError as exc:  # e.g. a file system without FIFOs: the attempt polls
            log.debug("celery-selfheal: no wake-up FIFO for job %s: %s", job_id, exc)
            return None

    # -- retention --------------------------------------------------------------------------
    def finished_jobs(self, before: str, limit: int = 1000) -> list[Record]:
        rows = self._db().execute(
            "select data from jobs where json_extract(data, '$.status') in (?, ?, ?) "
            "and json_extract(data, '$.finishedAt') < ? order by seq limit ?", (*FINISHED, before, limit))
        return [codec.loads(data) for (data,) in rows]

    def delete_job(self, job_id: str) -> bool:
        with self._write() as db:
            gone = db.execute("delete from jobs where job_id = ?", (job_id,)).rowcount
            for table in ("attempts", "events", "checkpoints", "control", "audit"):  # fixed names
                db.execute(f"delete from {table} where job_id = ?", (job_id,))
            db.execute("delete from leases where substr(name, ?) = ?", (-(len(job_id) + 1), ":" + job_id))
        return bool(gone)
