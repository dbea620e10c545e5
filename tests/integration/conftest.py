"""A real prefork Celery worker (subprocess) on the embedded filesystem broker, and helpers to
submit jobs to it and wait for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_selfheal.api import submit
from celery_selfheal.embedded.local_worker import worker_running
from celery_selfheal.settings import Settings, load_settings
from celery_selfheal.wiring.install import SelfHeal

AGENT = str(Path(__file__).resolve().parent.parent / "runtimes" / "agent.py")
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Harness:
    """A worker subprocess plus a client `SelfHeal` on the same state dir."""

    settings: Settings
    selfheal: SelfHeal
    worker: subprocess.Popen[bytes]
    log_path: Path
    tmp: Path

    @property
    def ctx(self) -> Any:
        return self.selfheal.context()

    def job_file(self, repo: Path, steps: list[dict[str, Any]], **selfheal: Any) -> Path:
        """Write a JSON job file (same shape as TOML) using the scripted agent."""
        doc: dict[str, Any] = {"job": {"objective": "test objective", "repo": str(repo), "ref": "main",
                                       "runtime": [sys.executable, AGENT]}, "steps": steps}
        if selfheal:
            doc["job"]["selfheal"] = selfheal
        path = self.tmp / f"job-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(doc))
        return path

    def submit(self, job_file: Path) -> str:
        return str(submit(self.selfheal, job_file)["jobId"])

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.ctx.store.get_job(job_id)
            # the status changes just before the terminal event is stored: wait for both
            if job and job["status"] in TERMINAL and any(
                    e["event"].startswith("task.job.") and e["event"] != "task.job.started"
                    for _, e in self.ctx.store.list_events(job_id)):
                return dict(job)
            if self.worker.poll() is not None:
                raise AssertionError(f"worker died: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not end in {timeout}s; worker log:\n"
                             f"{self.log_path.read_text()[-3000:]}")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [e for _, e in self.ctx.store.list_events(job_id)]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.ctx.store.list_attempts(job_id))


def start_worker(settings: Settings, log_path: Path, *, concurrency: int = 2,
                 extra_env: dict[str, str] | None = None,
                 app_module: str = "celery_selfheal.app") -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.as_env(), **(extra_env or {})}
    argv = [sys.executable, "-m", "celery", "-A", app_module, "worker", "--pool", "prefork",
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-mingle", "--without-gossip",
            "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not worker_running(settings):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def client_selfheal(settings: Settings) -> SelfHeal:
    app = Celery(f"selfheal-test-client-{uuid.uuid4().hex[:6]}")
    app.conf.update(settings.celery_conf(), task_default_queue="selfheal", task_ignore_result=True)
    return SelfHeal(app, settings)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp = tmp_path_factory.mktemp("embedded")
    settings = load_settings(state_dir=tmp / "state", env={})
    settings.ensure_dirs()
    log_path = tmp / "worker.log"
    proc = start_worker(settings, log_path)
    try:
        yield Harness(settings=settings, selfheal=client_selfheal(settings), worker=proc, log_path=log_path,
                      tmp=tmp)
    finally:
        stop_worker(proc)


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


JobFactory = Callable[..., Path]
