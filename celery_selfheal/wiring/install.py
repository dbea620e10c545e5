"""`SelfHeal(app)`: the one-call install of tasks, signals, control commands and config into an app."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery

from celery_selfheal.context import Context, build_context
from celery_selfheal.errors import ConfigError
from celery_selfheal.settings import Settings, load_settings

log = logging.getLogger(__name__)

#: what an install with explicit settings (the ready app) sets; a user's app keeps its own settings
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

    Registers the ``selfheal.run_step`` task, the worker signal handlers and the ``selfheal_*``
    remote control/inspect commands. Without ``settings`` the app is a user's own: its broker and
    ``selfheal_*`` keys of ``app.conf`` are read (`wiring.app_conf`) when the app is configured, and
    only settings the user did not set are added (named in one log line at worker start).
    ``settings`` (the ready app, tests) are used as given; ``configure_broker`` then also applies
    their broker to the app.
    """

    def __init__(self, app: Celery, settings: Settings | None = None, *, configure_broker: bool = False) -> None:
        self.app = app
        #: True for a user's own app: settings come from app.conf (and nothing embedded is implied)
        self.from_app = settings is None and not configure_broker
        self._settings = settings if settings is not None or self.from_app else load_settings()
        self._ctx: Context | None = None
        self._lock = threading.Lock()
        #: the app settings we added (user app only), for the start-up log line
        self.added: dict[str, Any] = {}
        #: the ``-A`` module a worker of this app is started with (set by the CLI; None: unknown)
        self.cli_app: str | None = None if self.from_app else "celery_selfheal.app"
        if not self.from_app:  # the ready app's way (and explicit settings): JSON only, set here
            app.conf.update(SAFE_CONF)
        if configure_broker:
            app.conf.update(self.settings.celery_conf())
        if self.from_app:
            if app.configured:
                self._configure_app(app.conf)
            else:
                app.on_after_configure.connect(self._on_configured, weak=False)
        from celery_selfheal.wiring.signals import connect_signals
        from celery_selfheal.wiring.startup import connect_startup
        from celery_selfheal.wiring.tasks import register_tasks

        connect_startup(self)  # first: the other worker-start handlers read the settings it checks

        self.run_step = register_tasks(app, self.context)
        connect_signals(app, self.context, self.reset, self._attach_worker_sinks)
        from celery_selfheal.cluster.sweeper import connect_recovery

        # lost-worker sweeper and cluster start-up checks; its events reach Celery events too
        connect_recovery(app, lambda: self.settings, context_factory=self.worker_context)
        from celery_selfheal.control import remote as control

        control.register_control_commands(app, self.context)
        app.selfheal = self

    @property
    def settings(self) -> Settings:
        """This install's settings (a user app's are resolved from ``app.conf`` on first use)."""
        if self._settings is None:
            from celery_selfheal.wiring.app_conf import settings_for_app

            self._settings = settings_for_app(self.app)
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self._settings = value

    def _on_configured(self, sender: Any = None, source: Any = None, **_: Any) -> None:
        if sender is self.app:
            self._configure_app(source)

    def _configure_app(self, conf: Any) -> None:
        """Add what we need that the user did not set (a bad config is reported at worker start)."""
        from celery_selfheal.wiring.app_conf import app_defaults

        try:
            self.added = app_defaults(conf, self.settings)
        except ConfigError:
            return
        conf.update(self.added)

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
