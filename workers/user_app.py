"""How to install celery-selfheal into your own Celery app (one call)."""

from celery import Celery

from celery_selfheal import SelfHeal

app = Celery("user_app")
app.config_from_object({"task_default_queue": "selfheal"})
selfheal = SelfHeal(app, configure_broker=True)
