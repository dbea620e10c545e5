"""A real Flower process on the test broker: the step tasks and their readable retry reasons through
its HTTP API, behind basic auth and bound to loopback."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _in_ci
from tests.integration._obs import ESCALATE_BUDGETS, ESCALATE_STEPS, HEAL_BUDGETS, heal_steps, worker
from tests.integration.conftest import Harness, stop_worker

pytestmark = pytest.mark.slow

USER = "selfheal"


def _require_flower() -> None:
    if importlib.util.find_spec("flower") is None:
        message = "flower is not installed (pip install -e '.[test]')"
        if _in_ci():
            pytest.fail(message + "; CI must run the Flower test", pytrace=False)
        pytest.skip(message)


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Flower:
    """A running Flower and how to ask its API."""

    proc: subprocess.Popen[bytes]
    port: int
    password: str
    log_path: Path

    def request(self, path: str, *, user: str | None = USER, password: str | None = None) -> tuple[int, Any]:
        headers = {}
        if user is not None:
            token = base64.b64encode(f"{user}:{password or self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except (urllib.error.URLError, ConnectionError):  # not listening (yet)
            return 0, None

    def get(self, path: str) -> Any:
        status, body = self.request(path)
        assert status == 200, (path, status)
        return body

    def wait_for(self, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Poll until ``check()`` returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"flower exited: {self.log_path.read_text()[-3000:]}")
            result = check()
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"flower never showed it; tasks: {self.get('/api/tasks')}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, Flower]]:
    """A worker of the ready app and Flower (``celery -A celery_selfheal.app flower``) on its broker."""
    _require_flower()
    tmp = tmp_path_factory.mktemp("flower")
    with worker(tmp, "w") as h:
        port, password = _free_tcp_port(), secrets.token_urlsafe(16)
        log_path = tmp / "flower.log"
        argv = [sys.executable, "-m", "celery", "-A", "celery_selfheal.app", "flower", f"--port={port}",
                "--address=127.0.0.1", f"--basic-auth={USER}:{password}"]
        env = {**os.environ, **h.settings.as_env()}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
        flower = Flower(proc, port, password, log_path)
        try:
            flower.wait_for(lambda: flower.request("/api/workers?refresh=false")[0] == 200, timeout=30)
            yield h, flower
        finally:
            stop_worker(proc)  # any process in its own session: TERM, then KILL the group


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def test_flower_requires_auth_and_listens_on_loopback_only(stack: tuple[Harness, Flower]) -> None:
    _, flower = stack
    assert flower.request("/api/tasks", user=None)[0] == 401
    assert flower.request("/api/tasks", password="wrong")[0] == 401
    assert flower.request("/api/tasks")[0] == 200
    if Path("/proc/net/tcp").exists():
        assert _listening_addresses(flower.port) == {"0100007F"}  # 127.0.0.1, nothing else


def _step_tasks(flower: Flower, job_id: str) -> dict[int, dict[str, Any]]:
    """The job's step tasks in Flower, by step index (kwargs are shown as a repr)."""
    tasks = flower.get("/api/tasks?taskname=selfheal.run_step")
    out = {}
    for task in tasks.values():
        kwargs = task.get("kwargs") or ""
        if f"'job_id': '{job_id}'" in kwargs:
            index = int(kwargs.split("'step_index': ", 1)[1].split(",", 1)[0])
            out[index] = task
    return out


def test_flower_shows_the_step_tasks_and_their_retry_reasons(stack: tuple[Harness, Flower], make_repo) -> None:
    h, flower = stack
    repo = make_repo()
    healed = h.submit(h.job_file(repo, heal_steps(), **HEAL_BUDGETS))
    escalated = h.submit(h.job_file(repo, ESCALATE_STEPS, **ESCALATE_BUDGETS))
    assert h.wait(healed)["status"] == "succeeded"
    assert h.wait(escalated)["status"] == "succeeded"

    # soft reset: one task (a retry keeps its id), retried once, with the readable reason
    tasks = flower.wait_for(lambda: (t := _step_tasks(flower, healed)) and t[0]["state"] == "SUCCESS" and t)
    task = tasks[0]
    assert task["retries"] == 1
    assert task["exception"] == ("StepRetry(\"step 'implement' attempt 1 of 3 failed (idle_timeout, "
                                 "transient_runtime) -> soft_reset: attempt 1 of 3, soft reset in 0.05s\")")
    info = flower.get(f"/api/task/info/{task['uuid']}")
    assert info["exception"] == task["exception"]
    assert info["worker"].startswith("test-") and info["name"] == "selfheal.run_step"
    assert "'strategy': 'soft_reset'" in info["kwargs"]  # the retry message, as Flower received it

    # escalation: step 0 ran once; step 1 was retried twice, the last time by a hard reset
    tasks = flower.wait_for(lambda: (t := _step_tasks(flower, escalated)) and len(t) == 2
                            and all(x["state"] == "SUCCESS" for x in t.values()) and t)
    assert tasks[0]["retries"] == 0 and not tasks[0]["exception"]
    assert tasks[1]["retries"] == 2
    assert tasks[1]["exception"] == (
        "StepRetry(\"step 'two' attempt 2 of 3 failed (no_progress, stuck_no_progress) -> hard_reset: "
        "same failure and diff 2 times in a row; hard reset 1 of 1\")")
    assert tasks[0]["uuid"] != tasks[1]["uuid"]  # each step is its own task of the chain


@pytest.mark.parametrize(("extra", "reason", "expected"), [
    ({"stepId": "build", "attempt": 4, "attemptInRound": 1, "maxAttempts": 3, "detector": "exit",
      "failureClass": "transient_runtime"}, "exit, transient_runtime: attempt 1 of 3, soft reset in 1s",
     "step 'build' attempt 1 of 3 (#4) failed (exit, transient_runtime) -> soft_reset: attempt 1 of 3, "
     "soft reset in 1s"),
    ({}, "something else", "step 0 failed -> soft_reset: something else"),
])
def test_retry_message(extra: dict[str, Any], reason: str, expected: str) -> None:
    from celery_selfheal.steps.outcome import OutcomeKind, StepOutcome
    from celery_selfheal.wiring.tasks import retry_message

    outcome = StepOutcome(OutcomeKind.RETRY, 0, reason=reason, strategy="soft_reset", extra=extra)
    assert retry_message(outcome) == expected
