"""The two-backend store fixture of the store tests: every test taking ``store`` runs on SQLite and
on a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_selfheal.store import StateStore, open_store


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    url = f"sqlite:///{tmp_path}/state/store.db" if request.param == "sqlite" \
        else request.getfixturevalue("redis_url")
    opened = open_store(url)
    yield opened
    opened.close()
