"""The SQLite store's file and connections: URL to path, pragmas and schema, one connection per
thread and per process (a store created before ``fork()`` opens a new one in the child), and the
``BEGIN IMMEDIATE`` write transaction (`store.sqlite` has the concurrency rules)."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from celery_selfheal.errors import ConfigError, StoreError

#: connections inherited through fork(): kept referenced so they are never closed (or garbage
#: collected) in the child, which could disturb the parent's locks on the same database file.
_INHERITED: list[sqlite3.Connection] = []


def sqlite_path(url: str) -> Path:
    """The database path named by a ``sqlite:///PATH`` URL (see `store.sqlite`)."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ConfigError(f"invalid SQLite store URL {url!r} (use sqlite:///PATH)",
                          where="SELFHEAL_STORE_URL")
    return Path(url[len("sqlite:///"):])


class SQLiteDB:
    """One SQLite file: its schema and this thread's connection to it (`SQLiteStore` adds the records)."""

    #: seconds a writer waits for the lock before giving up with "database is locked"
    BUSY_TIMEOUT_MS = 10_000

    PRAGMAS = (
        f"pragma busy_timeout = {BUSY_TIMEOUT_MS}",
        "pragma journal_mode = wal",
        # NORMAL is crash-safe in WAL mode; a power cut may lose the last commits, never corrupt.
        "pragma synchronous = normal",
    )

    SCHEMA = """
        create table if not exists jobs (
            seq integer primary key autoincrement,
            job_id text not null unique,
            data text not null);
        create index if not exists jobs_by_status on jobs (json_extract(data, '$.status'), seq);
        create table if not exists attempts (
            job_id text not null, step_index integer not null, attempt integer not null,
            data text not null,
            primary key (job_id, step_index, attempt)) without rowid;
        create table if not exists events (
            job_id text not null, seq integer not null, data text not null,
            primary key (job_id, seq)) without rowid;
        create table if not exists checkpoints (
            job_id text not null, step_index integer not null, epoch integer not null,
            superseded integer not null default 0, data text not null,
            primary key (job_id, step_index, epoch)) without rowid;
        create table if not exists control (
            seq integer primary key autoincrement, job_id text not null,
            request_id text not null unique, state text not null, data text not null);
        create index if not exists control_by_job on control (job_id, state, seq);
        create table if not exists audit (
            seq integer primary key autoincrement, job_id text not null, data text not null);
        create index if not exists audit_by_job on audit (job_id, seq);
        create table if not exists leases (
            name text primary key, owner text not null, expires_at real not null) without rowid;
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if conn is not None:  # inherited through fork(): never use it, never close it
            _INHERITED.append(conn)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 whatever the umask: the store holds jobs, prompts' context and the audit trail (SQLite
        # gives its -wal and -shm files the mode of the database file)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
        conn = sqlite3.connect(self.path, timeout=self.BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        try:
            self._set_up(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            hint = "is its disk full?" if "disk" in str(exc) else "corrupt, truncated or not a SQLite file?"
            raise StoreError(f"store {self.path}: {exc} ({hint})") from None
        local.conn, local.pid = conn, os.getpid()
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """Pragmas and schema. Switching a brand-new file to WAL needs an exclusive lock, and SQLite
        answers "locked" at once (no busy wait) while another process is setting up the same file:
        retry that for up to the busy timeout."""
        deadline = time.monotonic() + self.BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                for pragma in self.PRAGMAS:
                    conn.execute(pragma)
                conn.executescript(self.SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))  # jitter: racing processes spread out

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction holding the write lock from its first statement."""
        db = self._db()
        db.execute("begin immediate")
        try:
            yield db
        except BaseException:
            db.execute("rollback")
            raise
        db.execute("commit")

    def close(self) -> None:
        """Close this thread's connection (if this process opened it)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None
