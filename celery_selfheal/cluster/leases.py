"""Attempt leases: at most one running attempt per job, across all workers and hosts.

A step-task message is identified by ``<task id>/<retries>`` (``Task.retry`` keeps the id and bumps
``retries``; a redelivery repeats both); its lease owner adds the worker's hostname. The job's lease
``attempt:<job id>`` is taken by the gate (`enter`) before anything runs, renewed by the pool child's
renewer thread (`cluster.renewer`) every ``renew_every`` (a second by default) while the attempt
runs, and released when the task ends. When a worker dies its lease stops being renewed and expires; the sweeper
(`cluster.sweeper`) then records the attempt as ``worker_lost`` and sends the step again.

The gate makes redelivered messages harmless (acks_late brings a dead worker's message back):

1. it takes the lease if it is free or already its own (same message, same worker), in the same
   store call that reads the job (`StateStore.get_job_state`); a live lease of someone else, or an
   expired one the sweeper has not handled yet, makes it wait (a short poll, then a re-queue);
2. a message whose id is on an attempt record, or that the sweeper re-sent (``recoveredMessages``
   on the job), or whose step already succeeded in this epoch, is a duplicate: it does nothing (and
   gives the lease back; one its own earlier run died holding is left to expire for the sweeper);
3. holding the lease it records itself as the job's ``inflight`` message, so that the sweeper can
   re-send it if its worker dies before the attempt starts; deliveries that died that way are
   counted and end the job after `MAX_PRESTART_LOSSES`, so nothing loops forever.

An attempt whose lease is lost (taken over, or not renewed for its fence time: two thirds of the TTL,
shortened by `AttemptLease.fit_kill_grace` so that the runtime is dead before the lease expires) is fenced:
`AttemptLease.lost` turns the supervisor's cancel check on, and the step runner records nothing.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from celery_selfheal.cluster.checks import KILL_MARGIN
from celery_selfheal.cluster.renewer import RENEWER
from celery_selfheal.context import Context
from celery_selfheal.core.admission import StepDelivery
from celery_selfheal.core.job_state import is_terminal
from celery_selfheal.core.model import FailureClass
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs import transitions
from celery_selfheal.jobs.records import update_job
from celery_selfheal.store.base import JobSnapshot, StateStore

log = logging.getLogger(__name__)

LEASE_PREFIX = "attempt:"
#: an attempt stops trusting its lease this far into the TTL without a renewal (the rest of the TTL
#: is the time it has to kill its runtime before another worker may take the step over)
FENCE_FRACTION = 2 / 3
#: deliveries of a step (per epoch) whose worker died before the attempt started, before the job fails
MAX_PRESTART_LOSSES = 3
_POLL = 0.1


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

    def guard(self, check: Callable[[], bool]) -> Callable[[], bool]:
        """A cancel check that also fires when the lease is lost."""
        return lambda: self.lost or check()

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
        """Pass the lease to the message that will continue the job (see `hand_over_to`)."""
        self._stop_thread()
        self._done = True
        try:
            return self.store.release_lease(self.key, self.owner) and self.store.acquire_lease(self.key, owner, ttl)
        except Exception as exc:  # the retry still runs; only its protection against our death is gone
            log.warning("celery-selfheal: handing lease %s over failed: %s", self.key, exc)
            return False


class GateKind(str, enum.Enum):
    """What the step task does after the gate."""

    RUN = "run"              # run the step (with ``lease``, or without one when the job is over/stale)
    DUPLICATE = "duplicate"  # a redelivery of a message that already ran or was re-sent: do nothing
    BUSY = "busy"            # another message holds the job: re-queue after ``countdown``
    FAILED = "failed"        # the step lost its worker too often before starting: the job failed


@dataclass(frozen=True)
class Gate:
    """The gate's answer."""

    kind: GateKind
    reason: str = ""
    lease: AttemptLease | None = None
    countdown: float = 0.0
    #: the job record as read once the lease was held (saves the step execution a read)
    job: Mapping[str, Any] | None = None
    #: the job with its attempts, pending operator requests and checkpoints, read with the lease
    state: JobSnapshot | None = None


