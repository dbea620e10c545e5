"""Kept importable: ``celery_selfheal.broker_fs:Transport`` may be named in users' configs.
The embedded filesystem transport lives in `celery_selfheal.embedded.transport`."""

from celery_selfheal.embedded.transport import TRANSPORT, Channel, Transport

__all__ = ["TRANSPORT", "Channel", "Transport"]
