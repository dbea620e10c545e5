"""Issue 11, embedded default with real CLIs and real local workers: several `selfheal run` on one
state dir share one worker (the last stops it); a local worker SIGKILLed while a retry waits for its
countdown (a message kombu's filesystem transport had already deleted) is noticed, replaced, and the
job still finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from celery import Celery

from celery_selfheal.context import build_context
from celery_selfheal.embedded.local_worker import local_worker_pids
from celery_selfheal.embedded.recovery import steps_on_disk
from celery_selfheal.settings import Settings, load_settings
from celery_selfheal.wiring.routing import RUN_STEP

SELFHEAL = [sys.executable, "-c", "from celery_selfheal.cli.main import main; main()"]


def _env(**extra: str) -> dict[str, str]:
    drop = ("SELFHEAL_STATE_DIR", "SELFHEAL_BROKER_URL", "SELFHEAL_STORE_URL", "SELFHEAL_CONFIG",
            "SELFHEAL_ARTIFACT_ROOT", "SELFHEAL_WORKSPACE_ROOT", "STATSD_HOST")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def _job(tmp_path: Path, name: str, repo: Path, script: str, **budgets: float) -> Path:
    doc = {"job": {"objective": name, "repo": str(repo), "ref": "main", "runtime": ["sh", "-c", script],
                   "selfheal": {"step_idle_timeout_seconds": 30, **budgets}},
           "steps": [{"id": "only", "instructions": "do it"}]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def _run(tmp_path: Path, job: Path, state: Path, **env: str) -> subprocess.Popen[str]:
    (tmp_path / "config.toml").write_text("")
    return subprocess.Popen([*SELFHEAL, "run", str(job), "--state-dir", str(state)], cwd=tmp_path,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _scheduled_here(settings: Settings, job_id: str) -> bool:
    """True when a live worker on the state dir holds a countdown step message of ``job_id``."""
    app = Celery(set_as_current=False)
    app.conf.update(settings.celery_conf())
    try:
        replies = app.control.inspect(timeout=1.0).scheduled() or {}
    finally:
        app.close()
    return any(entry["request"].get("name") == RUN_STEP and entry["request"].get("kwargs", {}).get("job_id") == job_id
               for entries in replies.values() for entry in entries)


def _cleanup(settings_state: Path, *procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in local_worker_pids(load_settings(state_dir=settings_state, env={})):
        os.killpg(pid, signal.SIGKILL)


def test_two_runs_share_one_local_worker_and_the_last_stops_it(tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    repo, state = make_repo(), tmp_path / "state"
    release = tmp_path / "release-second"
    quick = _job(tmp_path, "quick", repo, "echo a > a.txt")
    slow = _job(tmp_path, "slow", repo, f"while [ ! -e {release} ]; do sleep 0.1; done; echo b > b.txt")
    settings = load_settings(state_dir=state, env={})
    second = _run(tmp_path, slow, state)
    first = None
    try:
        _wait(lambda: bool(local_worker_pids(settings)), 60, "the local worker")
        first = _run(tmp_path, quick, state)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        # the first CLI left, the second still follows: the shared worker must still be there
        assert local_worker_pids(settings), "the first CLI stopped the worker the second one uses"
        release.write_text("go")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert "SUCCEEDED" in out
        _wait(lambda: not local_worker_pids(settings), 30, "the last CLI to stop the worker")
    finally:
        _cleanup(state, second, *([first] if first else []))


def test_a_killed_local_worker_is_replaced_and_its_waiting_retry_recovered(
        tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    repo, state = make_repo(), tmp_path / "state"
    marker = tmp_path / "failed-once"
    # attempt 1 fails transiently; the controller sends a queue retry (to any worker, the default
    # queue) that waits ~6 s for its countdown inside the worker that fetched it
    job = _job(tmp_path, "heal", repo,
               f"if [ ! -e {marker} ]; then touch {marker}; echo 'connection reset by peer'; exit 75; fi; "
               "echo ok > ok.txt", step_max_attempts=1, job_self_heal_max_resets=0, job_queue_max_retries=1,
               queue_retry_backoff_seconds=6)
    settings = load_settings(state_dir=state, env={})
    run = _run(tmp_path, job, state, SELFHEAL_LEASE_TTL_SECONDS="1.5", SELFHEAL_SWEEP_INTERVAL_SECONDS="0.5")
    try:
        assert run.stdout is not None
        job_id = run.stdout.readline().split()[1]
        ctx = build_context(settings, sinks=[])

        def retry_waiting() -> bool:
            return any(e["event"] == "task.self_heal.triggered" and e.get("strategy") == "queue_retry"
                       for _, e in ctx.store.list_events(job_id))

        _wait(retry_waiting, 60, "the first failure")
        # the worker holds the retry for its countdown (kombu already deleted the message's file)
        _wait(lambda: _scheduled_here(settings, job_id), 30, "the worker to hold the retry")
        assert not steps_on_disk(Path(settings.broker_transport_options()["data_folder_in"]))
        [pid] = local_worker_pids(settings)
        os.killpg(pid, signal.SIGKILL)
        out, err = run.communicate(timeout=90)
        assert run.returncode == 0, (out, err)
        assert "the local worker is gone; starting a new one" in err
        assert (ctx.store.get_job(job_id) or {})["status"] == "succeeded"
        assert [a["status"] for a in ctx.store.list_attempts(job_id)] == ["failed", "succeeded"]
        # the retry came back through the hand-over lease, not from a message left on disk
        assert (ctx.store.get_job(job_id) or {}).get("recoveredMessages")
    finally:
        _cleanup(state, run)


def test_a_worker_setting_no_step_can_run_with_ends_the_job(tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    """``SELFHEAL_LEASE_TTL_SECONDS=abc`` made every step task raise and the job wait for ever."""
    state = tmp_path / "state"
    job = _job(tmp_path, "badenv", make_repo(), "echo a > a.txt")
    run = _run(tmp_path, job, state, SELFHEAL_LEASE_TTL_SECONDS="abc")
    try:
        out, err = run.communicate(timeout=90)
        # refused where the settings are read (issue 12's validation), before anything is stored
        assert run.returncode == 2, (out, err)
        assert "SELFHEAL_LEASE_TTL_SECONDS" in err and len(err.strip().splitlines()) == 1
        assert "Traceback" not in out + err and not (state / "selfheal.db").exists()
    finally:
        _cleanup(state, run)


def test_a_backoff_the_scheduler_cannot_represent_is_refused_at_submit(
        tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    state = tmp_path / "state"
    job = _job(tmp_path, "huge", make_repo(), "true", queue_retry_backoff_seconds=1e12)
    run = _run(tmp_path, job, state)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 2 and "queue_retry_backoff_seconds" in err and "must be <=" in err, err
    assert len(err.strip().splitlines()) == 1

