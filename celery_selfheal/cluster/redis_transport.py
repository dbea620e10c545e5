"""The cluster broker: kombu's Redis transport, surviving a Redis restart with acks_late tasks running.

With kombu 5.7, when the worker's broker connection drops while a task is unacknowledged (every
running step: ``acks_late``), Celery collects the connection (the transport's client becomes None)
and then closes it; closing the default channel tries to put the unacked message back and fails
with ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which Celery treats as an
unrecoverable error: the worker exits; so does the acknowledgement of that task when it finishes
after the reconnect (the old channel has no connection any more). Here both end quietly instead.
Nothing is lost: the message stays in Redis's unacked set and comes back after the visibility
timeout, where the attempt gate (`celery_selfheal.cluster.gate`) sees that it already ran.
Selected with ``broker_transport`` (`cluster.checks.configure_app`) while the URL stays ``redis://``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from kombu.transport import redis

TRANSPORT = "celery_selfheal.cluster.redis_transport:Transport"

log = logging.getLogger(__name__)


class Channel(redis.Channel):
    """A Redis channel whose close tolerates a transport that was already collected, and which
    builds its synchronous Redis client once per connection pool."""

    _sync_client: Any = None
    _sync_pool: Any = None

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu builds a new ``redis.Redis`` for every publish, ack and queue operation (about
        75 us of Python each with redis-py 8, several times a step); a client holds
        no connection of its own (each command borrows one from the pool), so one per pool serves
        every call, from any thread. A new pool (after a reconnect) gets a new client."""
        if client:
            yield client
            return
        pool = self.pool
        if self._sync_client is None or self._sync_pool is not pool:
            self._sync_client, self._sync_pool = self._create_client(), pool
        yield self._sync_client

    def close(self) -> None:
        try:
            super().close()
        except AttributeError:
            if getattr(self.connection, "client", None) is not None:
                raise
            log.warning("celery-selfheal: broker connection lost with unacknowledged messages; they come "
                        "back after the visibility timeout")
            # the rest of kombu's close, skipped by the exception
            if self._cycle is not None:
                self._cycle.close()
                self._cycle = None
            with contextlib.suppress(Exception):
                self.connection.close_channel(self)


    def _gone(self) -> bool:
        return self.connection is None or getattr(self.connection, "client", None) is None

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        try:
            super().basic_ack(delivery_tag, multiple)
        except AttributeError:
            if not self._gone():
                raise
            log.warning("celery-selfheal: cannot acknowledge message %s on a closed broker connection; it "
                        "comes back after the visibility timeout and is recognised as done", delivery_tag)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().basic_reject(delivery_tag, requeue)
        except AttributeError:
            if not self._gone():
                raise
            log.warning("celery-selfheal: cannot reject message %s on a closed broker connection; it comes "
                        "back after the visibility timeout", delivery_tag)


class Transport(redis.Transport):
    """kombu's Redis transport with `Channel`."""

    Channel = Channel
