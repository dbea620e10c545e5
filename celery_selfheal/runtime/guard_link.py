"""This process's side of the attempt guard (`runtime.guard`): start it, and keep its table of the
attempts running here.

The table is a memfd shared with the guard, one fixed slot of ``SLOT`` bytes per running attempt
(``+ MARKER PGID GRACE``, blanked when the attempt has been cleaned up). Writing a slot is one
``pwrite`` that wakes nobody: the guard sleeps on a pipe that is never written and reads the
table only when this process is gone (end-of-file). Telling it over the pipe instead cost three
wake-ups per attempt, and a busy worker woken-up-and-preempted on a loaded host lost about a
millisecond each (several at the tail). A slot never crosses a page, so one write lands whole
whatever kills this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from celery_selfheal.runtime import guard as _guard

__all__ = ["Guard"]

log = logging.getLogger(__name__)

_GUARD_SCRIPT = str(Path(_guard.__file__).resolve())
_LINUX = sys.platform.startswith("linux")
SLOT = _guard.SLOT


class Guard:
    """This process's guard: one per process, started with its first attempt, restarted if it
    died (killed by hand). Never raises: without a guard an attempt still runs, only the death of
    this process is then not covered (one warning)."""

    _lock = threading.Lock()
    _proc: subprocess.Popen[bytes] | None = None
    _w: int | None = None  # the pipe's write end: never written, its closing is the news
    _table: int | None = None  # the memfd of slots
    _owner = 0  # the pid that started it: a forked child starts its own
    #: marker -> slot of the attempts running here
    _slots: dict[str, int] = {}

    @classmethod
    def _ensure(cls) -> None:
        if cls._owner == os.getpid():
            if cls._proc is not None and cls._proc.poll() is None:
                return
        else:  # inherited through fork: the parent's pipe and table, not ours to hold or write
            for fd in (cls._w, cls._table):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            cls._w, cls._table, cls._slots, cls._owner = None, None, {}, os.getpid()
        if cls._w is not None:  # the guard died: a new one gets the same table (every attempt)
            with contextlib.suppress(OSError):
                os.close(cls._w)
        cls._w, cls._proc = None, None
        try:
            if cls._table is None:
                cls._table = os.memfd_create("selfheal-guard")
            r, w = os.pipe()
        except OSError as err:
            log.warning("celery-selfheal: no attempt guard (%s); processes of an attempt may outlive "
                        "a killed worker", err)
            return
        try:
            cls._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _GUARD_SCRIPT, str(cls._table)], stdin=r,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                close_fds=True, pass_fds=(cls._table,), env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            cls._w = w
        except OSError as err:
            log.warning("celery-selfheal: no attempt guard (%s); processes of an attempt may outlive "
                        "a killed worker", err)
            os.close(w)
        finally:
            os.close(r)

    @classmethod
    def _write(cls, slot: int, record: str) -> None:
        if cls._table is not None:
            data = record.encode("ascii")[:SLOT - 1].ljust(SLOT - 1) + b"\n"
            with contextlib.suppress(OSError):
                os.pwrite(cls._table, data, slot * SLOT)

    @classmethod
    def running(cls) -> bool:
        """Whether this process has a live guard (it then covers this process's death)."""
        proc = cls._proc
        return proc is not None and cls._owner == os.getpid() and proc.poll() is None

    @classmethod
    def pid(cls) -> int:
        """The guard's pid (0 when there is none)."""
        return cls._proc.pid if cls._proc is not None and cls._owner == os.getpid() else 0

    @classmethod
    def attempt(cls, marker: str, pgid: int = 0, *, grace: float) -> None:
        """Name an attempt (before its runtime starts, ``pgid`` 0), then its process group."""
        if not _LINUX:
            return
        with cls._lock:
            cls._ensure()
            slot = cls._slots.get(marker)
            if slot is None:
                used = set(cls._slots.values())
                slot = next(i for i in range(len(used) + 1) if i not in used)
                cls._slots[marker] = slot
            cls._write(slot, f"+ {marker} {int(pgid)} {float(grace)!r}")

    @classmethod
    def release(cls, marker: str) -> None:
        """The attempt ended and was cleaned up (its group id may be reused from now on)."""
        if not _LINUX:
            return
        with cls._lock:
            slot = cls._slots.pop(marker, None)
            if slot is not None and cls._owner == os.getpid():
                cls._write(slot, "")
