"""The step task: one Celery execution = one attempt of one step (logic lives in step_runner)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from celery_selfheal.cluster_checks import cluster_options
from celery_selfheal.context import Context
from celery_selfheal.leases import Delivery, GateKind, enter, hand_over_to
from celery_selfheal.outcome import INITIAL, OutcomeKind, StepOutcome, time_limits
from celery_selfheal.step_runner import execute_step
from celery_selfheal.wiring.routing import RUN_STEP, default_queue, enqueue_from, worker_queue


class StepRetry(Exception):
    """Carried by ``Task.retry`` so that Flower shows why a step is retried (detector, class,
    strategy, attempt k of n); the message is `retry_message`."""


def retry_message(outcome: StepOutcome) -> str:
    """The readable retry reason, e.g. ``step 'build' attempt 1 of 3 failed (idle_timeout,
    transient_runtime) -> soft_reset: attempt 1 of 3, soft reset in 1s`` (after the arrow: the
    controller's `Decision.reason`).

    ``k of n`` counts within the current recovery round (a hard reset starts a new round); the
    step's overall attempt number follows as ``#N`` when it differs."""
    x = outcome.extra
    k, n, attempt = x.get("attemptInRound"), x.get("maxAttempts"), x.get("attempt")
    of = f" attempt {k} of {n}" if k and n else (f" attempt {attempt}" if attempt else "")
    if attempt and k and attempt != k:
        of += f" (#{attempt})"
    label = ", ".join(str(x[key]) for key in ("detector", "failureClass") if x.get(key))
    why = outcome.reason.removeprefix(label + ": ") if label else outcome.reason  # the controller's own label
    failed = f" failed ({label})" if label else " failed"
    return f"step {x.get('stepId', outcome.step_index)!r}{of}{failed} -> {outcome.strategy}: {why}"


def register_tasks(app: Celery, get_context: Callable[[], Context]) -> Task:
    """Register ``selfheal.run_step`` on ``app`` and return it."""

    # shared=False: a shared task would be copied into every later app, bound to this app's context.
    # Request: long steps on RabbitMQ are acknowledged at start (wiring/step_request.py)
    @app.task(bind=True, name=RUN_STEP, max_retries=None, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True, serializer="json", shared=False,
              Request="celery_selfheal.wiring.step_request:StepRequest")
    def run_step(self: Task, job_id: str, step_index: int, epoch: int, strategy: str = INITIAL,
                 retry_context: dict[str, Any] | None = None, operator: bool = False) -> dict[str, Any]:
        ctx = get_context()
        opts = cluster_options(ctx.settings.worker)
        delivery = Delivery(job_id=job_id, step_index=step_index, epoch=epoch, task_id=self.request.id,
                            retries=self.request.retries, hostname=self.request.hostname or "",
                            strategy=strategy, retry_context=retry_context, operator=operator)
        # the attempt lease: one running attempt per job; a redelivered message does nothing (leases.py)
        gate = enter(ctx, delivery, ttl=opts.lease_ttl, busy_wait=opts.busy_wait, sweep_interval=opts.sweep_interval)
        if gate.kind is GateKind.BUSY:
            hard_limit, soft_limit = self.request.timelimit or (None, None)
            raise self.retry(args=(), kwargs={"job_id": job_id, "step_index": step_index, "epoch": epoch,
                                              "strategy": strategy, "retry_context": retry_context,
                                              "operator": operator},
                             countdown=gate.countdown, queue=default_queue(app), soft_time_limit=soft_limit,
                             time_limit=hard_limit, exc=StepRetry(f"waiting: {gate.reason}"))
        if gate.kind is not GateKind.RUN:
            self.request.chain = None  # a duplicate delivery, or the job failed at the gate
            return {"jobId": job_id, "stepIndex": step_index, "outcome": "stop", "reason": gate.reason}
        try:
            outcome = execute_step(ctx, job_id=job_id, step_index=step_index, epoch=epoch,
                                   strategy=strategy, retry_context=retry_context, task_id=self.request.id,
                                   hostname=self.request.hostname or "",
                                   enqueue=functools.partial(enqueue_from, app), operator=operator,
                                   lease=gate.lease)
            if outcome.kind is OutcomeKind.RETRY:
                assert outcome.budgets is not None
                soft, hard = time_limits(outcome.budgets)
                hostname = self.request.hostname
                queue = worker_queue(hostname) if outcome.same_worker and hostname else default_queue(app)
                if gate.lease is not None and queue != default_queue(app):
                    # if this worker dies before it runs the retry, the sweeper sends it to another one
                    hand_over_to(ctx, gate.lease, delivery, retries=self.request.retries + 1,
                                 strategy=outcome.strategy or INITIAL, retry_context=outcome.retry_context,
                                 ttl=outcome.countdown + opts.pending_grace)
                # args=() explicitly: retry(kwargs=...) would otherwise reuse request.args.
                raise self.retry(args=(), kwargs={"job_id": job_id, "step_index": step_index, "epoch": epoch,
                                                  "strategy": outcome.strategy,
                                                  "retry_context": outcome.retry_context},
                                 countdown=outcome.countdown, queue=queue, soft_time_limit=soft, time_limit=hard,
                                 exc=StepRetry(retry_message(outcome)))
        finally:
            if gate.lease is not None:
                gate.lease.release()
        if outcome.kind is OutcomeKind.STOP:
            self.request.chain = None  # stale, cancelled, parked or failed: the rest of the chain must not run
        return {"jobId": job_id, "stepIndex": step_index, "outcome": outcome.kind.value, "reason": outcome.reason}

    return run_step
