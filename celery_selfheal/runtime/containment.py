"""Containment: every process an attempt starts is ended when the attempt ends, even the ones that
left the runtime's process group (``setsid``, double fork: dev servers, watchers, ``nohup … &``).

Mechanism, and why:

- **A marker in the environment.** Each attempt gets a random ``SELFHEAL_ATTEMPT_MARKER`` in its
  runtime's environment. Every descendant inherits it whatever it does with sessions, groups and
  parents, and it can be read from ``/proc/PID/environ`` without privileges (same user). It names
  exactly one attempt, so concurrent attempts in one process (threads pool) are told apart, and it
  outlives the process tree (an orphan re-parented to init still carries it), unlike a ppid walk.
- **The process group** as before (TERM, grace, KILL): it also covers a child that cleared its
  environment but stayed in the group.
- **A guard process per attempt** (`runtime.guard`) in its own session, holding a pipe from the
  supervising process: when that process dies without running any code of ours (SIGKILL of the
  whole worker group, the OOM killer, Celery's hard time limit), the kernel closes the pipe and
  the guard ends the group and every marked process within ``kill_grace`` + a scan (about 0.1 s).

Not chosen: a cgroup (the cleanest: ``cgroup.kill`` ends everything) needs a writable, delegated
cgroup v2 tree, which unprivileged workers and most containers do not have; ``PR_SET_CHILD_SUBREAPER``
keeps orphans as our children, but cannot tell which attempt an orphan came from when one process
runs several attempts, and dies with the process that set it, which is exactly the case of issue 17.

What still escapes: a descendant that both clears its environment (``env -i``) and leaves the
process group; a process started on the runtime's behalf by another service (``systemd-run``,
``at``, a Docker daemon, ``ssh`` to another host); a process of another user (setuid) whose
environment we may not read; and a guard killed on purpose together with its worker (``kill -9``
of the guard's own pid). Linux only: elsewhere only the process group is ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from celery_selfheal.runtime import guard as _guard
from celery_selfheal.runtime.process_group import group_alive

log = logging.getLogger(__name__)

MARKER_VAR = _guard.MARKER_VAR
_GUARD_SCRIPT = str(Path(_guard.__file__).resolve())
_LINUX = sys.platform.startswith("linux")


def new_marker() -> str:
    """A fresh random attempt marker (128 bits, hex)."""
    return secrets.token_hex(16)


def marked_pids(marker: str) -> list[int]:
    """Live processes carrying ``marker`` (empty off Linux)."""
    return _guard.marked_pids(marker, exclude=os.getpid()) if _LINUX else []


def attempt_alive(marker: str, pgid: int) -> bool:
    """True while the group or any marked process is alive (zombies count as gone)."""
    return group_alive(pgid) or bool(marked_pids(marker))


def end_attempt(marker: str, pgid: int, *, grace: float,
                wait: Callable[[float], object] | None = None) -> None:
    """TERM the group and every marked process, up to ``grace`` seconds, then KILL what is left.

    ``wait(seconds)`` is called while waiting (the supervisor keeps reading output in it)."""
    if not _LINUX:
        from celery_selfheal.runtime.process_group import kill_process_group

        kill_process_group(pgid, grace=grace)
        return
    _guard.sweep(marker, pgid, grace, group_alive=group_alive, wait=wait or _sleep)


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


class Guard:
    """The guard process of one attempt (see module docstring). Never raises: without a guard the
    attempt still runs, only the death of this process is then not covered (one warning)."""

    def __init__(self, marker: str, *, grace: float) -> None:
        self.marker = marker
        self._proc: subprocess.Popen[bytes] | None = None
        self._w: int | None = None
        if not _LINUX:
            return
        r, w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _GUARD_SCRIPT, marker, repr(float(grace))], stdin=r,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                close_fds=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            self._w = w
        except OSError as err:
            log.warning("celery-selfheal: no attempt guard (%s); processes of an attempt may outlive "
                        "a killed worker", err)
            os.close(w)
        finally:
            os.close(r)

    def _send(self, line: str) -> None:
        if self._w is not None:
            with contextlib.suppress(OSError):
                os.write(self._w, line.encode() + b"\n")

    def watch(self, pgid: int) -> None:
        """Name the runtime's process group."""
        self._send(f"pgid {pgid}")

    def release(self) -> None:
        """The attempt ended and was cleaned up: let the guard do a last marker sweep and exit.

        Not waited for (its interpreter may still be starting): reaped by a later release."""
        self._send("done")
        if self._w is not None:
            os.close(self._w)
            self._w = None
        if self._proc is not None:
            _released.append(self._proc)
            self._proc = None
        _reap()


#: guards told to exit and not reaped yet (polled, not waited for: one may still be starting)
_released: list[subprocess.Popen[bytes]] = []


def _reap() -> None:
    _released[:] = [p for p in _released if p.poll() is None]
