"""Celery event sink: every contract event also goes out as a Celery event (REQ-10).

Type names. Celery's event state (``celery events``, Flower) splits a type at its first dash
into a group and a subject and treats the ``task`` group as the lifecycle of the task whose
``uuid`` the event carries: a custom ``task-*`` type would overwrite that task's state (and
Flower looks up ``event['uuid']``, failing on events without one). So the events go out as
their own group, ``selfheal``, following Celery's own ``group-subject`` spelling: the contract
name with dots turned into dashes (``task.step.attempt.failed`` ->
``selfheal-task-step-attempt-failed``, routing key ``selfheal.task.step.attempt.failed``), and
the contract name itself kept in the ``event`` field. Monitors count these per worker and leave
task state alone.

Delivery. One dispatcher per process (recreated after a fork, as in the prefork pool), with its
own broker connection, so it works whether or not the worker runs with ``-E``. Broker trouble is
logged and the event dropped: nothing is raised into the job, connecting is bounded by
``connect_timeout``, and after a failure events are dropped without trying for
``retry_interval`` seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

#: the group of every celery-selfheal Celery event (``selfheal-…``)
EVENT_GROUP = "selfheal"
#: prefix of every celery-selfheal Celery event type
EVENT_TYPE_PREFIX = EVENT_GROUP + "-"

# Keys Celery puts on every event (or takes as arguments when building one): a contract field of
# the same name is sent as ``selfheal_<key>`` instead of clobbering the envelope.
_RESERVED = frozenset(
    {
        "type",
        "hostname",
        "timestamp",
        "utcoffset",
        "pid",
        "clock",
        "local_received",
        "_fields",
        "__dict__",
        "__now__",
    }
)
# One reconnect try per publish: enough to ride over a broker restart, short enough for a job.
_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def celery_event_type(name: str) -> str:
    """Return the Celery event type for a contract event name.

    >>> celery_event_type("task.step.attempt.failed")
    'selfheal-task-step-attempt-failed'
    """
    return EVENT_TYPE_PREFIX + name.replace(".", "-")


def contract_event_name(event_type: str) -> str | None:
    """Return the contract name for one of our Celery event types, ``None`` for any other type."""
    if not event_type.startswith(EVENT_TYPE_PREFIX):
        return None
    return event_type[len(EVENT_TYPE_PREFIX) :].replace("-", ".")


def event_fields(event: dict[str, Any]) -> dict[str, Any]:
    """Return the event's fields as sent: reserved Celery keys renamed to ``selfheal_<key>``."""
    return {(f"selfheal_{k}" if k in _RESERVED else k): v for k, v in event.items()}


def _worker_hostname(app: Celery) -> str | None:
    """The node name of the worker running the current task (``celery@host``), if any."""
    task = app.current_worker_task
    hostname = getattr(getattr(task, "request", None), "hostname", None) if task is not None else None
    return hostname if isinstance(hostname, str) and hostname else None


class CeleryEventSink:
    """Event sink publishing each contract event as a ``selfheal-*`` Celery event."""

    # per-process state, (re)set by _reset() at start and after a fork
    _pid: int
    _lock: threading.Lock
    _dispatcher: Any
    _connection: Any
    _retry_at: float
    _failing: bool
    _closed: bool

    def __init__(
        self,
        app: Celery,
        hostname: str | None = None,
        *,
        connect_timeout: float = 2.0,
        retry_interval: float = 10.0,
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        # objects inherited from a parent process: kept referenced so no finalizer ever closes
        # a broker socket the parent still uses
        self._inherited: list[Any] = []
        self._reset()

    def handle(self, event: dict[str, Any]) -> None:
        """Publish one event. Never raises.

        A broker error (cannot connect, connection lost) is logged once, the event dropped, and
        nothing is tried for ``retry_interval`` seconds; any other error drops this event only.
        """
        try:
            name = event.get("event")
            fields = event_fields(event)
        except Exception:
            logger.debug("not an event: %r", event, exc_info=True)
            return
        if not isinstance(name, str) or not name:
            return
        try:
            if self._pid != os.getpid():
                self._inherited.append((self._dispatcher, self._connection))
                self._reset()
            with self._lock:
                if self._closed or time.monotonic() < self._retry_at:
                    return
                dispatcher = self._dispatcher or self._open()
        except Exception as exc:  # cannot connect: back off
            self._fail(exc)
            return
        try:
            with self._lock:
                dispatcher.publish(
                    celery_event_type(name),
                    fields,
                    dispatcher.producer,
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                )
                if self._failing:
                    self._failing = False
                    logger.info("Celery events are being sent again")
        except Exception as exc:  # events are best effort: nothing reaches the job
            if self._is_broker_error(exc):
                self._fail(exc)
            else:
                # this event, not the broker (unserializable fields, or a transport hiccup such
                # as kombu's filesystem transport reading a half-written file): drop it alone
                logger.warning("Celery event %s dropped (%s: %s)", name, type(exc).__name__, exc)

    def close(self) -> None:
        """Release the broker connection; later events are dropped."""
        with self._lock:
            self._closed = True
            self._drop_connection()

    # -- internals --------------------------------------------------------------------------

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._dispatcher = None
        self._connection = None
        self._retry_at = 0.0
        self._failing = False
        self._closed = False

    def _open(self) -> Any:
        hostname = self.hostname or _worker_hostname(self.app) or anon_nodename()
        self._connection = self.app.connection_for_write(
            connect_timeout=self.connect_timeout,
            transport_options=dict(_RETRY_POLICY),
        )
        # buffer_while_offline=False: a failed publish raises here instead of growing a buffer
        # nobody flushes; enabled=True: independent of the worker's -E / worker_send_task_events
        self._dispatcher = self.app.events.Dispatcher(
            self._connection, hostname=hostname, enabled=True, buffer_while_offline=False,
            serializer="json",  # JSON whatever the app's event_serializer (a user's app may differ)
        )
        return self._dispatcher

    def _is_broker_error(self, exc: Exception) -> bool:
        connection = self._connection
        errors: tuple[type[BaseException], ...] = (OSError, OperationalError)
        if connection is not None:
            errors += tuple(connection.connection_errors) + tuple(connection.channel_errors)
        return isinstance(exc, errors)

    def _drop_connection(self) -> None:
        dispatcher, connection = self._dispatcher, self._connection
        self._dispatcher = self._connection = None
        for closable in (dispatcher, connection):
            if closable is not None:
                try:
                    closable.close()
                except Exception:
                    logger.debug("closing the event connection failed", exc_info=True)

    def _fail(self, exc: Exception) -> None:
        try:
            with self._lock:
                self._drop_connection()
                self._retry_at = time.monotonic() + self.retry_interval
                first = not self._failing
                self._failing = True
            if first:
                logger.warning(
                    "Cannot send Celery events (%s: %s); dropping them, retrying in %ss",
                    type(exc).__name__,
                    exc,
                    self.retry_interval,
                )
        except Exception:
            pass
