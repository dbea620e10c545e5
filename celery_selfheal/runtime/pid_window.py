"""Which processes may belong to an attempt: only those whose pid was allocated after it started.

Ending an attempt looks through ``/proc`` for its processes (marked, group members, adopted
orphans). Reading every process's ``stat`` or ``environ`` costs ~20 us each, milliseconds on a
host with a few hundred processes, and it happens at the end of every attempt, also of a no-op
one. But every process of an attempt was forked after its leader, and Linux hands out pids in
increasing order, wrapping at ``pid_max``: so they all lie in the cyclic interval (the last pid
allocated before the attempt, the last pid allocated now]. ``/proc/loadavg`` names the last pid
allocated (in the reader's pid namespace), and the ``processes`` line of ``/proc/stat`` counts
every fork since boot, which tells whether the pids could have gone round a whole lap (then the
interval means nothing and every process is looked at, as when anything here is unreadable,
``/proc`` belongs to another pid namespace or ``/proc/loadavg`` is LXCFS's). The supervisor also
checks that its leader's pid is in the window before relying on it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

__all__ = ["PidWindow", "proc_pids"]

#: pids below this are not handed out again after a wrap; also slack for the forks counted
#: between our reads
_LAP_MARGIN = 1000


def _last_pid() -> int | None:
    try:
        with open("/proc/loadavg", "rb") as fh:
            return int(fh.read().split()[4])
    except (OSError, ValueError, IndexError):
        return None


def _forks() -> int | None:
    try:
        with open("/proc/stat", "rb") as fh:
            data = fh.read()
        start = data.index(b"\nprocesses ") + 11
        return int(data[start:data.index(b"\n", start)])
    except (OSError, ValueError):
        return None


def _pid_max() -> int | None:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def _proc_is_ours() -> bool:
    return _numbers_are_ours(os.getpid())


@functools.lru_cache(maxsize=4)
def _numbers_are_ours(pid: int) -> bool:
    # /proc mounted for another pid namespace (a container sharing the host's) numbers processes
    # differently from our pids; LXCFS and the like mount their own /proc/loadavg or /proc/stat,
    # whose numbers are not this namespace's: then no window. Checked once per process.
    try:
        if int(os.readlink("/proc/self")) != pid:
            return False
        with open("/proc/self/mountinfo", "rb") as fh:
            mounts = fh.read()
    except (OSError, ValueError):
        return False
    return not any(f" {path} ".encode() in mounts for path in ("/proc/loadavg", "/proc/stat"))


@dataclass(frozen=True)
class PidWindow:
    """The pids allocated since :meth:`open`; ``names()`` lists the ``/proc`` entries in it."""

    #: the last pid allocated before the window opened
    after: int
    #: forks since boot when the window opened
    forks: int
    pid_max: int

    @classmethod
    def open(cls) -> PidWindow | None:
        """A window starting now; None where it cannot be relied on (then look at every process)."""
        pid_max, last, forks = _pid_max(), _last_pid(), _forks()
        if pid_max is None or last is None or forks is None or not _proc_is_ours():
            return None
        return cls(after=last, forks=forks, pid_max=pid_max)

    def contains(self, pid: int, last: int) -> bool:
        """Whether ``pid`` lies in the cyclic interval (``after``, ``last``]."""
        if self.after <= last:
            return self.after < pid <= last
        return pid > self.after or pid <= last

    def covers(self, pid: int) -> bool:
        """Whether ``pid`` (forked since the window opened) is in it: a check that pids are
        handed out here as this module expects."""
        last = _last_pid()
        return last is not None and self.contains(pid, last)

    def names(self) -> list[str] | None:
        """The ``/proc`` entries of processes forked since the window opened; None (look at all)
        when the pids may have gone round a lap or cannot be read."""
        entries = os.listdir("/proc")
        # read after the listing: every pid listed was allocated before `last`
        last, forks, pid_max = _last_pid(), _forks(), _pid_max()
        # pid_max read again: lowered meanwhile, a lap takes fewer forks
        lap = min(self.pid_max, pid_max or 0) - _LAP_MARGIN
        if last is None or forks is None or forks - self.forks >= lap:
            return None
        return [name for name in entries if name.isdigit() and self.contains(int(name), last)]


def proc_pids(window: PidWindow | None) -> list[str]:
    """Numeric ``/proc`` entries to look at: those of ``window``, else every process."""
    names = window.names() if window is not None else None
    if names is None:
        names = [name for name in os.listdir("/proc") if name.isdigit()]
    return names
