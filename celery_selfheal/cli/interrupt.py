"""Interrupting ``run``/``follow``: Ctrl-C or SIGTERM ends the CLI, never the job.

The job lives in the store and the broker: the CLI says at once that it goes on and how to follow
it, stops the local worker it started (warm, then cold, then KILL; a second Ctrl-C forces) and exits
with 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), as a shell does.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM while `interruptible` is active (a
    BaseException, as KeyboardInterrupt: no `except Exception` on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention."""
        return 128 + self.signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` inside the block (an inherited SIG_IGN included:
    a CLI started in the background still stops on SIGTERM)."""
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def follow_hint(sh: Any, job_id: str) -> str:
    """The command that follows ``job_id`` again with the same app and state dir."""
    from pathlib import Path

    prefix = f"celery -A {sh.cli_app} selfheal" if sh.cli_app and sh.cli_app != "celery_selfheal.app" else "selfheal"
    settings = sh.settings
    flags = ""
    if settings.embedded and settings.state_dir != Path(".selfheal").absolute():
        flags = f" --state-dir {settings.state_dir}"
    return f"{prefix} follow {job_id}{flags}"


def stop_local_worker(worker: Any | None) -> None:
    """Stop a local worker this CLI started; Ctrl-C (or SIGTERM) while it stops kills it at once."""
    if worker is None or worker.proc is None or worker.proc.poll() is not None:
        return
    click.echo("selfheal: stopping the local worker (Ctrl-C again to force)", err=True)
    try:
        with interruptible():
            worker.stop()
    except Interrupted:
        worker.kill()
    sys.stderr.flush()
