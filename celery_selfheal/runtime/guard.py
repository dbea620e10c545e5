"""The attempt guard: a tiny process that ends an attempt's processes when its supervisor dies.

Run as a script (``python -I -S guard.py MARKER GRACE``, stdlib only, so it starts in tens of
milliseconds) in its own session, with the read end of a pipe as stdin whose write end only the
supervising process holds; it is started before the runtime, which is then named on the pipe
(``pgid N`` line), so there is no moment when a runtime runs unguarded. When that process ends in
any way, SIGKILL and the OOM killer included, the kernel closes the write end, ``read`` returns
end-of-file, and the guard ends every process of the attempt: the runtime's process group and
every process whose environment carries the attempt's marker (``SELFHEAL_ATTEMPT_MARKER``,
inherited by descendants that left the group with ``setsid`` or a double fork). TERM, up to GRACE
seconds, then KILL; then it exits. On a normal end the supervisor has already ended everything,
writes ``done`` (the group's id may be reused from now on, so only the marker is swept) and the
guard's sweep finds nothing.

Its own session keeps it out of the worker's process group, so a worker killed as a whole group
(``kill -9 -PGID``) does not take its guards with it. It does not carry the marker itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

MARKER_VAR = "SELFHEAL_ATTEMPT_MARKER"
_POLL = 0.02


def marked_pids(marker: str, *, exclude: int = 0) -> list[int]:
    """Pids of live processes whose environment has ``SELFHEAL_ATTEMPT_MARKER=<marker>``."""
    needle = f"\0{MARKER_VAR}={marker}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if needle not in b"\0" + fh.read() + b"\0":
                    continue
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:  # exited meanwhile, or another user's process (not ours to end)
            continue
        if stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def _group_members(pgid: int) -> bool:
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_all(marker: str, pgid: int, sig: int, extra: Callable[[], list[int]] = list) -> int:
    """Send ``sig`` to the group, every marked process and the pids ``extra()`` names; the number
    of processes signalled outside the group."""
    if _group_members(pgid):
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)
    pids = set(marked_pids(marker, exclude=os.getpid())) | set(extra())
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    return len(pids)


def sweep(marker: str, pgid: int, grace: float, *, group_alive: Callable[[int], bool] = _group_members,
          wait: Callable[[float], object] = time.sleep, extra: Callable[[], list[int]] = list) -> None:
    """TERM everything of the attempt, wait up to ``grace`` for it to go, KILL what is left.

    ``group_alive`` and ``wait`` let a supervisor that owns the leader count its zombie as gone
    and keep reading output while it waits; ``extra()`` names more processes of the attempt (the
    orphans a subreaper adopted)."""
    if not signal_all(marker, pgid, signal.SIGTERM, extra) and not group_alive(pgid):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        wait(min(_POLL, max(deadline - time.monotonic(), 0.0)))
        if not group_alive(pgid) and not marked_pids(marker, exclude=os.getpid()) and not extra():
            return
    for _ in range(50):  # a process may fork while we kill: repeat until nothing is left
        if not signal_all(marker, pgid, signal.SIGKILL, extra):
            return
        time.sleep(_POLL)


def main(argv: list[str]) -> int:
    """Wait for end-of-file on stdin, then sweep (see the module docstring)."""
    marker, grace = argv[1], float(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is the worker's, not ours
    pgid, buf = 0, b""
    while True:
        try:
            data = os.read(0, 4096)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.startswith(b"pgid "):
                pgid = int(line[5:])
            elif line == b"done":
                pgid = 0
    sweep(marker, pgid, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
