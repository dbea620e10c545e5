"""Where events go besides the store: Celery events, StatsD. Each sink is one small module."""
