"""One daemon thread per process that renews every attempt lease held in it, each when it is due.

A thread per attempt cost a thread start and a join on every step (milliseconds on a busy machine,
as much as a short step's store traffic); a pool child runs one attempt at a time, so one thread
that lives as long as the process does the same work. It is started on first use and again after a
``fork()`` (threads do not survive it; the leases a parent held are not the child's; an at-fork
hook gives the child a fresh lock, which the parent's thread may have held). A renewal runs
outside the renewer's lock, under the lease's own (`AttemptLease.renew`), so releasing a lease waits
for a renewal in flight, as joining its thread did.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Protocol

log = logging.getLogger(__name__)


class Renewable(Protocol):
    """What the renewer needs of a lease."""

    renew_every: float

    def renew_due(self) -> bool:
        """Renew now; False once the lease is gone for good (then it is dropped)."""
        ...


class Renewer:
    """Renews each added lease every ``renew_every`` seconds until it is removed."""

    #: longest sleep with nothing to renew (a new lease wakes the thread at once anyway)
    IDLE = 60.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Renewable, float] = {}
        self._thread: threading.Thread | None = None
        # The renewer thread may hold the lock at the moment of a fork(); the child would then wait
        # on it for ever. So the child starts with a fresh lock, no leases and no thread.
        ref = weakref.ref(self)

        def reset_in_child() -> None:
            renewer = ref()
            if renewer is not None:
                renewer._reset()

        os.register_at_fork(after_in_child=reset_in_child)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._due = {}
        self._thread = None

    def add(self, lease: Renewable) -> None:
        """Start renewing ``lease`` (its first renewal ``renew_every`` from now)."""
        with self._cond:
            self._ensure_thread()
            self._due[lease] = time.monotonic() + lease.renew_every
            self._cond.notify()

    def remove(self, lease: Renewable) -> None:
        """Stop renewing ``lease`` (idempotent)."""
        with self._cond:
            self._due.pop(lease, None)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="selfheal-lease-renewer", daemon=True)
            self._thread.start()

    def _next(self) -> list[Renewable]:
        """Wait until some lease is due; return those due (their next time already set)."""
        with self._cond:
            while True:
                now = time.monotonic()
                due = [lease for lease, at in self._due.items() if at <= now]
                if due:
                    for lease in due:
                        self._due[lease] = now + lease.renew_every
                    return due
                self._cond.wait(min(self._due.values(), default=now + self.IDLE) - now)

    def _run(self) -> None:
        while True:
            for lease in self._next():
                try:
                    keep = lease.renew_due()
                except Exception:  # one lease's bug must not end the renewals of every later attempt
                    log.exception("celery-selfheal: renewing a lease raised; it is no longer renewed")
                    keep = False
                if not keep:
                    self.remove(lease)


#: the process's renewer
RENEWER = Renewer()
