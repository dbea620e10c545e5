"""Following a job from the CLI (``run``, ``follow``): progress, the summary and result, the
embedded default's shared local worker, and interrupts (Ctrl-C / SIGTERM: the job goes on)."""

from __future__ import annotations

import functools
import sys
from typing import Any

import click


def follow_job(sh: Any, job_id: str, *, as_json: bool, drive_local: bool = True) -> int:
    """Follow a job to its end, starting a local worker on the embedded default; returns exit code.
    Ctrl-C or SIGTERM: say the job goes on and how to follow it, stop our worker, 130 / 143."""
    from celery_selfheal.cli.interrupt import Interrupted, interruptible, stop_local_worker

    worker: list[Any] = []
    with interruptible():  # until the end: a signal during the clean-up must not raise half-way
        try:
            code = _follow(sh, job_id, as_json=as_json, drive_local=drive_local, started=worker)
        except Interrupted as exc:
            announce_interrupt(sh, job_id, exc)
            code = exc.exit_code
        stop_local_worker(worker[0] if worker else None)  # only if following did not stop it already
    return code


def announce_interrupt(sh: Any, job_id: str, exc: BaseException) -> None:
    """Say once, at once, that the job goes on and how to follow it."""
    from celery_selfheal.cli.interrupt import follow_hint

    if not getattr(exc, "announced", False):
        click.echo(f"selfheal: interrupted; job {job_id} goes on. Follow it with: {follow_hint(sh, job_id)}",
                   err=True)
        exc.announced = True  # type: ignore[attr-defined]


def _follow(sh: Any, job_id: str, *, as_json: bool, drive_local: bool, started: list[Any]) -> int:
    from celery_selfheal.api import follow_events, job_finished
    from celery_selfheal.cli.interrupt import Interrupted
    from celery_selfheal.cli.progress import Progress
    from celery_selfheal.embedded.follow import follow_local
    from celery_selfheal.events.bus import TERMINAL_JOB_EVENTS

    ctx = sh.context()
    job = ctx.store.get_job(job_id) or {}
    events: Any = follow_events(ctx, job_id)
    if drive_local and ctx.settings.embedded and sh.cli_app:
        # a local worker shared with the other CLIs on this state dir, restarted if it dies; the last
        # CLI out stops it (the one this CLI started: a second Ctrl-C forces)
        def stop() -> None:
            from celery_selfheal.cli.interrupt import stop_local_worker
            from celery_selfheal.embedded.local_worker import stop_local_workers

            unwinding = sys.exc_info()[1]  # called while an interrupt unwinds the follow: say so first
            if isinstance(unwinding, Interrupted):
                announce_interrupt(sh, job_id, unwinding)
            stop_local_worker(started.pop()) if started else stop_local_workers(ctx.settings)

        events = follow_local(ctx, job_id, follow_events, functools.partial(click.echo, err=True),
                              app_module=sh.cli_app, started=started, stop=stop)
    try:
        with Progress(as_json=as_json, job_id=job_id, steps=job.get("steps", ()),
                      run_dir=ctx.settings.run_dir) as progress:
            for seq, event in events:
                progress.event(event)
                if (event.get("event") in TERMINAL_JOB_EVENTS and job_finished(ctx, job_id)
                        and not ctx.store.list_events(job_id, after=seq, limit=1)):
                    break  # the summary first: the local worker's warm stop (on leaving) takes seconds
        job = ctx.store.get_job(job_id) or {}
        if not as_json:  # before stopping the local worker: its warm shutdown takes seconds
            from celery_selfheal.cli.result import result_lines

            click.echo(Progress.summary(job, ctx.store.list_attempts(job_id)))
            for line in result_lines(ctx, job):
                click.echo(line)
    except Interrupted as exc:
        announce_interrupt(sh, job_id, exc)  # before leaving the worker, which may stop it
        raise
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # leaves the shared worker (the last one out stops it)
            started.clear()  # not the last one: the worker is the other followers' now
    return 0 if job.get("status") == "succeeded" else 1