@dataclass(frozen=True)
class Delivery:
    """The step-task message at the gate."""

    job_id: str
    step_index: int
    epoch: int
    task_id: str
    retries: int
    hostname: str
    strategy: str
    retry_context: Mapping[str, Any] | None = None
    operator: bool = False

    @property
    def message(self) -> str:
        return message_id(self.task_id, self.retries)

    @property
    def step(self) -> StepDelivery:
        """What the step execution needs of this message."""
        return StepDelivery(job_id=self.job_id, step_index=self.step_index, epoch=self.epoch,
                            strategy=self.strategy, retry_context=self.retry_context, operator=self.operator)

    @property
    def owner(self) -> str:
        return lease_owner(self.hostname, self.task_id, self.retries)

    def inflight(self, owner: str, message: str, deliveries: int) -> dict[str, Any]:
        """The job's ``inflight`` record for this message (or the retry it hands over to)."""
        return {"messageId": message, "owner": owner, "stepIndex": self.step_index, "epoch": self.epoch,
                "strategy": self.strategy, "retryContext": dict(self.retry_context) if self.retry_context else None,
                "operator": self.operator, "deliveries": deliveries, "at": utc_now_iso()}


def duplicate_reason(store: StateStore, job: Mapping[str, Any], message: str, step_index: int,
                     epoch: int, attempts: list[dict[str, Any]] | None = None) -> str | None:
    """Why ``message`` must not run (it already did, or was re-sent by the sweeper), else None.
    ``attempts``: the job's attempt records if the caller has them (else they are read)."""
    if message in (job.get("recoveredMessages") or []):
        return f"message {message} was re-sent by lost-worker recovery"
    steps = job.get("steps") or []
    if job.get("epoch") == epoch and step_index < len(steps) and steps[step_index].get("status") == "succeeded":
        return f"step {step_index} already succeeded in epoch {epoch}"
    for record in store.list_attempts(job["jobId"]) if attempts is None else attempts:
        if record.get("messageId") == message:
            return f"message {message} already ran attempt {record['attempt']} ({record.get('status')})"
    return None


def _lease_state(store: StateStore, key: str, owner: str) -> str:
    """``free`` (or ours), ``busy`` (live, someone else's) or ``expired`` (someone else's, not swept)."""
    live = store.get_lease(key)
    if live is not None:
        return "free" if live.get("owner") == owner else "busy"
    stale = [info for name, info in store.expired_leases(key) if name == key]
    return "expired" if stale and stale[0].get("owner") != owner else "free"


def _unguarded(job: Mapping[str, Any] | None, delivery: Delivery) -> bool:
    """The job is gone, over or at another epoch: the step runner stops the message, no lease needed."""
    return job is None or is_terminal(job.get("status")) or job.get("epoch") != delivery.epoch


def enter(ctx: Context, delivery: Delivery, *, ttl: float, busy_wait: float, sweep_interval: float,
          sleep: Callable[[float], None] = time.sleep, renew_every: float | None = None) -> Gate:
    """Let a step-task message in (with the job's lease), or say why it must not run (module docstring).

    One store call tries the lease (free or ours; another owner's, even expired, is never taken here:
    the sweeper records that owner's attempt first) and reads the job with everything the step needs.
    A message that does not get the lease looks at what it read: a duplicate does not wait for a
    lease it will never need."""
    store, key, owner, message = ctx.store, lease_key(delivery.job_id), delivery.owner, delivery.message
    deadline = time.monotonic() + busy_wait
    while not (snap := store.get_job_state(delivery.job_id, lease=(key, owner, ttl))).leased:
        if _unguarded(snap.job, delivery):
            return Gate(GateKind.RUN, reason="nothing to guard")  # the step runner stops it
        assert snap.job is not None
        why = duplicate_reason(store, snap.job, message, delivery.step_index, delivery.epoch, snap.attempts)
        if why is not None:
            log.warning("celery-selfheal: job %s: duplicate delivery of message %s does nothing: %s",
                        delivery.job_id, message, why)
            return Gate(GateKind.DUPLICATE, reason=why)
        if time.monotonic() >= deadline:
            state = _lease_state(store, key, owner)
            holder = (store.get_lease(key) or {}).get("owner", "a lost worker")
            return Gate(GateKind.BUSY, reason=f"job {delivery.job_id} is held by {holder}",
                        countdown=sweep_interval if state == "expired" else 1.0)
        sleep(_POLL)
    lease = AttemptLease(store, key, owner, ttl=ttl, message=message, renew_every=renew_every)
    try:
        return _admit(ctx, delivery, lease, snap)
    except BaseException:
        lease.release()
        raise


