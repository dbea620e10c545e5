"""``selfheal gc --older-than DURATION [--dry-run]``: remove long-finished jobs (`jobs.retention`)."""

from __future__ import annotations

from typing import Any

import click

from celery_selfheal.cli.main import get_selfheal, handle_errors, location_options, selfheal


@selfheal.command(name="gc")
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Remove jobs finished more than DURATION ago: 7d, 12h, 30m, 45s, 0s.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@location_options
@handle_errors
def gc(older_than: str, dry_run: bool, **loc: Any) -> None:
    """Remove finished jobs (succeeded, failed, cancelled) finished more than DURATION ago: workspaces,
    artifacts, store records, broker leftovers. Queued, running and paused jobs are never touched."""
    from celery_selfheal.core.duration import format_duration, parse_duration
    from celery_selfheal.jobs.retention import collect

    seconds = parse_duration(older_than)
    ctx = get_selfheal(**loc).context()
    removed = collect(ctx, seconds, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for r in removed:
        parts = [str(p) for p in r.paths] + ["store records"]
        if r.messages:
            parts.append(f"{len(r.messages)} broker messages")
        click.echo(f"{verb} {r.job_id} ({r.status}, finished {r.finished_at}): {', '.join(parts)}")
    click.echo(f"{verb} {len(removed)} jobs finished more than {format_duration(seconds)} ago")
