"""Celery's hard time limit SIGKILLs the pool child: the runtime's whole group still dies (the worker
MainProcess kills it from our registry) and the attempt is recorded and retried from our own state."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celery_selfheal.jobs.submission import load_job_file, prepare_job
from celery_selfheal.settings import load_settings
from tests.conftest import process_alive
from tests.hardlimit_app import HANG, HANG_GUARDED
from tests.integration._obs import EventCapture
from tests.integration.conftest import Harness, client_selfheal, start_worker, stop_worker

pytestmark = pytest.mark.slow


def test_hard_limit_kills_the_runtime_group_and_the_job_recovers(tmp_path: Path, make_repo) -> None:
    settings = load_settings(state_dir=tmp_path / "state", env={})
    settings.ensure_dirs()
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings, log_path, concurrency=1, app_module="tests.hardlimit_app")
    try:
        sh = client_selfheal(settings)
        harness = Harness(settings=settings, selfheal=sh, worker=proc, log_path=log_path, tmp=tmp_path)
        repo = make_repo()
        spec_file = harness.job_file(repo, [{"id": "only", "instructions": "write done.txt: ok"}],
                                     soft_reset_backoff_seconds=0.1)
        ctx = sh.context()
        job = prepare_job(load_job_file(spec_file), source=str(spec_file), settings=settings,
                          redactor=ctx.redactor)
        ctx.store.create_job(job)
        pidfile = tmp_path / "grandchild.pid"
        capture = EventCapture(settings).__enter__()
        sh.app.send_task(HANG, args=(job["jobId"], str(pidfile)), queue="selfheal")
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(pidfile.read_text())
        assert process_alive(grandchild)
        final = harness.wait(job["jobId"], timeout=40)
        assert not process_alive(grandchild), "the runtime's grandchild outlived the SIGKILLed pool child"
        first, second = harness.attempts(job["jobId"])
        assert first["status"] == "failed" and first["detector"] == "wall_timeout"
        assert first["failureClass"] == "transient_runtime"
        assert second["attemptStrategy"] == "soft_reset" and second["status"] == "succeeded"
        assert final["status"] == "succeeded"
        assert "Hard time limit" in log_path.read_text()
        # the MainProcess recorded the lost attempt: its event went out as a Celery event too
        got = capture.wait_for(lambda evs: any(e.get("type") == "selfheal-task-step-attempt-failed"
                                               and e.get("jobId") == job["jobId"] for e in evs))
        failed = next(e for e in got if e.get("type") == "selfheal-task-step-attempt-failed")
        assert failed["detector"] == "wall_timeout" and failed["attempt"] == 1
        capture.__exit__(None, None, None)
    finally:
        stop_worker(proc)


def test_hard_limit_ends_the_setsid_daemons_of_the_attempt(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path / "state", env={})
    settings.ensure_dirs()
    proc = start_worker(settings, tmp_path / "worker.log", concurrency=1, app_module="tests.hardlimit_app")
    try:
        sh = client_selfheal(settings)
        pidfile = tmp_path / "daemons"
        sh.app.send_task(HANG_GUARDED, args=(str(pidfile), str(tmp_path)), queue="selfheal")
        deadline = time.monotonic() + 20
        while len(pidfile.read_text().split() if pidfile.exists() else []) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        daemons = [int(p) for p in pidfile.read_text().split()]
        assert len(daemons) == 2 and all(process_alive(p) for p in daemons)
        # hard limit 2 s after the task started, then the guard: grace 0.5 s + a scan
        deadline = time.monotonic() + 2 + 0.5 + 5
        while any(process_alive(p) for p in daemons) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(process_alive(p) for p in daemons), "a daemon outlived the hard-limit kill"
        assert "Hard time limit" in (tmp_path / "worker.log").read_text()
    finally:
        stop_worker(proc)
