"""Queues and chains: how a job's steps become Celery messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery, chain

from celery_selfheal.jobs.records import step_budgets
from celery_selfheal.steps.outcome import time_limits

RUN_STEP = "selfheal.run_step"
WORKER_QUEUE_PREFIX = "selfheal.w."


def worker_queue(hostname: str) -> str:
    """The queue only one worker consumes: soft resets go back to the worker with the workspace."""
    return f"{WORKER_QUEUE_PREFIX}{hostname}"


def default_queue(app: Celery) -> str:
    """The queue any worker consumes (the app's default queue)."""
    return str(app.conf.task_default_queue)


def step_signature(app: Celery, job: Mapping[str, Any], step_index: int, **kwargs: Any) -> Any:
    """An immutable signature of one step execution with its per-attempt time limits."""
    soft, hard = time_limits(step_budgets(job, step_index))
    body = {"job_id": job["jobId"], "step_index": step_index, "epoch": job["epoch"], **kwargs}
    return app.signature(RUN_STEP, kwargs=body, immutable=True,
                         soft_time_limit=soft, time_limit=hard, queue=default_queue(app))


def enqueue_from(app: Celery, job: Mapping[str, Any], step_index: int, *, countdown: float = 0.0,
                 queue: str | None = None, **first_kwargs: Any) -> str:
    """Send the chain of steps ``step_index..n-1`` of ``job`` (at its current epoch); returns the
    first task's id. ``first_kwargs`` (strategy, retry_context) apply to the first step only."""
    sigs = [step_signature(app, job, i, **(first_kwargs if i == step_index else {}))
            for i in range(step_index, len(job["steps"]))]
    options: dict[str, Any] = {"countdown": countdown} if countdown else {}
    if queue:
        sigs[0] = sigs[0].set(queue=queue)
    result = chain(*sigs).apply_async(**options) if len(sigs) > 1 else sigs[0].apply_async(**options)
    first = result
    while getattr(first, "parent", None) is not None:
        first = first.parent
    return str(first.id)
