"""The step task: one Celery execution = one attempt of one step (logic lives in `steps.execute`).

The task body is `run_step_body`, an importable function of the bound task; the registered task
only passes its arguments on. It does the Celery side of what the engine decided: the attempt gate,
``Task.retry`` with the envelope on the right queue, stopping the chain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import Celery, Task, states
from celery.exceptions import Retry

from celery_selfheal.cluster.checks import ClusterOptions, cluster_options
from celery_selfheal.cluster.gate import Delivery, GateKind, enter, hand_over_to
from celery_selfheal.context import Context
from celery_selfheal.core.job_state import INITIAL
from celery_selfheal.core.model import FailureClass
from celery_selfheal.errors import ConfigError
from celery_selfheal.jobs import transitions
from celery_selfheal.steps.outcome import OutcomeKind, StepOutcome, time_limits
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


def delivery_of(task: Task, job_id: str, step_index: int, epoch: int, strategy: str,
                retry_context: dict[str, Any] | None, operator: bool) -> Delivery:
    """The message being executed, as the attempt gate sees it."""
    req = task.request
    return Delivery(job_id=job_id, step_index=step_index, epoch=epoch, task_id=req.id, retries=req.retries,
                    hostname=req.hostname or "", strategy=strategy, retry_context=retry_context, operator=operator)


def run_step_body(task: Task, ctx: Context, delivery: Delivery) -> dict[str, Any]:
    """One execution of ``selfheal.run_step``: gate, execute, then continue/retry/stop the chain."""
    try:
        opts = cluster_options(ctx.settings.worker)
    except ConfigError as exc:  # every delivery would raise: end the job, naming the setting
        fail_bad_config(ctx, delivery, exc)
        task.request.chain = None
        return _result(delivery, "stop", str(exc))
    # the attempt lease: one running attempt per job; a redelivered message does nothing (cluster.gate)
    gate = enter(ctx, delivery, ttl=opts.lease_ttl, busy_wait=opts.busy_wait, sweep_interval=opts.sweep_interval,
                 renew_every=opts.renew_every)
    if gate.kind is GateKind.BUSY:
        hard_limit, soft_limit = task.request.timelimit or (None, None)
        raise task.retry(args=(), kwargs=_kwargs(delivery, delivery.strategy, delivery.retry_context,
                                                 operator=delivery.operator),
                         countdown=gate.countdown, queue=default_queue(task.app), soft_time_limit=soft_limit,
                         time_limit=hard_limit, exc=StepRetry(f"waiting: {gate.reason}"))
    if gate.kind is not GateKind.RUN:
        task.request.chain = None  # a duplicate delivery, or the job failed at the gate
        return _result(delivery, "stop", gate.reason)
    # imported here: the engine (git, the supervisor) is a fifth of a CLI command's start-up, and a
    # worker imports it before forking (`wiring.signals`)
    from celery_selfheal.steps.execute import execute_step

    try:
        outcome = execute_step(ctx, delivery.step, task_id=delivery.task_id, hostname=delivery.hostname,
                               enqueue=functools.partial(enqueue_from, task.app), lease=gate.lease, job=gate.job,
                               state=gate.state)
        if outcome.kind is OutcomeKind.RETRY:
            raise retry_step(task, ctx, delivery, outcome, gate.lease, opts)
    except Retry:
        if gate.lease is not None:
            gate.lease.release()
        raise
    except BaseException:
        # not even the failure could be recorded: leave the lease to expire, so that the sweeper
        # records the attempt (or re-sends the message) instead of the job waiting for ever
        if gate.lease is not None:
            gate.lease.abandon()
        raise
    if outcome.kind is OutcomeKind.STOP:
        task.request.chain = None  # stale, cancelled, parked or failed: the rest of the chain must not run
    if gate.lease is not None:
        if outcome.kind is OutcomeKind.NEXT and task.request.chain:
            # Celery sends the chain's next step after this returns: the lease is released only then
            # (`release_after_chain`), so a worker dying in between leaves an expiring lease, and the
            # sweeper completes the step and sends it (`cluster.sweeper.complete_succeeded`)
            task.request.selfheal_lease = gate.lease
        else:
            gate.lease.release()
    return _result(delivery, outcome.kind.value, outcome.reason)


def release_after_chain(task: Task, status: str) -> None:
    """Release the lease `run_step_body` kept for the chain's next step once Celery sent it (it calls
    ``after_return`` after dispatching the chain). If sending failed (``status`` is not SUCCESS),
    the lease is left to expire instead: the sweeper then sends the next step."""
    lease = getattr(task.request, "selfheal_lease", None)
    if lease is None:
        return
    task.request.selfheal_lease = None
    if status == states.SUCCESS:
        lease.release()
    else:
        lease.abandon()


def fail_bad_config(ctx: Context, delivery: Delivery, exc: ConfigError) -> None:
    """End the job (not retryable) when this worker's own settings cannot run any step."""
    job = ctx.store.get_job(delivery.job_id)
    if job is None or job.get("epoch") != delivery.epoch:
        return
    step = (job.get("steps") or [{}])[min(delivery.step_index, len(job.get("steps") or [{}]) - 1)]
    transitions.fail(ctx, delivery.job_id, delivery.epoch, step_id=str(step.get("stepId", "")),
                     step_index=delivery.step_index, failure_class=FailureClass.DETERMINISTIC_CONTRACT.value,
                     reason=f"worker configuration: {exc}", retryable=False, from_status=str(job.get("status")))


