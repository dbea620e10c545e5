"""Worker signal handlers: per-worker queue, pool warning, hard-limit cleanup, fork safety.

Celery facts this relies on (DESIGN section 4): time limits only exist on the prefork pool; on a hard
limit the pool child is SIGKILLed, ``Task.on_failure`` is not called and ``task_failure`` fires in the
MainProcess without request context, possibly twice. So the handler works from our own registry
(`running.RunningAttempts`) and is idempotent (the attempt's status moves once, by CAS).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery import Celery
from celery.signals import celeryd_after_setup, task_failure, worker_init, worker_process_init

from celery_selfheal.context import Context
from celery_selfheal.runtime.containment import become_subreaper
from celery_selfheal.runtime.process_group import kill_process_group
from celery_selfheal.steps.running import RunningAttempts
from celery_selfheal.wiring.routing import worker_queue

log = logging.getLogger(__name__)

POOLS_WITH_TIME_LIMITS = ("prefork", "processes")


def pool_name(worker: Any) -> str:
    """The short name of a worker's pool class (``prefork``, ``solo``, ``threads``, ...)."""
    cls = getattr(worker, "pool_cls", None)
    if isinstance(cls, str):
        return cls.rsplit(":", 1)[-1].lower()
    module = getattr(cls, "__module__", "") or ""
    return module.rsplit(".", 1)[-1].lower()


def connect_signals(app: Celery, get_context: Callable[[], Context], reset_context: Callable[[], None],
                    on_worker_context: Callable[[Context, str], None]) -> None:
    """Connect the handlers, only for workers of ``app``."""

    @celeryd_after_setup.connect(weak=False)
    def add_worker_queue(sender: str, instance: Any, **_: Any) -> None:
        if instance.app is not app:
            return
        instance.app.amqp.queues.select_add(worker_queue(sender))

    @worker_init.connect(weak=False)
    def check_pool(sender: Any = None, **_: Any) -> None:
        if sender is None or getattr(sender, "app", None) is not app:
            return
        ctx = get_context()
        ctx.redactor.prepare()  # before the fork: the children inherit the compiled catalog
        import celery_selfheal.steps.execute  # noqa: F401  (and the engine's modules, imported once)
        settings = ctx.settings
        settings.ensure_dirs()
        from celery_selfheal.embedded.local_worker import hold_presence

        hold_presence(settings, getattr(sender, "hostname", "") or str(os.getpid()))
        # the MainProcess emits events too (hard-limit handler): send them as Celery events as well
        on_worker_context(get_context(), getattr(sender, "hostname", "") or "")
        name = pool_name(sender)
        if name and not any(p in name for p in POOLS_WITH_TIME_LIMITS) and name != "asynpool":
            log.warning("celery-selfheal: the %r pool has no time limits; the hard backstop for hung "
                        "attempts only works on the prefork pool (in-process watchdogs still apply)", name)

    @worker_process_init.connect(weak=False)
    def after_fork(**_: Any) -> None:
        # A pool child runs one attempt at a time: its orphans are that attempt's (containment).
        become_subreaper()
        # A forked pool child must not share the parent's store connection.
        reset_context()
        ctx = get_context()
        on_worker_context(ctx, "")

    @task_failure.connect(weak=False)
    def on_hard_limit(sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any) -> None:
        if not isinstance(exception, TimeLimitExceeded) or task_id is None:
            return
        ctx = get_context()
        entry = RunningAttempts(ctx.settings.run_dir).get(task_id)
        if entry is None:
            return
        pgid = entry.get("pgid")
        if isinstance(pgid, int) and pgid > 1:
            kill_process_group(pgid, grace=1.0)
        from celery_selfheal.steps.lost import finish_lost_attempt

        finish_lost_attempt(ctx, app, entry, detector="wall_timeout", reason="Celery hard time limit")
        RunningAttempts(ctx.settings.run_dir).unregister(task_id)
