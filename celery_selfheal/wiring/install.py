"""`SelfHeal(app)`: the one-call install of tasks, signals, control commands and config into an app."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery

from celery_selfheal.context import Context, build_context
from celery_selfheal.settings import Settings, load_settings

log = logging.getLogger(__name__)

#: settings we insist on: JSON everywhere (never pickle)
SAFE_CONF: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_track_started": True,
    # One message at a time per child: a long step must not sit on prefetched work.
    "worker_prefetch_multiplier": 1,
}


class SelfHeal:
    """Install celery-selfheal into ``app``.

    Registers the ``selfheal.run_step`` task, the worker signal handlers, the ``selfheal_*`` remote
    control/inspect commands and forces JSON serialization. ``settings`` defaults to the env/config
    resolution shared with the CLI.
    """

    def __init__(self, app: Celery, settings: Settings | None = None, *, configure_broker: bool = False) -> None:
        self.app = app
        self.settings = settings or load_settings()
        self._ctx: Context | None = None
        self._lock = threading.Lock()
        app.conf.update(SAFE_CONF)
        if configure_broker:
            app.conf.update(self.settings.celery_conf())
        from celery_selfheal.wiring.signals import connect_signals
        from celery_selfheal.wiring.tasks import register_tasks

        self.run_step = register_tasks(app, self.context)
        connect_signals(app, self.context, self.reset, self._attach_worker_sinks)
        from celery_selfheal.cluster.sweeper import connect_recovery

        # lost-worker sweeper and cluster start-up checks; its events reach Celery events too
        connect_recovery(app, self.settings, context_factory=self.worker_context)
        from celery_selfheal.control import remote as control

        control.register_control_commands(app, self.context)
        app.selfheal = self

    def context(self) -> Context:
        """This process's context (built lazily, rebuilt after fork)."""
        with self._lock:
            if self._ctx is None:
                self._ctx = build_context(self.settings)
            return self._ctx

    def reset(self) -> None:
        """Drop the context (after fork, or when tests swap settings)."""
        with self._lock:
            self._ctx = None

    def use_context(self, ctx: Context) -> None:
        """Use an explicit context (the CLI applies its flags this way)."""
        with self._lock:
            self._ctx = ctx

    def worker_context(self, hostname: str = "") -> Context:
        """A fresh context for a worker-side thread (the sweeper), with the Celery event sink."""
        ctx = build_context(self.settings)
        self._attach_worker_sinks(ctx, hostname)
        return ctx

    def _attach_worker_sinks(self, ctx: Context, hostname: str) -> None:
        from celery_selfheal.events.celery_events import CeleryEventSink

        ctx.bus.add_sink(CeleryEventSink(self.app, hostname=hostname or None))
