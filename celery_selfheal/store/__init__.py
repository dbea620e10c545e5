"""State stores: one contract (`StateStore`), two real backends chosen by URL."""

from __future__ import annotations

from celery_selfheal.store.base import StateStore, open_store

__all__ = ["StateStore", "open_store"]
