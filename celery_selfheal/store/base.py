"""The state-store contract shared by the SQLite and Redis backends.

Every record is a JSON-ready ``dict`` (camelCase keys, as in the public contract); the store never
interprets it beyond the few fields named here. Callers redact before they store. Methods are safe
to call from several processes at once (Celery prefork children, the CLI, other hosts for Redis);
the ``expect``/``from_status`` arguments are compare-and-set guards so that handlers which can run
twice (Celery's hard-limit and errback paths) stay idempotent.

A store object may be created before a ``fork()``; backends reopen their connection lazily in the
child (they remember the pid that opened it).
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Record = dict[str, Any]
#: the statuses `finished_jobs` lists (core.job_state.TERMINAL, spelled out: the store has no core import)
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class AttemptWrite:
    """The attempt part of `StateStore.write_job`: with ``from_status`` None, ``changes`` is the whole
    record (as `StateStore.put_attempt`); otherwise they are merged only if the attempt's ``status`` is
    ``from_status`` (as `StateStore.transition_attempt`)."""

    step_index: int
    attempt: int
    changes: Record
    from_status: str | None = None


@dataclass(frozen=True)
class JobSnapshot:
    """`StateStore.get_job_state`: a job and what hangs off it, read together."""

    job: Record | None
    attempts: list[Record]
    pending: list[Record]
    checkpoints: list[Record]
    #: whether the lease asked for was acquired (False when none was asked for)
    leased: bool = False


class WakeListener(Protocol):
    """`StateStore.wake_listener`: readable while a wake-up of its job is unread."""

    def fileno(self) -> int:
        """A file descriptor to select on (read end)."""
        ...

    def drain(self) -> None:
        """Consume the wake-ups received so far (non-blocking)."""
        ...

    def close(self) -> None:
        """Stop listening and release the descriptor (idempotent)."""
        ...


def drain_fd(fd: int) -> None:
    """Read a non-blocking descriptor until it is empty (a listener's `WakeListener.drain`)."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


class StateStore(abc.ABC):
    """Jobs, attempts, events, checkpoints, control requests, audit and leases of all jobs."""

    url: str

    # -- jobs -------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_job(self, job: Record) -> None:
        """Insert a new job (``job["jobId"]`` is the key). Raises ``KeyError`` if it exists."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> Record | None:
        """The job record, or None."""

    @abc.abstractmethod
    def update_job(self, job_id: str, changes: Record, *, expect: Record | None = None) -> bool:
        """Merge ``changes`` into the job atomically, only if every ``expect`` field currently has
        the given value. Returns whether it was applied (False also for an unknown job)."""

    @abc.abstractmethod
    def write_job(self, job_id: str, changes: Record | None = None, *, expect: Record | None = None,
                  step: tuple[int, Record] | None = None, attempt: AttemptWrite | None = None,
                  events: Sequence[Record] = (), checkpoint: tuple[int, int, Record] | None = None,
                  ) -> list[int] | None:
        """One atomic write of a stage of a job: merge ``changes`` into the job, ``step[1]`` into the
        job's ``steps[step[0]]`` entry, write ``attempt``, record ``checkpoint`` (step index, epoch,
        metadata: as `record_checkpoint`, kept if one is already recorded) and append ``events`` in
        order, all or nothing, only if every ``expect`` field has the given value (as in
        `update_job`) and the attempt is in its ``from_status``. Returns the events' sequence numbers
        (``[]`` without events) if applied, None if not (unknown job, a guard failed, or no such step
        entry): then nothing was written, the checkpoint neither."""

    def get_job_state(self, job_id: str, *, lease: tuple[str, str, float] | None = None) -> JobSnapshot:
        """What a step execution reads before it starts, together (a backend may answer in one round
        trip): with ``lease=(key, owner, ttl)`` first ``acquire_lease(key, owner, ttl,
        take_expired=False)``, then the job (or None), its attempts (as `list_attempts`), its pending
        control requests (as `pending_control`) and its active checkpoints (as `list_checkpoints`)."""
        leased = lease is not None and self.acquire_lease(*lease, take_expired=False)
        return JobSnapshot(self.get_job(job_id), self.list_attempts(job_id), self.pending_control(job_id),
                           self.list_checkpoints(job_id), leased)

    @abc.abstractmethod
    def list_jobs(self, limit: int = 100) -> list[Record]:
        """Most recently created first."""

    @abc.abstractmethod
    def page_jobs(self, *, status: str | None = None, limit: int = 50,
                  before: int | None = None) -> tuple[list[Record], int | None]:
        """One page of jobs, most recently created first: those created before position ``before``
        (None: from the newest) and, when ``status`` is given, with that status now. Returns the
        records and the ``before`` of the next page (None when this page is the last). Both
        backends answer from an index (creation order, and status then creation order), so a
        page costs the same with 10 or 100,000 jobs."""

    # -- attempts ---------------------------------------------------------------------------
    @abc.abstractmethod
    def put_attempt(self, job_id: str, step_index: int, attempt: int, record: Record) -> None:
        """Insert or replace one attempt record."""

    @abc.abstractmethod
    def get_attempt(self, job_id: str, step_index: int, attempt: int) -> Record | None:
        """One attempt record, or None."""

    @abc.abstractmethod
    def transition_attempt(
        self, job_id: str, step_index: int, attempt: int, from_status: str, changes: Record
    ) -> bool:
        """Merge ``changes`` only if the attempt's ``status`` is ``from_status``; True if applied."""

    @abc.abstractmethod
    def list_attempts(self, job_id: str, step_index: int | None = None) -> list[Record]:
        """Attempts ordered by (stepIndex, attempt)."""

    # -- events -----------------------------------------------------------------------------
    @abc.abstractmethod
    def append_event(self, job_id: str, event: Record) -> int:
        """Append an event; returns its per-job sequence number (1, 2, 3, ...)."""

    @abc.abstractmethod
    def list_events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Record]]:
        """Events with sequence number > ``after``, in order."""

    # -- checkpoints ------------------------------------------------------------------------
    @abc.abstractmethod
    def record_checkpoint(self, job_id: str, step_index: int, epoch: int, meta: Record) -> bool:
        """Record the checkpoint of a step for an epoch, once: a second call for the same
        (job, step, epoch) changes nothing and returns False (two workers racing)."""

    @abc.abstractmethod
    def list_checkpoints(self, job_id: str, *, include_superseded: bool = False) -> list[Record]:
        """Checkpoints ordered by stepIndex (then epoch). Without ``include_superseded`` only the
        active one per step: the newest epoch not marked superseded."""

    @abc.abstractmethod
    def supersede_checkpoints(self, job_id: str, from_index: int) -> int:
        """Mark every active checkpoint with stepIndex >= from_index superseded (kept as history).
        Returns how many were marked."""

    # -- control requests -------------------------------------------------------------------
    @abc.abstractmethod
    def add_control(self, job_id: str, request: Record) -> str:
        """Queue an operator request (``request`` gets ``requestId`` and ``state='pending'``)."""

    @abc.abstractmethod
    def pending_control(self, job_id: str) -> list[Record]:
        """Requests not yet acknowledged, oldest first."""

    @abc.abstractmethod
    def resolve_control(self, job_id: str, request_id: str, changes: Record) -> bool:
        """Mark a pending request done (merging ``changes``); False if it was not pending."""

    @abc.abstractmethod
    def list_control(self, job_id: str) -> list[Record]:
        """All requests of a job, oldest first."""

    # -- audit ------------------------------------------------------------------------------
    @abc.abstractmethod
    def append_audit(self, job_id: str, record: Record) -> None:
        """Append an audit record (who, when, action, step, reason, outcome)."""

    @abc.abstractmethod
    def list_audit(self, job_id: str) -> list[Record]:
        """Audit records, oldest first."""

    # -- leases -----------------------------------------------------------------------------
    @abc.abstractmethod
    def acquire_lease(self, key: str, owner: str, ttl: float, *, take_expired: bool = True) -> bool:
        """Take ``key`` for ``owner`` for ``ttl`` seconds if free, expired, or already ours; with
        ``take_expired=False`` never over another owner's record, even an expired one (the
        sweeper must record that owner's attempt first)."""

    @abc.abstractmethod
    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Extend our lease; False if it is no longer ours."""

    @abc.abstractmethod
    def release_lease(self, key: str, owner: str) -> bool:
        """Drop our lease; False if it was not ours."""

    @abc.abstractmethod
    def get_lease(self, key: str) -> Record | None:
        """``{"owner": ..., "expiresAt": epoch_seconds}`` of a live lease, else None."""

    @abc.abstractmethod
    def expired_leases(self, prefix: str) -> list[tuple[str, Record]]:
        """Leases under ``prefix`` whose time ran out and that nobody released."""

    # -- retention (``selfheal gc``) ----------------------------------------------------------
    @abc.abstractmethod
    def finished_jobs(self, before: str, limit: int = 1000) -> list[Record]:
        """Jobs whose ``status`` is succeeded, failed or cancelled and whose ``finishedAt`` is earlier
        than ``before`` (ISO-8601 UTC as `events.bus.utc_now_iso` writes it), oldest created first."""

    @abc.abstractmethod
    def delete_job(self, job_id: str) -> bool:
        """Remove the job and everything under it: attempts, events, checkpoints, control requests,
        audit, and its leases (names ending in ``:<job id>``). False if there was no such job."""

    # -- wake-ups (push instead of poll) -----------------------------------------------------
    def wake(self, job_id: str) -> None:  # noqa: B027 - a store that cannot push is polled
        """Tell the attempts of ``job_id`` running anywhere to read the job now (called once a
        preempting request is stored). Never raises: a wake-up lost only costs the attempt's
        fallback poll."""

    def wake_listener(self, job_id: str) -> WakeListener | None:
        """A listener woken by `wake` of ``job_id`` (in any process this store reaches), or None
        when this store cannot push (the caller then polls). The caller closes it."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_store(url: str) -> StateStore:
    """Open the backend named by ``url``: ``sqlite:///path/to/file.db`` or ``redis://host:port/db``."""
    from celery_selfheal.errors import ConfigError

    if url.startswith("sqlite://"):
        from celery_selfheal.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from celery_selfheal.store.redis import RedisStore

        return RedisStore(url)
    raise ConfigError(f"unsupported store URL {url!r} (use sqlite:///PATH or redis://HOST:PORT/DB)",
                      where="SELFHEAL_STORE_URL")
