"""A runtime that leaves processes behind: ``daemonize.py PIDFILE EXIT_CODE [--stay SECONDS]``.

Starts two SIGTERM-ignoring leftovers, then exits with EXIT_CODE (after ``--stay`` seconds of
printing, so a cancel or a time limit can catch it running):

- a double-forked daemon that called ``setsid`` (it left the runtime's process group and session,
  its parent is gone);
- a plain child in the runtime's group.

Each appends its pid to PIDFILE once it ignores SIGTERM (one line per process), so a test can
wait for both and then check that they are gone.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def leftover(pidfile: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for fd in (0, 1, 2):  # a daemon lets go of the runtime's pipes, as dev servers do
        os.close(fd)
    with open(pidfile, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(600)
    os._exit(0)


def _lines(pidfile: str) -> int:
    try:
        with open(pidfile) as fh:
            return len(fh.read().split())
    except FileNotFoundError:
        return 0


def main() -> None:
    pidfile, code = sys.argv[1], int(sys.argv[2])
    stay = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--stay" else 0.0
    before = _lines(pidfile)
    if os.fork() == 0:  # double fork + setsid
        os.setsid()
        if os.fork() == 0:
            leftover(pidfile)
        os._exit(0)
    if os.fork() == 0:  # stays in the group
        leftover(pidfile)
    # go on only once both ignore SIGTERM and wrote their pids: on a busy machine the step could
    # otherwise end, and its leftovers be killed, before they were ever recorded
    deadline = time.monotonic() + 30
    while _lines(pidfile) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    print("spawned leftovers", flush=True)
    deadline = time.monotonic() + stay
    while time.monotonic() < deadline:
        print("working", flush=True)
        time.sleep(0.2)
    sys.exit(code)


if __name__ == "__main__":
    main()