def retry_step(task: Task, ctx: Context, delivery: Delivery, outcome: StepOutcome, lease: Any,
               opts: ClusterOptions) -> BaseException:
    """``Task.retry`` of the step with the envelope: soft resets to this worker's own queue, the rest
    to any worker, with the next attempt's time limits. Returns the exception to raise."""
    assert outcome.budgets is not None
    soft, hard = time_limits(outcome.budgets)
    hostname = task.request.hostname
    queue = worker_queue(hostname) if outcome.same_worker and hostname else default_queue(task.app)
    if lease is not None and (queue != default_queue(task.app) or ctx.settings.embedded):
        # if this worker dies before it runs the retry, the sweeper sends it to another one. On the
        # embedded broker every retry needs this: kombu's filesystem transport deletes a message when
        # a worker fetches it, so a countdown held in a killed worker's memory is gone for good
        hand_over_to(ctx, lease, delivery, retries=task.request.retries + 1, strategy=outcome.strategy or INITIAL,
                     retry_context=outcome.retry_context, ttl=outcome.countdown + opts.pending_grace)
    # args=() explicitly: retry(kwargs=...) would otherwise reuse request.args.
    return task.retry(args=(), kwargs=_kwargs(delivery, outcome.strategy, outcome.retry_context),
                      countdown=outcome.countdown, queue=queue, soft_time_limit=soft, time_limit=hard,
                      exc=StepRetry(retry_message(outcome)))


def _kwargs(delivery: Delivery, strategy: str | None, retry_context: Any, **more: Any) -> dict[str, Any]:
    return {"job_id": delivery.job_id, "step_index": delivery.step_index, "epoch": delivery.epoch,
            "strategy": strategy, "retry_context": retry_context, **more}


def _result(delivery: Delivery, outcome: str, reason: str) -> dict[str, Any]:
    return {"jobId": delivery.job_id, "stepIndex": delivery.step_index, "outcome": outcome, "reason": reason}


def register_tasks(app: Celery, get_context: Callable[[], Context]) -> Task:
    """Register ``selfheal.run_step`` on ``app`` and return it."""

    # shared=False: a shared task would be copied into every later app, bound to this app's context.
    # Request: long steps on RabbitMQ are acknowledged at start (wiring/step_request.py)
    @app.task(bind=True, name=RUN_STEP, max_retries=None, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True, serializer="json", shared=False,
              Request="celery_selfheal.wiring.step_request:StepRequest",
              after_return=lambda self, status, *_: release_after_chain(self, status))
    def run_step(self: Task, job_id: str, step_index: int, epoch: int, strategy: str = INITIAL,
                 retry_context: dict[str, Any] | None = None, operator: bool = False) -> dict[str, Any]:
        return run_step_body(self, get_context(),
                             delivery_of(self, job_id, step_index, epoch, strategy, retry_context, operator))

    return run_step
