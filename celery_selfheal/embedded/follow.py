"""Following a job on the embedded default: share the local worker, and never follow a dead one.

`follow_local` is what ``selfheal run``/``follow`` do on the embedded default: join the state dir's
local-worker clients (`LocalClients`), start a worker if none is alive, and while the job's events
stream, look every `WATCH_EVERY` seconds whether a worker still holds its presence lock; if it died
(SIGKILL, OOM), start a new one and say so. The new worker's sweeper then recovers what the dead one
held (its attempt, or a retry waiting for its countdown: `cluster.sweeper`). Leaving, the last
client stops the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.core.job_state import TERMINAL
from celery_selfheal.embedded.local_worker import LocalClients, LocalWorker, worker_running

#: seconds between two looks at the local worker's presence lock
WATCH_EVERY = 1.0


class WorkerWatch:
    """Keeps one live local worker on a state dir for as long as we follow."""

    def __init__(self, ctx: Context, say: Callable[[str], None], *, app_module: str = "celery_selfheal.app",
                 started: list[LocalWorker] | None = None) -> None:
        self.ctx, self.say, self.app_module = ctx, say, app_module
        self.started: list[LocalWorker] = [] if started is None else started

    def ensure(self, *, after_death: bool = False) -> None:
        """Start a local worker unless one is alive."""
        if worker_running(self.ctx.settings):
            return
        if after_death:
            self.say("selfheal: the local worker is gone; starting a new one (it recovers the job's step)")
        worker = LocalWorker(self.ctx.settings, app_module=self.app_module)
        worker.start()
        self.started.append(worker)


def follow_local(ctx: Context, job_id: str, follow_events: Callable[..., Iterator[tuple[int, dict[str, Any]]]],
                 say: Callable[[str], None], *, app_module: str = "celery_selfheal.app",
                 started: list[LocalWorker] | None = None,
                 stop: Callable[[], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """The job's events until it ends, with a live shared local worker all along (module docstring).
    Workers it starts (of ``app_module``) are appended to ``started``; the last client out stops the
    local worker with ``stop`` (default: every CLI-started worker of the state dir)."""
    clients = LocalClients(ctx.settings)
    try:
        watch = WorkerWatch(ctx, say, app_module=app_module, started=started)
        watch.ensure()
        seq = 0
        while True:
            for n, event in follow_events(ctx, job_id, after=seq, timeout=WATCH_EVERY):
                seq = n
                yield n, event
            job = ctx.store.get_job(job_id) or {}
            if job.get("status") in TERMINAL and not ctx.store.pending_control(job_id):
                return
            watch.ensure(after_death=True)
    finally:
        clients.leave(stopper=stop)
