"""A real uvicorn server on a free loopback port serving the console over a real store, and a real
HTTP client (httpx). Workers come from tests/integration/conftest.py where a test needs one."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from celery_selfheal.api import submit
from celery_selfheal.settings import load_settings
from celery_selfheal.web.app import build_app
from celery_selfheal.web.auth import Tokens
from tests.conftest import wait_for  # noqa: F401  (shared; re-exported for the tests here)
from tests.integration.conftest import AGENT, client_selfheal

ALICE, BOB = "alice", "bob"


@dataclass
class Console:
    """A running console: its URL, its tokens, the `SelfHeal` it serves."""

    url: str
    tokens: Tokens
    selfheal: Any
    app: Any

    def token(self, name: str = ALICE) -> str:
        return str(self.tokens.by_name[name])

    def client(self, name: str | None = ALICE, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(name)}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    @property
    def ctx(self) -> Any:
        return self.selfheal.context()


def make_tokens() -> Tokens:
    return Tokens({ALICE: secrets.token_urlsafe(24), BOB: secrets.token_urlsafe(24)}, explicit=True, source="test")


@contextlib.contextmanager
def run_console(selfheal: Any, tokens: Tokens | None = None, **app_kw: Any) -> Iterator[Console]:
    """Serve the console in a thread of this process on a free loopback port."""
    tokens = tokens or make_tokens()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = build_app(selfheal, tokens, **app_kw)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the console did not start")
        time.sleep(0.02)
    try:
        yield Console(url=f"http://127.0.0.1:{port}", tokens=tokens, selfheal=selfheal, app=app)
    finally:
        app.state.feeds.close()
        server.should_exit = True
        thread.join(15)
        sock.close()


def write_job(tmp: Path, repo: Path, steps: list[dict[str, Any]], *, objective: str = "web test objective",
              **budgets: Any) -> Path:
    """A JSON job file for the scripted agent."""
    doc: dict[str, Any] = {"job": {"objective": objective, "repo": str(repo), "ref": "main",
                                   "runtime": [sys.executable, AGENT]}, "steps": steps}
    if budgets:
        doc["job"]["selfheal"] = budgets
    path = tmp / f"job-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def embedded(tmp_path: Path) -> Any:
    """A client `SelfHeal` on a fresh embedded state dir, with no worker: submitted jobs stay queued."""
    settings = load_settings(state_dir=tmp_path / "state", env={})
    settings.ensure_dirs()
    return client_selfheal(settings)


@pytest.fixture
def console(embedded: Any) -> Iterator[Console]:
    with run_console(embedded) as c:
        yield c


def submit_queued(selfheal: Any, tmp: Path, repo: Path, steps: list[dict[str, Any]] | None = None,
                  **kw: Any) -> str:
    """Submit a job nobody runs (no worker): it stays queued."""
    steps = steps or [{"id": "one", "instructions": "print hi"}, {"id": "two", "instructions": "print hi"}]
    return str(submit(selfheal, write_job(tmp, repo, steps, **kw))["jobId"])


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real prefork worker on an embedded state dir (as tests/integration's own harness)."""
    from tests.integration.conftest import Harness, start_worker, stop_worker

    tmp = tmp_path_factory.mktemp("web-embedded")
    settings = load_settings(state_dir=tmp / "state", env={})
    settings.ensure_dirs()
    log_path = tmp / "worker.log"
    proc = start_worker(settings, log_path)
    try:
        yield Harness(settings=settings, selfheal=client_selfheal(settings), worker=proc, log_path=log_path, tmp=tmp)
    finally:
        stop_worker(proc)




from tests.web.browser import browser  # noqa: E402,F401  (the fixture, for the console tests)
