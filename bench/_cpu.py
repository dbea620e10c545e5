"""CPU time by process role, read from /proc (Linux): where a bench's cores went.

A snapshot maps each role to user+system seconds; the difference of two snapshots taken around a
batch, divided by its steps, is the CPU a step cost each role. A pool child's reaped children (the
runtime and git processes it ran) are counted from its ``cutime``/``cstime`` as ``subprocesses``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, own cpu s, reaped children's cpu s) of one process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ppid, (utime + stime) / _TICK, (cutime + cstime) / _TICK


def snapshot(roles: dict[int, str]) -> Counter[str]:
    """CPU seconds so far of the processes named in ``roles`` (pid -> role) and of their children
    (role ``<role> pool``) with what those reaped (``subprocesses``)."""
    out: Counter[str] = Counter()
    stats = {pid: s for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if (s := _stat(pid))}
    for pid, (ppid, own, reaped) in stats.items():
        if pid in roles:
            out[roles[pid]] += own
        elif ppid in roles:
            out[f"{roles[ppid]} pool"] += own
            out["subprocesses"] += reaped
    return out


def per_step(before: Counter[str], after: Counter[str], steps: int) -> dict[str, float]:
    """Milliseconds of CPU per step for each role between two snapshots."""
    return {role: (after[role] - before[role]) * 1000 / steps for role in sorted(after)}
