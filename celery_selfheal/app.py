"""The ready Celery app: ``celery -A celery_selfheal.app worker|inspect|control|selfheal …``.

Configured from env (``SELFHEAL_*``) and ``config.toml``; with no broker configured it uses the
embedded ``filesystem://`` broker under the state dir. Importing it has no side effects beyond
reading configuration.
"""

from __future__ import annotations

import sys

from celery import Celery

from celery_selfheal.errors import ConfigError
from celery_selfheal.settings import load_settings
from celery_selfheal.wiring.install import SelfHeal

try:
    settings = load_settings()
except ConfigError as exc:
    # `celery -A celery_selfheal.app worker` would print the import's traceback (celery wraps every
    # exception of the -A module); SystemExit passes through it: one line, exit 2, nothing consumed.
    print(f"selfheal: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

app = Celery("celery_selfheal")
app.conf.update(
    **settings.celery_conf(),
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_default_queue="selfheal",
    worker_redirect_stdouts=False,
    # Task events on by default (as -E): Flower and `celery events` then show every step task and
    # each retry's reason from the first one on (docs/observability.md, "Flower").
    worker_send_task_events=True,
)
selfheal = SelfHeal(app, settings)

__all__ = ["app", "selfheal"]
