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
- **A guard process** (`runtime.guard`, one per supervising process, told about each attempt in
  a shared table that wakes nobody, `runtime.guard_link`) in its own session, holding a pipe
  from the supervising process: when that process dies without
  running any code of ours (SIGKILL of the whole worker group, the OOM killer, Celery's hard time
  limit), the kernel closes the pipe and the guard ends the group and every marked process of
  each attempt still running, within ``kill_grace`` + a scan (milliseconds).
- **``PR_SET_CHILD_SUBREAPER`` in prefork pool children** (:func:`become_subreaper`, called at
  ``worker_process_init``): an orphaned descendant is re-parented to the pool child instead of
  init, so one that cleared its environment *and* left the group is still found, as a child of
  ours started after the attempt's leader, ended with the attempt and reaped. Only where one
  process runs one attempt at a time: in a threads/solo pool an orphan cannot be attributed.
- **Only the pids forked since the attempt began** are looked at when it ends
  (`runtime.pid_window`): a no-op attempt's clean-up reads a few ``/proc`` entries, not all.
- **The guard replaces the parent-death signal**: with a live guard the runtime is started
  without a preexec hook (vfork: 10-25 ms less per attempt in a big worker); the guard ends the
  leader too when this process dies. Without one, the leader still gets ``PR_SET_PDEATHSIG``.

Not chosen: a cgroup (the cleanest: ``cgroup.kill`` ends everything) needs a writable, delegated
cgroup v2 tree, which unprivileged workers and most containers do not have, and a per-attempt
cgroup would need setting up and removing around every attempt; the marker gives the same reach
without privileges. The subreaper alone is not enough either: it dies with the process that set
it, which is exactly the case of a killed worker, and it cannot tell concurrent attempts apart.

What still escapes: a descendant that both clears its environment (``env -i``) and leaves the
process group, outside a prefork pool child (threads/solo pools, or once the pool child is dead:
the guard has only the marker and the group to go by); a process started on the runtime's behalf
by another service (``systemd-run``, ``at``, a Docker daemon, ``ssh`` to another host); a process
of another user (setuid) whose environment we may not read; and a guard killed on purpose
together with its worker (``kill -9`` of the guard's own pid). Linux only: elsewhere only the process group is ended.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Callable, Collection

from celery_selfheal.runtime import guard as _guard
from celery_selfheal.runtime.guard_link import Guard
from celery_selfheal.runtime.pid_window import PidWindow, proc_pids
from celery_selfheal.runtime.process_group import group_alive

__all__ = ["MARKER_VAR", "Guard", "adopted", "attempt_alive", "become_subreaper", "end_attempt", "marked_pids",
           "new_marker", "reap_adopted", "start_ticks"]

MARKER_VAR = _guard.MARKER_VAR
_LINUX = sys.platform.startswith("linux")


def new_marker() -> str:
    """A fresh random attempt marker (128 bits, hex)."""
    return secrets.token_hex(16)


def marked_pids(marker: str, window: PidWindow | None = None) -> list[int]:
    """Live processes carrying ``marker`` (empty off Linux), forked within ``window`` if given
    (`runtime.pid_window`: the attempt's processes all are)."""
    if not _LINUX:
        return []
    return _guard.marked_pids([marker], exclude=os.getpid(), names=proc_pids(window) if window else None)


def attempt_alive(marker: str, pgid: int, window: PidWindow | None = None) -> bool:
    """True while the group or any marked process is alive (zombies count as gone)."""
    return group_alive(pgid, _names(window)) or bool(marked_pids(marker, window))


def _names(window: PidWindow | None) -> Callable[[], list[str]] | None:
    return (lambda: proc_pids(window)) if window is not None else None


def end_attempt(marker: str, pgid: int, *, grace: float, wait: Callable[[float], object] | None = None,
                adopted_since: int | None = None, keep: Collection[int] = (),
                window: PidWindow | None = None) -> None:
    """TERM the group and every marked process, up to ``grace`` seconds, then KILL what is left.

    ``wait(seconds)`` is called while waiting (the supervisor keeps reading output in it). In a
    subreaper (:func:`become_subreaper`), also the orphans adopted since ``adopted_since`` (the
    leader's start, in clock ticks) other than ``keep``, which are then reaped. ``window`` (opened
    before the leader was started) limits every look at ``/proc`` to the processes forked since."""
    if not _LINUX:
        from celery_selfheal.runtime.process_group import kill_process_group

        kill_process_group(pgid, grace=grace)
        return
    extra: Callable[[], list[int]] = list
    if _subreaper and adopted_since is not None:
        def extra() -> list[int]:
            return adopted(adopted_since, {pgid, *keep}, window)
    names = _names(window)
    _guard.sweep([marker], [pgid], grace, group_alive=lambda p: group_alive(p, names), wait=wait or _sleep,
                 extra=extra, marked=lambda: marked_pids(marker, window))
    if _subreaper:
        reap_adopted({pgid, *keep, Guard.pid()}, window)


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


#: from <linux/prctl.h>
_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux >= 3.4): an orphaned descendant
    (double fork) is re-parented here instead of to init, so one that also cleared its
    environment is still found, as an adopted child started after the attempt's leader, and ended
    with the attempt. Only for a process that runs one attempt at a time (a prefork pool child):
    with several, an orphan cannot be told apart. True if it is now a subreaper."""
    global _subreaper
    from celery_selfheal.runtime.process_group import _prctl

    if _prctl is None or _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return False
    _subreaper = True
    return True


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()  # state ppid pgrp ... starttime is index 19


def start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (0 if unknown)."""
    fields = _stat_fields(str(pid))
    return int(fields[19]) if fields and len(fields) > 19 else 0


def _children(pred: Callable[[list[bytes]], bool], window: PidWindow | None) -> list[int]:
    me = str(os.getpid()).encode()
    out = []
    for name in proc_pids(window):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields and len(fields) > 19 and fields[1] == me and pred(fields):
                out.append(int(name))
    return out


def adopted(since: int, exclude: Collection[int], window: PidWindow | None = None) -> list[int]:
    """Live children of ours started at or after ``since`` (ticks), other than ``exclude``
    (forked within ``window`` if given)."""
    return [pid for pid in _children(lambda f: f[0] not in (b"Z", b"X") and int(f[19]) >= since, window)
            if pid not in exclude]


def reap_adopted(exclude: Collection[int], window: PidWindow | None = None) -> None:
    """Reap our zombie children other than ``exclude`` (what the subreaper adopted and we ended;
    forked within ``window`` if given)."""
    for pid in _children(lambda f: f[0] == b"Z", window):
        if pid not in exclude:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
