"""Worker entry module: ``celery -A workers.worker worker`` runs the ready app.

Your own app instead: ``SelfHeal(Celery("myapp", broker=...))`` (see workers/user_app.py).
"""

from celery_selfheal.app import app

__all__ = ["app"]
