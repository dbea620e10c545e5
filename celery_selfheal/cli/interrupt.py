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


#: signals received after the first one (while the CLI winds down)
_later: list[int] = []


def _raise(signum: int, frame: FrameType | None) -> None:
    for s in SIGNALS:  # from now on a signal is noted, never raised half-way through the clean-up
        signal.signal(s, _note)
    raise Interrupted(signum)


def _note(signum: int, frame: FrameType | None) -> None:
    _later.append(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` inside the block (an inherited SIG_IGN included:
    a CLI started in the background still stops on SIGTERM)."""
    _later.clear()
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
    """Stop a local worker this CLI started; a (further) Ctrl-C or SIGTERM kills it at once."""
    if worker is None or worker.proc is None or worker.proc.poll() is not None:
        return

    def force(signum: int, frame: FrameType | None) -> None:
        _later.append(signum)
        worker.kill(wait=False)  # no wait here: the main flow is in proc.wait already

    old = {s: signal.signal(s, force) for s in SIGNALS}
    try:
        click.echo("selfheal: stopping the local worker (Ctrl-C again to force)", err=True)
        if _later:  # a second signal came before this handler was in place
            worker.kill(wait=False)
        worker.stop()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    sys.stderr.flush()
