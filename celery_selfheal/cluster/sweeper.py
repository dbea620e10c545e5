"""The lost-worker sweeper: every worker looks for attempt leases that nobody renews any more.

A running attempt's lease (``attempt:<job id>``, see `celery_selfheal.cluster.leases`) is renewed by its
pool child every ``ttl / 3``. When a worker dies (SIGKILL of the whole worker, OOM, host gone, or
just one pool child killed) its leases expire. Each worker runs a `Sweeper`: every
``sweep_interval`` it lists expired ``attempt:`` leases and tries to take each one; the store's
acquire is atomic, so exactly one worker recovers a job:

- an attempt record still ``running`` is recorded as failed with detector ``worker_lost`` (class
  ``transient_runtime``) through the same controller as any failure, and the step is sent again to
  any worker, with a workspace rebuilt from the checkpoints (`steps.lost.finish_lost_attempt`);
  the lost attempts count against the step's budgets, so a step that always kills its worker ends;
- a message that held the lease but never got to start its attempt (the job's ``inflight`` record:
  its worker died while preparing the workspace, or before running a retry pinned to its own queue)
  is sent again to any worker and listed in the job's ``recoveredMessages``, so that the original,
  if Celery ever redelivers it, does nothing.

Why a daemon thread in the MainProcess, started on ``worker_ready``: the pool children are forked
by then and the thread never runs in them; its store is its own (no lock or socket shared with code
that runs around a later fork); a blocking store call (Redis restarting) stalls only the sweeper,
not the worker's event loop, as a Celery timer in the consumer would.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, worker_ready, worker_shutdown

from celery_selfheal.cluster.checks import ClusterOptions, cluster_options, configure_app, startup_warnings
from celery_selfheal.cluster.gate import note_prestart_loss
from celery_selfheal.cluster.leases import LEASE_PREFIX
from celery_selfheal.context import Context, build_context
from celery_selfheal.core.budgets import env_overrides, resolve_budgets
from celery_selfheal.core.job_state import INITIAL, TERMINAL
from celery_selfheal.core.model import Detector, Strategy
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs.records import update_job
from celery_selfheal.settings import Settings
from celery_selfheal.steps.outcome import OutcomeKind
from celery_selfheal.steps.running import RunningAttempts
from celery_selfheal.wiring.routing import enqueue_from

log = logging.getLogger(__name__)

#: the failure text of a lost attempt: constant, so that a step that keeps killing its worker has
#: the same failure signature every time and the controller sees "no progress"
LOST_REASON = "worker lost: the attempt's lease expired"
#: seconds between two workspace-retention passes of one worker
PRUNE_EVERY = float(os.environ.get("SELFHEAL_RETENTION_INTERVAL_SECONDS", "300"))


def recover_job(ctx: Context, app: Celery, job_id: str, *, dead_owner: str) -> bool:
    """Recover a job whose attempt lease expired (the caller holds that lease). True if it acted."""
    job = ctx.store.get_job(job_id)
    if job is None:
        return False
    attempts = ctx.store.list_attempts(job_id)
    running = [a for a in attempts if a.get("status") == "running"]
    for record in running:
        _forget_local(ctx, record)
        if job["status"] in TERMINAL or record.get("epoch", 0) != job.get("epoch"):
            # the job moved on (operator rerun, cancel): close the record, nothing to retry
            ctx.store.transition_attempt(job_id, record["stepIndex"], record["attempt"], "running", {
                "status": "lost", "detector": Detector.WORKER_LOST.value, "finishedAt": utc_now_iso()})
            continue
        entry = {"jobId": job_id, "stepIndex": record["stepIndex"], "attempt": record["attempt"],
                 "epoch": record.get("epoch", 0), "pgid": 0}
        log.warning("celery-selfheal: job %s: lease of %s expired with attempt %s of step %s running",
                    job_id, record.get("leaseOwner") or dead_owner, record["attempt"], record["stepIndex"])
        from celery_selfheal.steps.lost import finish_lost_attempt  # the engine: not at install (CLI start-up)

        finish_lost_attempt(ctx, app, entry, detector=Detector.WORKER_LOST.value, reason=LOST_REASON)
    if running:
        return True
    if complete_succeeded(ctx, app, job, attempts, dead_owner=dead_owner):
        return True
    return resend_inflight(ctx, app, job, attempts, dead_owner=dead_owner)


def complete_succeeded(ctx: Context, app: Celery, job: Mapping[str, Any], attempts: list[dict[str, Any]], *,
                       dead_owner: str) -> bool:
    """The dead worker's attempt was recorded succeeded but its task never returned (killed before
    marking the step, or before the chain sent the next step; the message is still the job's
    ``inflight`` one, so no later step passed the gate): finish the step and send the next one.
    True if it acted."""
    inflight = job.get("inflight") or {}
    message = inflight.get("messageId")
    if not message or inflight.get("owner") != dead_owner or job["status"] in TERMINAL:
        return False
    done = [a for a in attempts if a.get("messageId") == message and a.get("status") == "succeeded"
            and a.get("epoch", 0) == job.get("epoch")]
    if not done:
        return False
    idx = int(done[0]["stepIndex"])
    steps = job.get("steps") or []
    if idx >= len(steps):
        return False
    if steps[idx].get("status") == "succeeded" and any(a.get("stepIndex") == idx + 1 for a in attempts):
        return False  # the next step has begun: its message was sent
    # compare-and-set on the inflight record: one sweeper completes the step, even if two got here
    if not update_job(ctx, job["jobId"], expect={"inflight": inflight}, inflight=None):
        return False
    log.warning("celery-selfheal: job %s: step %s succeeded but its worker %s died before moving on; "
                "completing it", job["jobId"], idx, dead_owner)
    from celery_selfheal.steps.lost import complete_lost_success

    outcome = complete_lost_success(ctx, job, done[0])
    if outcome is OutcomeKind.NEXT:
        enqueue_from(app, ctx.store.get_job(job["jobId"]) or job, idx + 1)
    return True


def resend_inflight(ctx: Context, app: Celery, job: Mapping[str, Any], attempts: list[dict[str, Any]], *,
                    dead_owner: str) -> bool:
    """Send the job's ``inflight`` message again if its lease died before it started an attempt."""
    inflight = job.get("inflight") or {}
    message = inflight.get("messageId")
    if not message or inflight.get("owner") != dead_owner:
        return False
    if any(a.get("messageId") == message for a in attempts):
        return False  # it ran; what followed was sent by it (or by the branch above)
    if job["status"] in TERMINAL or inflight.get("epoch") != job.get("epoch"):
        return False
    job_id, step_index, epoch = job["jobId"], int(inflight["stepIndex"]), int(inflight["epoch"])
    recovered = [*(job.get("recoveredMessages") or []), message]
    # compare-and-set on the inflight record: one sweeper re-sends, even if two got here
    if not update_job(ctx, job_id, expect={"inflight": inflight}, inflight=None, recoveredMessages=recovered):
        return False
    if inflight.get("deliveries", 0) and not note_prestart_loss(ctx, job_id, step_index, epoch,
                                                                why=f"lease of {dead_owner} expired"):
        return True
    strategy = inflight.get("strategy") or INITIAL
    retry_context = inflight.get("retryContext")
    if strategy == Strategy.SOFT_RESET.value:  # its workspace is on the lost worker
        strategy = Strategy.QUEUE_RETRY.value
        retry_context = {**retry_context, "strategy": strategy} if retry_context else None
    log.warning("celery-selfheal: job %s: message %s of step %s lost with %s before it started; sent again",
                job_id, message, step_index, dead_owner)
    enqueue_from(app, ctx.store.get_job(job_id) or job, step_index, strategy=strategy,
                 retry_context=retry_context, operator=bool(inflight.get("operator")))
    return True


