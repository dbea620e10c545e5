"""Live progress of a followed job: a rich table on a terminal, plain (or JSON) lines otherwise.

On an interactive terminal (and without ``--json``) each event is printed as a line above a
`rich.live.Live` table of the steps (status, attempt, strategy, elapsed, idle, detector) redrawn
a few times per second, so elapsed and idle seconds move while an attempt runs. Idle seconds of
a running attempt come from the worker-side registry (`celery_selfheal.steps.running.RunningAttempts`)
when the worker shares this machine's state dir; otherwise the cell stays empty until the attempt
ends. Anywhere else (a pipe, a file, ``--json``) the output is one line per event.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import click
from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from celery_selfheal.cli.board import COLUMNS, IdleMap, StepBoard
from celery_selfheal.cli.render import event_line, json_line
from celery_selfheal.steps.running import RunningAttempts

#: table redraws per second (elapsed/idle resolution on screen)
REFRESH_PER_SECOND = 4
_STATUS_STYLE = {"running": "bold cyan", "retrying": "yellow", "succeeded": "green", "failed": "bold red",
                 "cancelled": "magenta", "pending": "dim"}
_MIN_WIDTH = {"status": 9, "strategy": 11, "elapsed": 7, "idle": 6, "detector": 12}


def wants_live(console: Console) -> bool:
    """True when stdout is an interactive terminal: a pipe or a file gets plain lines, even with
    ``FORCE_COLOR`` set."""
    isatty = getattr(console.file, "isatty", None)
    try:
        tty = bool(isatty and isatty())
    except ValueError:  # closed file
        tty = False
    return tty and console.is_interactive


def registry_idle(run_dir: Path | None, job_id: str) -> IdleMap:
    """Idle seconds of ``job_id``'s attempts running on this host, by ``(stepIndex, attempt)``."""
    if run_dir is None:
        return {}
    out: dict[tuple[int, int], float] = {}
    for entry in RunningAttempts(run_dir).all():
        if entry.get("jobId") == job_id and isinstance(entry.get("stepIndex"), int):
            out[(entry["stepIndex"], int(entry.get("attempt") or 0))] = float(entry["secondsIdle"])
    return out


def board_table(board: StepBoard, now: float, idle: IdleMap) -> Table:
    """The board as a rich table (title: job, status, elapsed)."""
    title = Text(board.title(now), no_wrap=True, overflow="ellipsis")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, expand=False)
    for name in COLUMNS:
        # one line per step (the full story is in the event lines above); widths steady between frames
        table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=_MIN_WIDTH.get(name),
                         max_width=60 if name == "note" else None,
                         justify="right" if name in ("attempt", "elapsed", "idle") else "left")
    for cells in board.rows(now, idle):
        table.add_row(*cells[:1], Text(cells[1], style=_STATUS_STYLE.get(cells[1], "")), *cells[2:])
    return table


class _LiveBoard:
    """The renderable `Live` redraws: computed at each refresh so elapsed/idle keep moving."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> RenderableType:
        return self.progress.render()


class Progress:
    """Shows a followed job's events as they arrive, with a live step table on a terminal.

    ``as_json`` prints the contract's JSON lines; ``live`` forces (True) or forbids (False) the
    table, default: only on an interactive terminal. ``steps`` (``stepIndex``/``stepId`` dicts)
    lists the steps up front; ``run_dir`` is where the local worker's attempt registry lives.
    """

    def __init__(self, *, as_json: bool = False, job_id: str = "", steps: Sequence[Mapping[str, Any]] = (),
                 run_dir: Path | None = None, console: Console | None = None, live: bool | None = None) -> None:
        self.as_json = as_json
        self.console = console or Console(highlight=False)
        self.live = (not as_json and wants_live(self.console)) if live is None else (live and not as_json)
        self.board = StepBoard(job_id, steps)
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.live:
            self._live = Live(_LiveBoard(self), console=self.console, refresh_per_second=REFRESH_PER_SECOND,
                              transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()  # draws the final table once more and leaves it on screen
            self._live = None

    def event(self, event: dict[str, Any]) -> None:
        """Show one event (and fold it into the table)."""
        with self._lock:
            self.board.apply(event)
        if self.as_json:
            click.echo(json_line(event))
        elif self._live is not None:
            self._live.console.print(Text(event_line(event)))  # above the table
        else:
            click.echo(event_line(event))

    def render(self) -> RenderableType:
        """The table as of now (called by the refresh thread)."""
        idle = registry_idle(self.run_dir, self.board.job_id) if self.board.running() else {}
        with self._lock:
            return board_table(self.board, time.time(), idle)

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
