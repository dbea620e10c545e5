"""``selfheal control JOB_ID ACTION``: request an operator action (REQ-09); exit 0 accepted, 2 rejected."""

from __future__ import annotations

from typing import Any

import click

from celery_selfheal.cli.main import get_selfheal, handle_errors, location_options, selfheal
from celery_selfheal.core.control_rules import ACTIONS


@selfheal.command(name="control", epilog="Actions: " + ", ".join(ACTIONS) + ".")
@click.argument("job_id")
@click.argument("action")
@click.option("--step", "step_id", metavar="STEP_ID",
              help="Step to act on (retry_step/hard_reset_step default to the current or failed step; "
                   "resume_from_step needs it).")
@click.option("--reason", metavar="TEXT", help="Why: kept in the audit trail and the events.")
@click.option("--actor", metavar="NAME", help="Who asks (default: the OS user).")
@location_options
@handle_errors
def control(job_id: str, action: str, step_id: str | None, reason: str | None, actor: str | None,
            **loc: Any) -> None:
    """Ask the workers to apply ACTION to JOB_ID; prints the request id once it is accepted.

    The request stays pending (``selfheal status``) until a worker applies and acknowledges it.
    A rejected request prints one line and exits 2 without changing the job."""
    from celery_selfheal.control.remote import recover

    sh = get_selfheal(**loc, need=("store", "broker"))
    req = recover(sh, job_id, action, step=step_id, reason=reason, actor=actor, via="cli")
    target = f" step {req['stepId']!r}" if req.get("stepId") else ""
    click.echo(f"{req['requestId']}")
    click.echo(f"accepted: {action}{target} on {job_id} (pending until a worker acknowledges it)", err=True)
