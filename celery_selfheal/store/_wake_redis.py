"""Wake-ups for the Redis store: ``PUBLISH <prefix>wake:<db> <job id>``, heard by one subscriber
thread per process that writes a byte into the self-pipe of each attempt listening for that job.

One channel for every job: a process subscribes once (not once per attempt), and a wake-up is rare
(an operator's cancel or preempting request), so hearing other jobs' ones costs nothing. The db is
in the channel's name because Redis channels are not per database. The thread uses redis-py's
PubSub on the store's client: a lost connection is reconnected and the channel subscribed again by
redis-py (the store's retry policy), and by this loop with a new PubSub when those retries give up.
A publish made while the subscriber was away is lost, so every confirmed (re)subscription pokes
every listener: they read the job at once instead of at their fallback poll. ``get_message`` waits
at most `LISTEN_TIMEOUT`, so the connection's health check (a PING every ``health_check_interval``)
runs while nothing is published. As with `cluster.renewer`, a forked child starts with no thread,
no listeners and fresh locks: the parent's subscriber is not the child's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery_selfheal.store.base import drain_fd

log = logging.getLogger(__name__)

#: longest wait in ``get_message``, so that idle connections are health-checked
LISTEN_TIMEOUT = 5.0
#: pause before a new PubSub once redis-py's own reconnects gave up
RECONNECT_PAUSE = 1.0
#: how long the first listener of a process waits for the subscription (one round trip normally);
#: past it the attempt starts anyway, poked when the subscription is confirmed
SUBSCRIBE_WAIT = 2.0


class PipeListener:
    """One attempt's self-pipe (`StateStore.wake_listener` of the Redis store)."""

    def __init__(self, hub: WakeHub, job_id: str) -> None:
        self.hub, self.job_id = hub, job_id
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._open = True

    def fileno(self) -> int:
        """The read end: readable once the job was woken."""
        return self._read

    def poke(self) -> None:
        """Make ``fileno`` readable (called by the subscriber thread, under the hub's lock)."""
        with contextlib.suppress(BlockingIOError):  # full: woken already
            os.write(self._write, b"!")

    def drain(self) -> None:
        """Read the pokes (one wake-up however many)."""
        drain_fd(self._read)

    def close(self) -> None:
        """Stop listening and close the pipe (idempotent)."""
        if not self._open:
            return
        self._open = False
        self.hub.remove(self)
        os.close(self._write)
        os.close(self._read)


class WakeHub:
    """The subscriber of one channel in this process and the listeners it pokes."""

    def __init__(self, pubsub: Callable[[], Any], channel: str) -> None:
        self._pubsub, self.channel = pubsub, channel
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, set[PipeListener]] = {}
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # set at the first confirmed subscription
        self.subscriptions = 0
        self._gave_up = False  # one listener waited SUBSCRIBE_WAIT in vain: the next ones do not wait

    def listen(self, job_id: str) -> PipeListener:
        """A listener for ``job_id``, registered once the channel is subscribed (or `SUBSCRIBE_WAIT`
        passed): a listener that missed the confirmation is poked by the next one."""
        listener = PipeListener(self, job_id)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="selfheal-wake-subscriber", daemon=True)
                self._thread.start()
        if not self._gave_up and not self.ready.wait(SUBSCRIBE_WAIT):
            self._gave_up = True  # e.g. a Redis user not allowed to SUBSCRIBE: never delay attempts again
        with self._lock:
            self._listeners.setdefault(job_id, set()).add(listener)
        return listener

    def remove(self, listener: PipeListener) -> None:
        """Forget ``listener`` (idempotent)."""
        with self._lock:
            found = self._listeners.get(listener.job_id)
            if found is not None:
                found.discard(listener)
                if not found:
                    del self._listeners[listener.job_id]

    def _run(self) -> None:
        while True:
            try:
                self._serve()
            except Exception as exc:  # Redis away for longer than redis-py retries: start over
                log.debug("celery-selfheal: wake-up subscriber of %s lost Redis: %s", self.channel, exc)
                time.sleep(RECONNECT_PAUSE)

    def _serve(self) -> None:
        pubsub = self._pubsub()
        try:
            pubsub.subscribe(self.channel)
            while True:
                message = pubsub.get_message(timeout=LISTEN_TIMEOUT)
                if message is not None:
                    self._handle(message)
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()

    def _handle(self, message: dict[str, Any]) -> None:
        with self._lock:
            if message["type"] == "subscribe":
                # every listener registered now may have missed a publish while we were not subscribed
                self.subscriptions += 1
                targets = [listener for found in self._listeners.values() for listener in found]
            elif message["type"] == "message":
                targets = list(self._listeners.get(message["data"], ()))
            else:
                return
            for listener in targets:
                listener.poke()
        self.ready.set()


_HUBS: dict[tuple[str, str], WakeHub] = {}
_HUBS_LOCK = threading.Lock()


def hub(key: str, channel: str, pubsub: Callable[[], Any]) -> WakeHub:
    """This process's hub for ``channel`` of the server ``key`` (made on first use)."""
    with _HUBS_LOCK:
        found = _HUBS.get((key, channel))
        if found is None:
            found = _HUBS[(key, channel)] = WakeHub(pubsub, channel)
        return found


def _reset_in_child() -> None:
    # a thread may have held these locks at the fork; the child's listeners are none of the parent's
    global _HUBS_LOCK
    _HUBS_LOCK = threading.Lock()
    for found in _HUBS.values():
        found._reset()


os.register_at_fork(after_in_child=_reset_in_child)


def publish(client: Callable[[], Any], channel: str, job_id: str) -> None:
    """``PUBLISH`` the wake-up on ``client()`` (`StateStore.wake`: never raises)."""
    try:
        client().publish(channel, job_id)
    except Exception as exc:  # the attempt's fallback poll still sees the request
        log.debug("celery-selfheal: publishing the wake-up of job %s failed: %s", job_id, exc)
