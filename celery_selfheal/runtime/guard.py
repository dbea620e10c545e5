"""The attempt guard: a tiny process that ends the attempts of a process that died.

One guard per supervising process (a Celery pool child, or a threads/solo worker), started with its
first attempt: ``python -I -S guard.py TABLE_FD``, stdlib only, in its own session, with the read
end of a pipe as stdin whose write end only the supervising process holds (and never writes), and
a memfd shared with it, the table (`runtime.guard_link`): one slot of ``SLOT`` bytes per attempt.
That process names each attempt in a slot before its runtime starts (``+ MARKER 0 GRACE``), then
its process group (``+ MARKER PGID GRACE``), and blanks the slot when the attempt has been cleaned
up. When the process ends in any way, SIGKILL and the OOM killer included, the kernel closes the
write end, ``read`` returns end-of-file, and the guard reads the table and ends every attempt
still named: its runtime's process group and every process whose environment carries its marker
(``SELFHEAL_ATTEMPT_MARKER``, inherited by descendants that left the group with ``setsid`` or a
double fork). TERM, up to GRACE seconds, then KILL; then it exits. A process that exits normally
has no attempt left, and its guard just exits. Until then it sleeps: nothing wakes it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Iterable

MARKER_VAR = "SELFHEAL_ATTEMPT_MARKER"
#: bytes per attempt in the table (``+ MARKER PGID GRACE``, space-padded, newline-terminated)
SLOT = 128
_POLL = 0.02


def marked_pids(markers: Collection[str], *, exclude: int = 0, names: Iterable[str] | None = None) -> list[int]:
    """Pids of live processes whose environment has ``SELFHEAL_ATTEMPT_MARKER=<m>``, m in ``markers``;
    among the ``/proc`` entries ``names`` if given (the caller knows where they can be)."""
    needles = [f"\0{MARKER_VAR}={m}\0".encode() for m in markers]
    found: list[int] = []
    if not needles:
        return found
    for name in os.listdir("/proc") if names is None else names:
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = b"\0" + fh.read() + b"\0"
            if not any(n in env for n in needles):
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


def signal_all(markers: Collection[str], pgids: Collection[int], sig: int,
               extra: Callable[[], list[int]] = list, marked: Callable[[], list[int]] | None = None) -> int:
    """Send ``sig`` to the groups, every marked process (``marked()`` if given finds them) and the
    pids ``extra()`` names; the number of processes signalled outside the groups."""
    for pgid in pgids:
        if _group_members(pgid):
            with contextlib.suppress(OSError):
                os.killpg(pgid, sig)
    found = marked() if marked is not None else marked_pids(markers, exclude=os.getpid())
    pids = set(found) | set(extra())
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    return len(pids)


def sweep(markers: Collection[str], pgids: Collection[int], grace: float, *,
          group_alive: Callable[[int], bool] = _group_members, wait: Callable[[float], object] = time.sleep,
          extra: Callable[[], list[int]] = list, marked: Callable[[], list[int]] | None = None) -> None:
    """TERM everything of the attempts, wait up to ``grace`` for it to go, KILL what is left.

    ``group_alive`` and ``wait`` let a supervisor that owns the leader count its zombie as gone
    and keep reading output while it waits; ``extra()`` names more processes of the attempt (the
    orphans a subreaper adopted); ``marked()`` finds the marked processes faster than a look at
    every process."""
    find = marked if marked is not None else (lambda: marked_pids(markers, exclude=os.getpid()))

    def alive() -> bool:
        return any(group_alive(p) for p in pgids) or bool(find()) or bool(extra())

    if not signal_all(markers, pgids, signal.SIGTERM, extra, find) and not any(group_alive(p) for p in pgids):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        wait(min(_POLL, max(deadline - time.monotonic(), 0.0)))
        if not alive():
            return
    for _ in range(50):  # a process may fork while we kill: repeat until nothing is left
        if not signal_all(markers, pgids, signal.SIGKILL, extra, find) and not any(group_alive(p) for p in pgids):
            return
        time.sleep(_POLL)


def read_table(fd: int) -> dict[str, tuple[int, float]]:
    """The attempts named in the slot table ``fd``: marker -> (pgid, grace); blank or unreadable
    slots are skipped."""
    active: dict[str, tuple[int, float]] = {}
    try:
        data = os.pread(fd, os.fstat(fd).st_size, 0)
    except OSError:
        return active
    for line in data.replace(b"\0", b" ").split(b"\n"):  # a slot never written reads as NULs
        try:
            op, marker, pgid, grace = line.decode("ascii").split()
            if op == "+":
                active[marker] = (int(pgid), float(grace))
        except ValueError:  # a blank slot
            continue
    return active


def main(argv: list[str]) -> int:
    """Sleep until the supervising process is gone (end-of-file on stdin), then sweep the attempts
    its table (the fd in ``argv[1]``) still names."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is the worker's, not ours
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    active = read_table(int(argv[1])) if len(argv) > 1 else {}
    if active:
        sweep(list(active), [p for p, _ in active.values() if p > 1], max(g for _, g in active.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