def _admit(ctx: Context, delivery: Delivery, lease: AttemptLease, snap: JobSnapshot) -> Gate:
    job, attempts = snap.job, snap.attempts  # read with the lease: no one else adds an attempt now
    if _unguarded(job, delivery):
        lease.release()
        return Gate(GateKind.RUN, reason="nothing to guard")  # the step runner stops it
    assert job is not None
    why = duplicate_reason(ctx.store, job, delivery.message, delivery.step_index, delivery.epoch, attempts)
    if why is not None:  # it ran before we got the lease
        log.warning("celery-selfheal: job %s: duplicate delivery of message %s does nothing: %s",
                    delivery.job_id, delivery.message, why)
        if any(a.get("status") == "running" and a.get("leaseOwner") == delivery.owner for a in attempts):
            lease.abandon()  # its earlier run died holding this very lease: it expires, the sweeper records it
        else:
            lease.release()
        return Gate(GateKind.DUPLICATE, reason=why)
    before = job.get("inflight") or {}
    earlier = before.get("deliveries", 0) if before.get("messageId") == delivery.message else 0
    inflight = delivery.inflight(delivery.owner, delivery.message, earlier + 1)
    update_job(ctx, delivery.job_id, inflight=inflight)
    if earlier and not note_prestart_loss(ctx, delivery.job_id, delivery.step_index, delivery.epoch,
                                          why=f"message {delivery.message} redelivered"):
        lease.release()
        return Gate(GateKind.FAILED, reason="the step's worker died before the attempt started, too often")
    lease.start()
    if earlier:
        return Gate(GateKind.RUN, lease=lease)
    return Gate(GateKind.RUN, lease=lease, job={**job, "inflight": inflight},
                state=replace(snap, job={**job, "inflight": inflight}))


def note_prestart_loss(ctx: Context, job_id: str, step_index: int, epoch: int, *, why: str) -> bool:
    """Count one delivery of the step that died before its attempt started; False (and the job
    failed, retryable) once there were more than `MAX_PRESTART_LOSSES` in this epoch."""
    job = ctx.store.get_job(job_id) or {}
    losses = dict(job.get("prestartLosses") or {})
    slot = f"{step_index}:{epoch}"
    losses[slot] = losses.get(slot, 0) + 1
    update_job(ctx, job_id, prestartLosses=losses)
    log.warning("celery-selfheal: job %s step %s: worker lost before the attempt started (%s), %s of %s",
                job_id, step_index, why, losses[slot], MAX_PRESTART_LOSSES)
    if losses[slot] <= MAX_PRESTART_LOSSES:
        return True
    reason = f"worker lost {losses[slot]} times before an attempt of step {step_index} started"
    transitions.fail(ctx, job_id, epoch, step_id=job["steps"][step_index]["stepId"], step_index=step_index,
                     failure_class=FailureClass.TRANSIENT_RUNTIME.value, reason=reason, retryable=True,
                     detector="worker_lost", from_status=str(job.get("status")))
    return False


def hand_over_to(ctx: Context, lease: AttemptLease, delivery: Delivery, *, retries: int, strategy: str,
                 retry_context: Mapping[str, Any] | None, ttl: float) -> bool:
    """Pass the job's lease to the retry this worker is about to send to its own queue, so that if
    this worker dies before running it the sweeper re-sends it to any worker (else it would sit in a
    queue nobody reads)."""
    follow = Delivery(job_id=delivery.job_id, step_index=delivery.step_index, epoch=delivery.epoch,
                      task_id=delivery.task_id, retries=retries, hostname=delivery.hostname,
                      strategy=strategy, retry_context=retry_context)
    update_job(ctx, delivery.job_id, inflight=follow.inflight(follow.owner, follow.message, 0))
    return lease.hand_over(follow.owner, ttl)
