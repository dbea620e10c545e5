"""The redactor builds its scanner on first use, once, from the environment it was given."""

from __future__ import annotations

import threading
import time

import pytest

from celery_selfheal.core import redact as redact_mod
from celery_selfheal.core.redact import REDACTED, RedactionConfig, Redactor

SECRET = "lazy-canary-9f8e7d6c5b4a3210"


def test_nothing_is_built_until_the_first_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    real = redact_mod.catalog_for
    monkeypatch.setattr(redact_mod, "catalog_for", lambda *a: built.append(a) or real(*a))
    r = Redactor({"API_TOKEN": SECRET}, RedactionConfig())
    assert built == [] and r.is_secret_key("password")  # key rules need no scanner
    assert r.redact(f"token {SECRET}") == f"token {REDACTED}"
    assert r.redact(f"again {SECRET}!") == f"again {REDACTED}!"
    assert len(built) == 1


def test_the_environment_is_the_one_at_construction() -> None:
    env = {"API_TOKEN": SECRET}
    r = Redactor(env)
    env["API_TOKEN"] = "changed-after-construction-1234"
    env["OTHER_SECRET"] = "added-after-construction-5678"
    text = f"{SECRET} changed-after-construction-1234 added-after-construction-5678"
    assert r.redact(text) == f"{REDACTED} changed-after-construction-1234 added-after-construction-5678"


def test_threads_racing_for_the_first_use_share_one_scanner(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []
    real = Redactor._build

    def slow_build(self: Redactor, env: dict[str, str]) -> object:
        builds.append(1)
        time.sleep(0.05)  # widens the window in which an unlocked build would run twice
        return real(self, env)

    monkeypatch.setattr(Redactor, "_build", slow_build)
    r = Redactor({"DB_PASSWORD": SECRET})
    start = threading.Barrier(5)
    out: list[str] = []

    def use() -> None:
        start.wait(5)
        out.append(r.redact(f"x {SECRET}"))

    threads = [threading.Thread(target=use) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert out == [f"x {REDACTED}"] * 5 and builds == [1]
