"""Worker app for the benchmarks: the ready app plus a plain task that runs a command, so the
baseline and celery-selfheal share one worker, one broker and one pool."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from celery_selfheal.app import app

if os.environ.get("BENCH_POLLING_INTERVAL"):  # bench_step_overhead --poll: both sides share this worker
    app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                         "polling_interval": float(os.environ["BENCH_POLLING_INTERVAL"])}


@app.task(name="bench.run_command", ignore_result=True)
def run_command(argv: list[str], marker: str | None = None) -> None:
    """Plain Celery: run the command, then (last link) touch a marker file the client waits for."""
    subprocess.run(argv, check=True)
    if marker:
        Path(marker).touch()


__all__ = ["app", "run_command"]
