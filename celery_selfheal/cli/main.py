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
                 config_path: str | None = None, *, need: tuple[str, ...] = ("store",)) -> Any:
    """The `SelfHeal` to use: the app given by ``celery -A APP`` (configured from its ``app.conf``) or
    the ready app, with the flags applied on top (`cli.app_select`). The services in ``need``
    (``store``, ``broker``) are checked first: one line within seconds when one is down
    (`celery_selfheal.reachability`)."""
    from celery_selfheal.cli.app_select import select_selfheal

    sh = select_selfheal(state_dir=state_dir, broker_url=broker_url, store_url=store_url, config_path=config_path)
    check_services(sh, need, broker_flag=bool(broker_url))
    return sh


def get_context(state_dir: str | None = None, broker_url: str | None = None, store_url: str | None = None,
                config_path: str | None = None) -> Any:
    """The `Context` a read-only command (jobs, status, events, artifacts) reads (`cli.app_select`,
    without Celery when run as ``selfheal``), its store checked first as `get_selfheal` checks it."""
    from celery_selfheal.cli.app_select import select_context
    from celery_selfheal.reachability import check_store

    ctx = select_context(state_dir=state_dir, broker_url=broker_url, store_url=store_url, config_path=config_path)
    check_store(ctx.store, shown=ctx.redactor.redact)
    return ctx


def check_services(sh: Any, need: tuple[str, ...], *, broker_flag: bool = False) -> None:
    """Fail fast (one line) when a service a command needs does not answer."""
    from celery_selfheal.reachability import check_broker, check_store

    if not need:
        return
    ctx = sh.context()
    if "store" in need:
        check_store(ctx.store, shown=ctx.redactor.redact)
    if "broker" in need:
        check_broker(sh.app, shown=ctx.redactor.redact,
                     where="--broker" if broker_flag else "SELFHEAL_BROKER_URL / [state] broker_url")


class OneLineErrors(click.Group):
    """Click's usage errors (a bad option value, a missing argument) as one line on stderr, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            fail(" ".join(exc.format_message().split()), exc.exit_code)
        except click.Abort:
            fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(name="selfheal", cls=OneLineErrors, help="Self-healing multi-step Celery jobs.")
@click.version_option(package_name="celery-selfheal")
def selfheal() -> None:
    """Root of the command group (also mounted as ``celery selfheal``)."""


@selfheal.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@location_options
@click.option("--json", "as_json", is_flag=True, help="Print the job's events as JSON lines.")
@handle_errors
def run(job_file: str, as_json: bool, **loc: Any) -> None:
    """Submit JOB_FILE and follow it live until it ends (exit 0 succeeded, 1 failed/cancelled, 2 invalid)."""
    from celery_selfheal.api import submit

    sh = get_selfheal(**loc, need=("store", "broker"))
    job = submit(sh, job_file)
    if not as_json:
        click.echo(f"submitted {job['jobId']} ({len(job['steps'])} steps, state in {sh.settings.state_dir})")
    from celery_selfheal.cli.follow import follow_job

    sys.exit(follow_job(sh, job["jobId"], as_json=as_json))


@selfheal.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@location_options
@handle_errors
def submit(job_file: str, **loc: Any) -> None:
    """Submit JOB_FILE and print the job id."""
    from celery_selfheal.api import submit as do_submit

    job = do_submit(get_selfheal(**loc, need=("store", "broker")), job_file)
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
    from celery_selfheal.cli.follow import follow_job

    sys.exit(follow_job(sh, job_id, as_json=as_json))


@selfheal.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@location_options
@handle_errors
def worker(celery_args: tuple[str, ...], **loc: Any) -> None:
    """Start a worker for the configured app (extra options go to ``celery worker``)."""
    sh = get_selfheal(**loc, need=())  # a worker waits for its broker (broker_connection_retry_on_startup)
    sh.settings.ensure_dirs()
    args = list(celery_args)
    if not any(a.startswith(("-P", "--pool")) for a in args):
        args = ["--pool", "prefork", *args]
    app_name = sh.cli_app or sh.app.main
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

    doc = job_status(get_context(**loc), job_id)
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

    ctx = get_context(**loc)
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

    ctx = get_context(**loc)
    if export_dir:
        click.echo(str(export_artifacts(ctx, job_id, export_dir)))
        return
    found = list_artifacts(ctx, job_id)
    for rel, size in found:
        click.echo(f"{size:>10}  {rel}")
    if not found:
        from celery_selfheal.api import missing_artifacts

        why = missing_artifacts(ctx, job_id)
        if why:
            fail(why, 1)


@selfheal.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (a non-loopback one needs a token).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Lines NAME:TOKEN (NAME is the audit's actor).")
@location_options
@handle_errors
def web(host: str, port: int, token_file: str | None, **loc: Any) -> None:
    """The operator console and HTTP control API (default http://127.0.0.1:8765)."""
    from celery_selfheal.web.server import serve

    serve(get_selfheal(**loc), host=host, port=port, token_file=token_file)


def main() -> None:
    """Console-script entry point."""
    selfheal(prog_name="selfheal")


# `control`, `jobs` and `gc` live in their own modules and register themselves on the group.
from celery_selfheal.cli import control as _control_cmd  # noqa: E402,F401
from celery_selfheal.cli import gc as _gc_cmd  # noqa: E402,F401
from celery_selfheal.cli import jobs as _jobs_cmd  # noqa: E402,F401
