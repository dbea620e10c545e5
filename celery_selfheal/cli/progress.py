"""Live progress of a followed job: plain lines (or JSON lines), and a closing summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import click

from celery_selfheal.cli.render import event_line, json_line


class Progress:
    """Prints each event as it arrives; ``as_json`` prints the contract's JSON lines instead."""

    def __init__(self, *, as_json: bool = False) -> None:
        self.as_json = as_json

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def event(self, event: dict[str, Any]) -> None:
        """Show one event."""
        click.echo(json_line(event) if self.as_json else event_line(event))

    @staticmethod
    def summary(job: dict[str, Any], attempts: Sequence[dict[str, Any]]) -> str:
        """One closing line: result, steps, attempts, recoveries by strategy."""
        strategies = Counter(a.get("attemptStrategy") for a in attempts if a.get("attemptStrategy") != "initial")
        heals = ", ".join(f"{n} {s}" for s, n in sorted(strategies.items()) if s) or "no recovery needed"
        status = str(job.get("status", "?")).upper()
        reason = ""
        if job.get("status") == "failed":
            reason = f" ({job.get('terminalReason')}: {job.get('message') or ''})"
        return (f"job {job.get('jobId')} {status}{reason}: {len(job.get('steps', []))} steps, "
                f"{len(attempts)} attempts, {heals}")
