"""RabbitMQ as the broker, Redis as the store, real prefork workers (issue 12).

One session RabbitMQ node (tests.rabbitmq_server, ``consumer_timeout`` 4 s checked every second),
a fresh vhost for this module, two workers that share only RabbitMQ, Redis and the artifact root.
Covers: a soft reset landing on the worker's own queue ``selfheal.w.<hostname>``, a hard reset through
the shared queue, ``celery inspect selfheal_active`` / ``celery control selfheal_recover`` over amqp, a
step longer than the server's ``consumer_timeout`` finishing once, and a worker SIGKILLed mid-step
whose step another worker finishes (last: it kills one of the module's workers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.api import submit
from celery_selfheal.settings import Settings, load_settings
from celery_selfheal.wiring.install import SelfHeal
from tests.integration.conftest import AGENT, TERMINAL, client_selfheal, start_worker, stop_worker
from tests.integration.test_cluster import hostname_of, wait_for
from tests.rabbitmq_server import CONSUMER_TIMEOUT_MS, RabbitServer
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow
CELERY = [sys.executable, "-m", "celery", "-A", "celery_selfheal.app"]
#: short leases so that a killed worker's step moves on within seconds
ENV = {"SELFHEAL_LEASE_TTL_SECONDS": "3", "SELFHEAL_SWEEP_INTERVAL_SECONDS": "0.5",
       # the test server's consumer_timeout: every step (hard limit >= 30 s) is then acknowledged at start
       "SELFHEAL_CONSUMER_TIMEOUT": str(CONSUMER_TIMEOUT_MS / 1000)}


class Rabbit:
    """Two workers on one vhost and one Redis store prefix, plus a client."""

    def __init__(self, tmp: Path, broker: str, store: str) -> None:
        self.tmp, self.broker, self.store_url = tmp, broker, store
        self.workers: dict[str, tuple[Settings, subprocess.Popen[bytes], Path, str]] = {}
        self.client: SelfHeal = client_selfheal(self.settings("client"))

    def settings(self, name: str) -> Settings:
        env = {"SELFHEAL_ARTIFACT_ROOT": str(self.tmp / "artifacts"),
               "SELFHEAL_WORKSPACE_ROOT": str(self.tmp / name / "workspaces")}
        settings = load_settings(state_dir=self.tmp / name / "state", broker_url=self.broker,
                                 store_url=self.store_url, env=env)
        settings.ensure_dirs()
        return settings

    def start(self, name: str) -> str:
        settings, log = self.settings(name), self.tmp / f"{name}.log"
        proc = start_worker(settings, log, concurrency=1, extra_env=ENV)
        self.workers[name] = (settings, proc, log, hostname_of(settings))
        return self.workers[name][3]

    @property
    def store(self) -> Any:
        return self.client.context().store

    def log(self, name: str) -> str:
        return self.workers[name][2].read_text(errors="replace")

    def submit(self, repo: Path, steps: list[dict[str, Any]], **budgets: Any) -> str:
        doc = {"job": {"objective": "rabbitmq test", "repo": str(repo), "ref": "main",
                       "runtime": [sys.executable, AGENT], "selfheal": budgets}, "steps": steps}
        path = self.tmp / f"job-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(doc))
        return str(submit(self.client, path)["jobId"])

    def wait(self, job_id: str, timeout: float = 40) -> dict[str, Any]:
        def ended() -> Any:
            job = self.store.get_job(job_id)
            return job if job and job["status"] in TERMINAL else None
        try:
            return dict(wait_for(ended, timeout, f"job {job_id} to end"))
        except AssertionError:
            logs = "\n".join(f"--- {n}\n{self.log(n)[-2500:]}" for n in self.workers)
            raise AssertionError(f"job {job_id} did not end: {self.store.get_job(job_id)}\n{logs}") from None

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.store.list_attempts(job_id))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [e for _, e in self.store.list_events(job_id)]

    def cli_env(self) -> dict[str, str]:
        return {**os.environ, **self.settings("cli").as_env()}

    def stop(self) -> None:
        for _, proc, _, _ in self.workers.values():
            stop_worker(proc)


@pytest.fixture(scope="module")
def rabbit(rabbitmq_server: RabbitServer, redis_server: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rabbit]:
    broker = rabbitmq_server.add_vhost(f"m{uuid.uuid4().hex[:8]}")
    store = f"{redis_server.url}?prefix=rmq{uuid.uuid4().hex[:6]}:"  # apart from other tests' keys
    r = Rabbit(tmp_path_factory.mktemp("rabbit"), broker, store)
    try:
        r.start("a")
        r.start("b")
        yield r
    finally:
        r.stop()


def test_soft_reset_lands_on_the_workers_own_queue(rabbit: Rabbit, make_repo) -> None:
    a = rabbit.submit(make_repo(), [{"id": "quiet", "instructions": "silent@1\nwrite a.txt: a"}],
                      step_idle_timeout_seconds=1, soft_reset_backoff_seconds=0.1, kill_grace_seconds=0.2)
    assert rabbit.wait(a)["status"] == "succeeded"
    first, second = rabbit.attempts(a)
    assert (first["detector"], second["status"]) == ("idle_timeout", "succeeded")
    assert first["hostname"] == second["hostname"]  # the retry went to selfheal.w.<that worker>
    name = next(n for n, w in rabbit.workers.items() if w[3] == first["hostname"])
    assert f"selfheal.w.{first['hostname']}" in rabbit.log(name)  # it consumes its own queue


def test_hard_reset_goes_through_the_shared_queue(rabbit: Rabbit, make_repo) -> None:
    a = rabbit.submit(make_repo(), [{"id": "s0", "instructions": "write a.txt: a"},
                                    {"id": "s1", "instructions": "fail-unless-hard-reset\nwrite b.txt: b"}],
                      soft_reset_backoff_seconds=0.1, kill_grace_seconds=0.2)
    assert rabbit.wait(a)["status"] == "succeeded"
    strategies = [e.get("strategy") for e in rabbit.events(a) if e["event"] == "task.self_heal.escalated"]
    assert "hard_reset" in strategies
    last = [x for x in rabbit.attempts(a) if x["stepIndex"] == 1][-1]
    assert last["status"] == "succeeded" and last["hostname"] in {w[3] for w in rabbit.workers.values()}


def test_inspect_and_control_over_amqp(rabbit: Rabbit, make_repo) -> None:
    a = rabbit.submit(make_repo(), [{"id": "long", "instructions": "sleep 30"}])
    attempt = wait_for(lambda: next((x for x in rabbit.attempts(a) if x["status"] == "running" and x.get("pid")),
                                    None), 20, "the attempt to run")
    node = ["-d", attempt["hostname"], "--json", "--timeout", "20"]
    run = subprocess.run([*CELERY, "inspect", "selfheal_active", *node], env=rabbit.cli_env(), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    entries = [e for reply in json.loads(run.stdout.strip().splitlines()[-1]).values() for e in reply
               if e["jobId"] == a]
    assert [(e["stepId"], e["attempt"]) for e in entries] == [("long", 1)]
    run = subprocess.run([*CELERY, "control", "selfheal_recover", a, "cancel", "-", "stop", "ops", *node],
                         env=rabbit.cli_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    wait_for(lambda: rabbit.store.get_job(a)["status"] == "cancelled", 15, "the job to be cancelled")
    assert [x["outcome"] for x in rabbit.store.list_audit(a)] == ["requested", "acknowledged"]


def test_a_step_longer_than_the_consumer_timeout_runs_once(rabbit: Rabbit, make_repo) -> None:
    seconds = CONSUMER_TIMEOUT_MS / 1000 + 3  # the server checks every second
    a = rabbit.submit(make_repo(), [{"id": "long", "instructions": f"sleep {seconds}\nwrite a.txt: a"},
                                    {"id": "next", "instructions": "write b.txt: b"}])
    assert rabbit.wait(a, timeout=40)["status"] == "succeeded"
    runs = [(x["stepIndex"], x["status"]) for x in rabbit.attempts(a)]
    assert runs == [(0, "succeeded"), (1, "succeeded")], runs
    for name, (_, proc, _, _) in rabbit.workers.items():  # no worker lost its channel and stopped
        assert proc.poll() is None and "PRECONDITION_FAILED" not in rabbit.log(name), rabbit.log(name)[-3000:]
    ran = next(n for n, w in rabbit.workers.items() if w[3] == rabbit.attempts(a)[0]["hostname"])
    assert "acknowledged at start" in rabbit.log(ran)
    assert "consumer_timeout" in rabbit.log(ran)  # the start-up check named the setting


def test_killed_worker_step_is_finished_by_another(rabbit: Rabbit, make_repo) -> None:
    a = rabbit.submit(make_repo(), [{"id": "s0", "instructions": "sleep@1 30\nwrite a.txt: a"}])
    attempt = wait_for(lambda: next((x for x in rabbit.attempts(a) if x["status"] == "running" and x.get("pid")),
                                    None), 20, "the attempt to run")
    dead = next(n for n, w in rabbit.workers.items() if w[3] == attempt["hostname"])
    os.killpg(rabbit.workers[dead][1].pid, signal.SIGKILL)
    rabbit.workers[dead][1].wait(10)
    os.kill(attempt["pid"], signal.SIGKILL)  # the runtime left with its worker (another host in real life)
    assert rabbit.wait(a, timeout=60)["status"] == "succeeded"
    lost = [x for x in rabbit.attempts(a) if x.get("detector") == "worker_lost"]
    assert lost and lost[0]["hostname"] == attempt["hostname"]
