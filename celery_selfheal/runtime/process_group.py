"""Process groups: start a runtime in its own group, and end the whole group (TERM, grace, KILL).

A runtime is started with ``start_new_session=True`` so that it leads a fresh process group
(pgid == pid) that every grandchild inherits; killing the group therefore reaches the whole tree,
even after the leader has exited. ``start_group_child_preexec`` also asks Linux to SIGKILL the
leader when its parent dies, which covers a Celery pool child killed by the hard time limit (the
parent-death signal only reaches the leader: the Celery MainProcess must still kill the group).
The supervisor uses the hook only in a process without a live guard (`runtime.containment`): a
preexec hook makes Python fork instead of vfork and run Python in the child, 10-25 ms per attempt
in a big worker, and the guard already ends the leader, its group and its marked processes when
the supervising process dies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

#: from <linux/prctl.h>
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once at import, in the parent: the preexec hook runs between fork and exec, where
    # loading a library (malloc, dlopen locks held by another thread) could deadlock.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()


def start_group_child_preexec() -> None:
    """``preexec_fn`` for a runtime: SIGKILL it when the process that started it dies.

    Use together with ``start_new_session=True``. Linux only (a no-op elsewhere). Linux delivers
    the signal when the *thread* that forked the child exits, so spawn from a long-lived thread
    (the task's own thread is fine).
    """
    if _prctl is None:
        return
    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl; then the signal will never come.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _proc_members_alive(pgid: int, names: Callable[[], Iterable[str]] | None = None) -> bool | None:
    """True/False from /proc: is any non-zombie process in the group (among ``names`` if given);
    None if /proc is unusable."""
    try:
        entries = os.listdir("/proc") if names is None else names()
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:  # exited while we looked
            continue
        # Fields after the command (which may contain spaces and parentheses): state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def group_alive(pgid: int, names: Callable[[], Iterable[str]] | None = None) -> bool:
    """True when the process group still has a live member.

    ``os.killpg(pgid, 0)`` answers first; on Linux a group whose remaining members are only
    zombies (exited, not yet reaped by a parent that may never reap them) counts as gone.
    ``names()`` may say which ``/proc`` entries can hold members (`runtime.pid_window`).
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member we may not signal (setuid helper) is still a member.
        pass
    if sys.platform.startswith("linux"):
        alive = _proc_members_alive(pgid, names)
        if alive is not None:
            return alive
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not permitted to send signal %s to process group %s", sig, pgid)
    return True


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the group to be gone; True if it is."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while group_alive(pgid):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        # Short first pauses so a group that dies on TERM is noticed at once; then back off.
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    return True


def kill_process_group(pgid: int, *, grace: float, term_signal: int = signal.SIGTERM) -> bool:
    """End the whole process group: ``term_signal``, up to ``grace`` seconds, then SIGKILL.

    Returns True if anything in the group was alive. Safe to call when the group is already gone.
    Our own zombie children are not reaped here: the caller owns them (``Popen.wait``).
    """
    if not group_alive(pgid):
        return False
    if not signal_group(pgid, term_signal):
        return False
    if wait_group_gone(pgid, max(grace, 0.0)):
        return True
    signal_group(pgid, signal.SIGKILL)
    # SIGKILL cannot be ignored; a short wait lets the kernel finish tearing the processes down
    # (uninterruptible sleep on I/O can delay it) so callers see the group gone on return.
    if not wait_group_gone(pgid, 1.0):
        log.warning("process group %s still has live members after SIGKILL", pgid)
    return True
