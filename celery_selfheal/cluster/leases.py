"""Attempt leases: at most one running attempt per job, across all workers and hosts.

A step-task message is identified by ``<task id>/<retries>`` (``Task.retry`` keeps the id and bumps
``retries``; a redelivery repeats both); its lease owner adds the worker's hostname. The job's lease
``attempt:<job id>`` is taken by the gate (`cluster.gate.enter`) before anything runs, renewed by the pool child's
renewer thread (`cluster.renewer`) every ``renew_every`` (a second by default) while the attempt
runs, and released when the task ends. When a worker dies its lease stops being renewed and expires; the sweeper
(`cluster.sweeper`) then records the attempt as ``worker_lost`` and sends the step again.

An attempt whose lease is lost (taken over, or not renewed for its fence time: two thirds of the TTL,
shortened by `AttemptLease.fit_kill_grace` so that the runtime is dead before the lease expires) is fenced:
`AttemptLease.lost` turns the supervisor's cancel check on, and the step runner records nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from celery_selfheal.cluster.checks import KILL_MARGIN
from celery_selfheal.cluster.renewer import RENEWER
from celery_selfheal.store.base import StateStore

log = logging.getLogger(__name__)

LEASE_PREFIX = "attempt:"
#: an attempt stops trusting its lease this far into the TTL without a renewal (the rest of the TTL
#: is the time it has to kill its runtime before another worker may take the step over)
FENCE_FRACTION = 2 / 3


def lease_key(job_id: str) -> str:
    """The lease naming the job's running attempt."""
    return f"{LEASE_PREFIX}{job_id}"


def message_id(task_id: str, retries: int) -> str:
    """One task message: ``<task id>/<retries>``."""
    return f"{task_id}/{retries}"


def lease_owner(hostname: str, task_id: str, retries: int) -> str:
    """``<hostname>/<task id>/<retries>``: one message on one worker."""
    return f"{hostname}/{message_id(task_id, retries)}"


class AttemptLease:
    """A held lease, renewed (by the process's renewer thread) from `start` until `release` or `hand_over`."""

    def __init__(self, store: StateStore, key: str, owner: str, *, ttl: float, message: str,
                 clock: Callable[[], float] = time.monotonic, renew_every: float | None = None) -> None:
        self.store, self.key, self.owner, self.ttl, self.message = store, key, owner, ttl, message
        self._clock = clock
        self.renew_every = ttl / 3 if renew_every is None else renew_every
        self.fence = ttl * FENCE_FRACTION
        self._renewed = clock()  # when the last successful renewal (or the acquire) was sent
        self._deadline = self._renewed + self.fence
        self._lost = threading.Event()
        self._lock = threading.Lock()  # a renewal and stopping never overlap
        self._stopped = False
        self._done = False

    def record_fields(self) -> dict[str, str]:
        """Fields the attempt record carries so that duplicates and the sweeper can find it."""
        return {"messageId": self.message, "leaseKey": self.key, "leaseOwner": self.owner}

    def fit_kill_grace(self, kill_grace: float, margin: float = KILL_MARGIN) -> None:
        """Fence early enough that a runtime TERMed, then KILLed after ``kill_grace``, is gone
        ``margin`` seconds before the lease can expire (never less than two renewals)."""
        self.fence = max(min(self.fence, self.ttl - kill_grace - margin), 2 * self.renew_every)
        self._deadline = self._renewed + self.fence

    def start(self) -> None:
        """Start renewing every ``renew_every`` seconds (the process's renewer thread, `cluster.renewer`)."""
        RENEWER.add(self)

    def renew_due(self) -> bool:
        """The renewer's call: renew; False once there is nothing more to renew."""
        return self.renew() or not (self._lost.is_set() or self._stopped)

    def renew(self) -> bool:
        """Renew now; False when the lease is gone (then `lost` stays True), the store failed, or
        renewing was stopped."""
        with self._lock:
            if self._stopped:
                return False
            sent = self._clock()
            try:
                ok = self.store.renew_lease(self.key, self.owner, self.ttl)
            except Exception as exc:  # store unreachable: keep trying until our own deadline passes
                log.warning("celery-selfheal: renewing lease %s failed: %s", self.key, exc)
                return False
            if ok:
                self._renewed = max(self._renewed, sent)
                self._deadline = self._renewed + self.fence
            else:
                self._lost.set()
                log.error("celery-selfheal: lease %s is no longer ours (%s): the attempt stops", self.key,
                          self.owner)
            return ok

    @property
    def lost(self) -> bool:
        """True once the lease was taken by someone else or could not be renewed in time."""
        return self._lost.is_set() or self._clock() > self._deadline

    def confirm(self) -> bool:
        """Renew now and say whether the lease is still ours (call before recording a result)."""
        self.renew()
        return not self.lost

    def _stop_thread(self) -> None:
        RENEWER.remove(self)
        with self._lock:  # waits for a renewal in flight; none starts afterwards
            self._stopped = True

    def release(self) -> None:
        """Stop renewing and drop the lease (idempotent). A handed-over lease stays with its new owner;
        a lost one is left to expire, so that the sweeper finds and records its attempt."""
        self._stop_thread()
        if not self._done and not self.lost:
            self._done = True
            with contextlib.suppress(Exception):  # an unreleased lease just expires
                self.store.release_lease(self.key, self.owner)

    def abandon(self) -> None:
        """Stop renewing but keep the lease: it expires and the sweeper recovers the job."""
        self._stop_thread()
        self._done = True

    def hand_over(self, owner: str, ttl: float) -> bool:
        """Pass the lease to the message that will continue the job (see `cluster.gate.hand_over_to`)."""
        self._stop_thread()
        self._done = True
        try:
            return self.store.release_lease(self.key, self.owner) and self.store.acquire_lease(self.key, owner, ttl)
        except Exception as exc:  # the retry still runs; only its protection against our death is gone
            log.warning("celery-selfheal: handing lease %s over failed: %s", self.key, exc)
            return False
