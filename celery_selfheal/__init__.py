"""celery-selfheal: self-healing multi-step Celery jobs."""

from __future__ import annotations

__version__ = "0.1.0"
