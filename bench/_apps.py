"""Worker app for the benchmarks: the ready app plus a plain task that runs a command, so the
baseline and celery-selfheal share one worker, one broker and one pool."""

from __future__ import annotations

import subprocess
from pathlib import Path

from celery_selfheal.app import app


@app.task(name="bench.run_command", ignore_result=True)
def run_command(argv: list[str], marker: str | None = None) -> None:
    """Plain Celery: run the command, then (last link) touch a marker file the client waits for."""
    subprocess.run(argv, check=True)
    if marker:
        Path(marker).touch()


__all__ = ["app", "run_command"]
