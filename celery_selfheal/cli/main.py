"""``selfheal …`` and ``celery -A APP selfheal …``: parse, call `celery_selfheal.api`, print.

Errors are one line on stderr and exit 2 for bad input (never a traceback).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from celery_selfheal.errors import InputError, SelfHealError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit."""
    click.echo(f"selfheal: error: {message}", err=True)
    sys.exit(code)


def location_options(func: F) -> F:
    """``--state-dir``, ``--broker``, ``--store``, ``--config``: the same on every command."""
    func = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="config.toml to read (default: SELFHEAL_CONFIG or ./config.toml).")(func)
    func = click.option("--store", "store_url", help="State store URL (sqlite:///… or redis://…).")(func)
    func = click.option("--broker", "broker_url", help="Celery broker URL (default: embedded filesystem://).")(func)
    func = click.option("--state-dir", type=click.Path(file_okay=False),
                        help="Embedded state directory (default: SELFHEAL_STATE_DIR or ./.selfheal).")(func)
    return func


def handle_errors(func: F) -> F:
    """Turn our exceptions into one line and an exit status."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            fail(str(exc), 2)
        except SelfHealError as exc:
            fail(str(exc), 1)
        except (OSError, RuntimeError) as exc:
            fail(f"{type(exc).__name__}: {exc}", 1)
        except sqlite3.Error as exc:  # a corrupt store file, a full disk: one line, no traceback
            fail(f"store: {type(exc).__name__}: {exc}", 1)

    return wrapper  # type: ignore[return-value]


def get_selfheal(state_dir: str | None = None, broker_url: str | None = None, store_url: str | None = None,
                 config_path: str | None = None) -> Any:
    """The `SelfHeal` to use: the app given by ``celery -A APP`` (if any) or the ready app, with the
    flags applied on top of env and config.toml."""
    from celery_selfheal.context import build_context
    from celery_selfheal.settings import load_settings

    settings = load_settings(state_dir=state_dir, broker_url=broker_url, store_url=store_url,
                             config_path=config_path)
    # Workers we start, and the ready app if imported after this, see the same settings.
    os.environ.update(settings.as_env())
    obj = click.get_current_context().find_root().obj
    app = getattr(obj, "app", None)
    if app is not None and hasattr(app, "selfheal"):
        sh = app.selfheal
    elif app is not None and app.main not in (None, "default", "__main__"):
        from celery_selfheal.wiring.install import SelfHeal

        sh = SelfHeal(app, settings)
    else:
        from celery_selfheal.app import selfheal as sh
    flags = any((state_dir, broker_url, store_url, config_path))
    if flags or sh.settings != settings:
        sh.settings = settings
        if sh.app.main == "celery_selfheal":
            sh.app.conf.update(settings.celery_conf())
        sh.use_context(build_context(settings))
    return sh


@click.group(name="selfheal", help="Self-healing multi-step Celery jobs.")
@click.version_option(package_name="celery-selfheal")
def selfheal() -> None:
    """Root of the command group (also mounted as ``celery selfheal``)."""


def follow_job(sh: Any, job_id: str, *, as_json: bool, drive_local: bool = True) -> int:
    """Follow a job to its end, starting a local worker on the embedded default; returns exit code."""
    from celery_selfheal.api import follow_events
    from celery_selfheal.cli.progress import Progress
    from celery_selfheal.embedded.follow import follow_local

    ctx = sh.context()
    job = ctx.store.get_job(job_id) or {}
    # embedded: a local worker shared with the other CLIs on this state dir, restarted if it dies
    events = (follow_local(ctx, job_id, follow_events, functools.partial(click.echo, err=True))
              if drive_local and ctx.settings.embedded else follow_events(ctx, job_id))
    try:
        with Progress(as_json=as_json, job_id=job_id, steps=job.get("steps", ()),
                      run_dir=ctx.settings.run_dir) as progress:
            for _, event in events:
                progress.event(event)
        job = ctx.store.get_job(job_id) or {}
        if not as_json:  # before stopping the local worker: its warm shutdown takes seconds
            click.echo(Progress.summary(job, ctx.store.list_attempts(job_id)))
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # leaves the shared worker (the last one out stops it)
    return 0 if job.get("status") == "succeeded" else 1


@selfheal.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@location_options
@click.option("--json", "as_json", is_flag=True, help="Print the job's events as JSON lines.")
@handle_errors
def run(job_file: str, as_json: bool, **loc: Any) -> None:
    """Submit JOB_FILE and follow it live until it ends (exit 0 succeeded, 1 failed/cancelled, 2 invalid)."""
    from celery_selfheal.api import submit

    sh = get_selfheal(**loc)
    job = submit(sh, job_file)
    if not as_json:
        click.echo(f"submitted {job['jobId']} ({len(job['steps'])} steps, state in {sh.settings.state_dir})")
    sys.exit(follow_job(sh, job["jobId"], as_json=as_json))


@selfheal.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@location_options
@handle_errors
def submit(job_file: str, **loc: Any) -> None:
    """Submit JOB_FILE and print the job id."""
    from celery_selfheal.api import submit as do_submit

    job = do_submit(get_selfheal(**loc), job_file)
    click.echo(job["jobId"])


@selfheal.command()
@click.argument("job_id")
@location_options
@click.option("--json", "as_json", is_flag=True, help="Print the job's events as JSON lines.")
@handle_errors
def follow(job_id: str, as_json: bool, **loc: Any) -> None:
    """Follow JOB_ID live until it ends (drives a local worker on the embedded default)."""
    from celery_selfheal.api import require_job

    sh = get_selfheal(**loc)
    require_job(sh.context(), job_id)
    sys.exit(follow_job(sh, job_id, as_json=as_json))


@selfheal.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@location_options
@handle_errors
def worker(celery_args: tuple[str, ...], **loc: Any) -> None:
    """Start a worker for the configured app (extra options go to ``celery worker``)."""
    sh = get_selfheal(**loc)
    sh.settings.ensure_dirs()
    args = list(celery_args)
    if not any(a.startswith(("-P", "--pool")) for a in args):
        args = ["--pool", "prefork", *args]
    app_name = "celery_selfheal.app" if sh.app.main == "celery_selfheal" else sh.app.main
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", app_name, "worker", *args])


@selfheal.command()
@click.argument("job_id")
@location_options
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@handle_errors
def status(job_id: str, as_json: bool, **loc: Any) -> None:
    """Show job, steps, attempts, pending control and audit (exit 2 for an unknown job)."""
    from celery_selfheal.api import job_status
    from celery_selfheal.cli.render import status_text

    doc = job_status(get_selfheal(**loc).context(), job_id)
    click.echo(json.dumps(doc, indent=2, sort_keys=True) if as_json else status_text(doc))


@selfheal.command()
@click.argument("job_id")
@location_options
@click.option("--follow", "follow_", is_flag=True, help="Keep printing new events until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@handle_errors
def events(job_id: str, follow_: bool, as_json: bool, **loc: Any) -> None:
    """Print the job's event stream."""
    from celery_selfheal.api import follow_events, require_job
    from celery_selfheal.cli.render import event_line, json_line

    ctx = get_selfheal(**loc).context()
    require_job(ctx, job_id)
    source = follow_events(ctx, job_id) if follow_ else iter(ctx.store.list_events(job_id))
    for _, event in source:
        click.echo(json_line(event) if as_json else event_line(event))


@selfheal.command()
@click.argument("job_id")
@location_options
@click.option("--export", "export_dir", type=click.Path(file_okay=False), help="Copy the artifacts to DIR/JOB_ID.")
@handle_errors
def artifacts(job_id: str, export_dir: str | None, **loc: Any) -> None:
    """List the job's artifacts, or export them."""
    from celery_selfheal.api import export_artifacts, list_artifacts

    ctx = get_selfheal(**loc).context()
    if export_dir:
        click.echo(str(export_artifacts(ctx, job_id, export_dir)))
        return
    for rel, size in list_artifacts(ctx, job_id):
        click.echo(f"{size:>10}  {rel}")


def main() -> None:
    """Console-script entry point."""
    selfheal(prog_name="selfheal")


# `control` lives in its own module and registers itself on the group.
from celery_selfheal.cli import control as _control_cmd  # noqa: E402,F401
