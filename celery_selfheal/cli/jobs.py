"""``selfheal jobs``: the newest jobs first, as a table or one JSON object per line."""

from __future__ import annotations

import json
from typing import Any

import click

from celery_selfheal.cli.main import get_context, handle_errors, location_options, selfheal
from celery_selfheal.core.control_rules import STATUSES
from celery_selfheal.core.text_bounds import terminal_safe


@selfheal.command(name="jobs")
@click.option("--status", "status", type=click.Choice(STATUSES), help="Only jobs with this status.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="How many jobs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@location_options
@handle_errors
def jobs(status: str | None, limit: int, as_json: bool, **loc: Any) -> None:
    """List jobs, newest first: id, status, current step, times, objective."""
    from celery_selfheal.api import list_jobs

    rows, _ = list_jobs(get_context(**loc), status=status, limit=limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True))
        return
    for line in jobs_table(rows):
        click.echo(line)


def jobs_table(rows: list[dict[str, Any]]) -> list[str]:
    """Aligned lines of `list_jobs` rows (stored text made printable: no terminal escapes)."""
    if not rows:
        return ["no jobs"]
    head = ("JOB", "STATUS", "STEP", "CREATED", "FINISHED", "OBJECTIVE")
    cells = [(r["jobId"], r["status"], str(r.get("currentStep") or 0), r.get("createdAt") or "",
              r.get("finishedAt") or "-", _shown(r.get("objective"))) for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head) - 1)]
    return ["  ".join(c[i].ljust(w) for i, w in enumerate(widths)) + "  " + c[-1] for c in [head, *cells]]


def _shown(text: object) -> str:
    """A stored string on one table line: no terminal escapes, no line breaks, at most 60 characters."""
    return terminal_safe(str(text or "")).replace("\n", "\\n")[:60]
