"""Worker start of an installed app: refuse a configuration we cannot run, then say what we set.

The refusal runs on ``celeryd_init``, before the banner and before any broker connection, so a
worker that could never run a step (no store beside a RabbitMQ broker, ``accept_content`` without
JSON, a bad ``selfheal_*`` key) exits with one line and status 2 instead of taking messages. The
notes (what `SelfHeal(app)` added, where unconfigured roots went, pickle accepted) are logged on
``celeryd_after_setup``, once logging is set up.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery.signals import celeryd_after_setup, celeryd_init

from celery_selfheal.errors import ConfigError

log = logging.getLogger(__name__)
#: exit status of a worker refusing its configuration (bad input)
REFUSED = 2


def refusal(selfheal: Any, conf: Any) -> str | None:
    """Why a worker of ``selfheal``'s app must not start, or None."""
    from celery_selfheal.wiring.app_conf import serializer_problems

    try:
        selfheal.settings  # noqa: B018 - resolving is the check
    except ConfigError as exc:
        return str(exc)
    return serializer_problems(conf)[0]


def startup_notes(selfheal: Any, conf: Any) -> list[str]:
    """The start-up log lines of a user's app (empty for the ready app)."""
    from celery_selfheal.wiring.app_conf import defaults_line, serializer_problems

    if not selfheal.from_app:
        return []
    added = ", ".join(f"{k}={v!r}" for k, v in sorted(selfheal.added.items())) or "nothing"
    notes = [f"celery-selfheal: SelfHeal(app) set {added} (settings you set are left alone); "
             f"broker {selfheal.settings.broker_url.split('://', 1)[0]}, store "
             f"{selfheal.settings.store_url.split('://', 1)[0]}"]
    roots = defaults_line(selfheal.settings, os.environ)
    if roots:
        notes.append(roots)
    warning = serializer_problems(conf)[1]
    if warning:
        notes.append(f"celery-selfheal: warning: {warning}")
    return notes


def connect_startup(selfheal: Any) -> None:
    """Connect the refusal and the notes for workers of ``selfheal.app`` (call before other
    ``celeryd_init`` handlers: they read the settings the refusal checks)."""
    app: Any = selfheal.app

    @celeryd_init.connect(weak=False)
    def refuse(sender: Any = None, instance: Any = None, conf: Any = None, **_: Any) -> None:
        if getattr(instance, "app", None) is not app:
            return
        why = refusal(selfheal, selfheal.app.conf)
        if why:
            sys.stderr.write(f"celery-selfheal: error: {why}\n")
            sys.stderr.flush()
            raise SystemExit(REFUSED)

    @celeryd_after_setup.connect(weak=False)
    def notes(sender: Any = None, instance: Any = None, **_: Any) -> None:
        if getattr(instance, "app", None) is not app:
            return
        for line in startup_notes(selfheal, selfheal.app.conf):
            (log.warning if "warning:" in line else log.info)("%s", line)
