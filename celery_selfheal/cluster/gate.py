"""The attempt gate: lets a step-task message in with the job's lease (`cluster.leases`), or says
why it must not run.

It makes redelivered messages harmless (acks_late brings a dead worker's message back):

1. it takes the lease if it is free or already its own (same message, same worker), in the same
   store call that reads the job (`StateStore.get_job_state`); a live lease of someone else, or an
   expired one the sweeper has not handled yet, makes it wait (a short poll, then a re-queue);
2. a message whose id is on an attempt record, or that the sweeper re-sent (``recoveredMessages``
   on the job), or whose step already succeeded in this epoch, is a duplicate: it does nothing (and
   gives the lease back; one its own earlier run died holding, mid-attempt or before Celery sent the
   chain's next step, is left to expire for the sweeper);
3. holding the lease it records itself as the job's ``inflight`` message, so that the sweeper can
   re-send it if its worker dies before the attempt starts; deliveries that died that way are
   counted and end the job after `MAX_PRESTART_LOSSES`, so nothing loops forever.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from celery_selfheal.cluster.leases import AttemptLease, lease_key, lease_owner, message_id
from celery_selfheal.context import Context
from celery_selfheal.core.admission import StepDelivery
from celery_selfheal.core.job_state import is_terminal
from celery_selfheal.core.model import FailureClass
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs import transitions
from celery_selfheal.jobs.records import update_job
from celery_selfheal.store.base import JobSnapshot, StateStore

log = logging.getLogger(__name__)

#: deliveries of a step (per epoch) whose worker died before the attempt started, before the job fails
MAX_PRESTART_LOSSES = 3
_POLL = 0.1


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
        if _died_holding(job, attempts, delivery):
            lease.abandon()  # its earlier run died holding this very lease: it expires, the sweeper recovers it
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


def _died_holding(job: Mapping[str, Any], attempts: list[dict[str, Any]], delivery: Delivery) -> bool:
    """This message's earlier run may have died holding the job's lease: mid-attempt, or after its
    step's success was recorded but before Celery sent the chain's next step (the lease is released
    only after that send, and the job's ``inflight`` message is still this one). Its lease must then
    expire for the sweeper (`cluster.sweeper.recover_job`), not be given back by this duplicate."""
    inflight = job.get("inflight") or {}
    if inflight.get("messageId") == delivery.message and inflight.get("owner") == delivery.owner:
        return True
    return any(a.get("status") == "running" and a.get("leaseOwner") == delivery.owner for a in attempts)


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
