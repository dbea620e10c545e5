"""Kept importable: ``celery_selfheal.broker_redis:Transport`` may be named in users' configs.
The Redis transport lives in `celery_selfheal.cluster.redis_transport`."""

from celery_selfheal.cluster.redis_transport import TRANSPORT, Channel, Transport

__all__ = ["TRANSPORT", "Channel", "Transport"]
