"""The process's lease renewer: one thread renews every held lease when due, drops the ones that
are gone, and starts again in a forked child (which inherits none of the parent's leases)."""

from __future__ import annotations

import multiprocessing
import threading
import time

from celery_selfheal.cluster.renewer import Renewer
from tests.conftest import wait_for


class Counting:
    def __init__(self, every: float, gone_after: int | None = None) -> None:
        self.renew_every, self.gone_after, self.calls = every, gone_after, 0

    def renew_due(self) -> bool:
        self.calls += 1
        return self.gone_after is None or self.calls < self.gone_after


def test_each_lease_is_renewed_on_its_own_period_until_removed() -> None:
    renewer = Renewer()
    fast, slow, gone = Counting(0.02), Counting(0.3), Counting(0.02, gone_after=2)
    for lease in (fast, slow, gone):
        renewer.add(lease)
    wait_for(lambda: fast.calls >= 10, "the fast lease renewed ten times", timeout=10)
    assert slow.calls <= fast.calls // 5 + 1
    assert gone.calls == 2  # dropped once it said it is gone
    renewer.remove(fast)
    # A renewal of `fast` already taken off the schedule may still land. The one thread renews in
    # batches, one after another: once two later batches renewed `slow`, any such batch is over.
    after = slow.calls
    wait_for(lambda: slow.calls >= after + 2, "the slow lease renewed twice more", timeout=10)
    calls = fast.calls
    wait_for(lambda: slow.calls >= after + 4, "the slow lease renewed twice again", timeout=10)
    assert fast.calls == calls
    assert len([t for t in threading.enumerate() if t.name == "selfheal-lease-renewer"]) >= 1


def _child(renewer: Renewer, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    lease = Counting(0.02)
    renewer.add(lease)
    deadline = time.monotonic() + 10
    while lease.calls < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    out.put((lease.calls, len(renewer._due)))


def test_a_forked_child_renews_its_own_leases_only() -> None:
    renewer = Renewer()
    parent = Counting(0.02)
    renewer.add(parent)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(renewer, out))
    proc.start()
    calls, held = out.get(timeout=20)
    proc.join(20)
    assert calls >= 3 and held == 1  # its own lease, renewed by its own thread; not the parent's
    renewer.remove(parent)


def test_a_child_forked_while_the_renewer_holds_its_lock_still_renews() -> None:
    renewer = Renewer()
    renewer.add(Counting(0.02))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with renewer._cond:  # what the renewer thread holds while it picks the leases that are due
        proc = ctx.Process(target=_child, args=(renewer, out))
        proc.start()
    calls, held = out.get(timeout=20)
    proc.join(20)
    assert calls >= 3 and held == 1


class Raising(Counting):
    def renew_due(self) -> bool:
        super().renew_due()
        raise RuntimeError("a bug in one lease")


def test_a_lease_that_raises_is_dropped_and_the_others_are_still_renewed() -> None:
    renewer = Renewer()
    bad, good = Raising(0.02), Counting(0.02)
    renewer.add(bad)
    renewer.add(good)
    wait_for(lambda: good.calls >= 5, "the good lease renewed five times", timeout=10)
    assert bad.calls == 1
    renewer.remove(good)
