"""A user's own Celery app, configured the Celery way, for the user-app tests (``celery -A
tests.user_app worker|selfheal …``). The test sets the broker and a few keys through env vars of
its own (names that mean nothing to celery-selfheal), as a project reads its own settings."""

from __future__ import annotations

import os

from celery import Celery

from celery_selfheal import SelfHeal

app = Celery("tests.user_app")
conf: dict[str, object] = {
    "broker_url": os.environ["USERAPP_BROKER"],
    # the user's own choices, which SelfHeal(app) must leave alone
    "task_serializer": os.environ.get("USERAPP_SERIALIZER", "json"),
    "accept_content": os.environ.get("USERAPP_ACCEPT", "json").split(","),
    "worker_prefetch_multiplier": 3,
    "task_default_queue": "userq",
}
for key in ("selfheal_store_url", "selfheal_artifact_root", "selfheal_step_timeout_seconds"):
    value = os.environ.get("USERAPP_" + key.upper())
    if value:
        conf[key] = float(value) if key.endswith("_seconds") else value
app.config_from_object(conf)
selfheal = SelfHeal(app)