def _forget_local(ctx: Context, record: Mapping[str, Any]) -> None:
    """Drop a dead attempt from this host's running registry (``selfheal_active``), if it is there."""
    registry = RunningAttempts(ctx.settings.run_dir)
    task_id = record.get("taskId")
    entry = registry.get(task_id) if task_id else None
    if entry is not None and entry.get("leaseOwner") == record.get("leaseOwner"):
        registry.unregister(str(task_id))


class Sweeper:
    """The periodic look at expired attempt leases of one worker (a daemon thread)."""

    def __init__(self, app: Celery, ctx: Context, hostname: str, opts: ClusterOptions) -> None:
        self.app, self.ctx, self.opts = app, ctx, opts
        self.owner = f"sweeper:{hostname or os.getpid()}"
        self.hostname = hostname or str(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> list[str]:
        """One pass; returns the ids of the jobs it recovered."""
        store, done = self.ctx.store, []
        for key, info in store.expired_leases(LEASE_PREFIX):
            if not store.acquire_lease(key, self.owner, self.opts.lease_ttl):
                continue  # another worker's sweeper won, or the owner renewed just now
            job_id = key[len(LEASE_PREFIX):]
            try:
                if recover_job(self.ctx, self.app, job_id, dead_owner=str(info.get("owner", ""))):
                    done.append(job_id)
            except Exception:  # keep the lease: it expires and a later sweep tries again
                log.exception("celery-selfheal: recovering job %s failed; will retry", job_id)
                continue
            store.release_lease(key, self.owner)
        if self.ctx.settings.embedded:  # messages a dead local worker had fetched (no lease held them)
            from celery_selfheal.embedded.recovery import resend_lost

            done += resend_lost(self.ctx, self.app, self.hostname)
        return done

    def _run(self) -> None:
        next_prune = 0.0
        while not self._stop.wait(self.opts.sweep_interval):
            try:
                self.sweep_once()
            except Exception as exc:  # store unreachable: try again next time
                log.warning("celery-selfheal: lost-worker sweep failed: %s", exc)
            if time.monotonic() >= next_prune:  # [retention]: at most every PRUNE_EVERY seconds
                next_prune = time.monotonic() + PRUNE_EVERY
                self.prune_once()

    def prune_once(self) -> list[Any]:
        """Remove this host's workspaces of long-succeeded jobs (``[retention]``), if configured."""
        from celery_selfheal.jobs.retention import prune_succeeded_workspaces, workspace_max_age

        try:
            max_age = workspace_max_age(dict(self.ctx.settings.retention))
            gone = [] if max_age is None else prune_succeeded_workspaces(self.ctx, max_age)
        except Exception as exc:  # a bad value or the store away: the sweeper goes on
            log.warning("celery-selfheal: workspace retention failed: %s", exc)
            return []
        if gone:
            log.info("celery-selfheal: removed %d workspaces of succeeded jobs past retention", len(gone))
        return gone

    def start(self) -> None:
        """Start sweeping every ``sweep_interval`` seconds."""
        self._thread = threading.Thread(target=self._run, name="selfheal-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.opts.sweep_interval + 5)


def worker_budgets(settings: Settings) -> Any:
    """The budgets a job gets from this worker's config.toml and env (before job overrides)."""
    return resolve_budgets(("config.toml [selfheal]", dict(settings.budget_config)),
                           ("env", env_overrides(os.environ)))


def connect_recovery(app: Celery, get_settings: Settings | Callable[[], Settings],
                     context_factory: Callable[[str], Context] | None = None) -> None:
    """At worker start: apply the visibility timeout, log the start-up warnings, run the sweeper.
    ``context_factory(hostname)`` builds the sweeper's own context (default: from the settings).
    ``get_settings`` may be a callable: a user's app resolves its settings when it is configured."""
    started: list[Sweeper] = []

    def current() -> Settings:
        return get_settings() if callable(get_settings) else get_settings

    @celeryd_init.connect(weak=False)
    def configure(sender: Any = None, instance: Any = None, conf: Any = None, **_: Any) -> None:
        if getattr(instance, "app", None) is not app:
            return
        settings = current()
        opts, app_conf = cluster_options(settings.worker), instance.app.conf
        broker_url = str(app_conf.broker_url or settings.broker_url)
        configure_app(app_conf, broker_url, opts)
        for warning in startup_warnings(
                broker_url=broker_url, store_url=settings.store_url,
                transport_options=app_conf.broker_transport_options,
                acks_on_failure_or_timeout=bool(app_conf.task_acks_on_failure_or_timeout),
                budgets=worker_budgets(settings), opts=opts):
            log.warning("celery-selfheal: %s", warning)

    @worker_ready.connect(weak=False)
    def start(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        hostname = str(getattr(sender, "hostname", "") or "")
        ctx = context_factory(hostname) if context_factory is not None else build_context(current())
        sweeper = Sweeper(app, ctx, hostname, cluster_options(current().worker))
        sweeper.start()
        started.append(sweeper)

    @worker_shutdown.connect(weak=False)
    def stop(sender: Any = None, **_: Any) -> None:
        while started:
            started.pop().stop()
