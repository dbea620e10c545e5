"""A user's own Celery app (tests/user_app.py) from a plain install: ``celery -A tests.user_app
worker`` and ``celery -A tests.user_app selfheal run`` from two unrelated directories, on a real
Redis with a password; the runtime sees no control plane; a non-Redis broker without a store URL
is refused by the worker and by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import AGENT, stop_worker
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery", "-A", "tests.user_app"]
PASSWORD = "pw-" + uuid.uuid4().hex


def user_env(tmp: Path, broker: str, **more: str) -> dict[str, str]:
    """The user's shell: no SELFHEAL_* at all, the project on the path, its own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "USERAPP_", "CELERY_"))}
    return {**env, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp / "xdg"), "USERAPP_BROKER": broker, **more}


def job_file(tmp: Path, repo: Path, instructions: str) -> Path:
    path = tmp / f"job-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"job": {"objective": "user app", "repo": str(repo), "ref": "main",
                                        "runtime": [sys.executable, AGENT]},
                                "steps": [{"id": "only", "instructions": instructions}]}))
    return path


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if " ready." in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"worker not ready:\n{log.read_text(errors='replace')[-3000:]}")


def redis_user_url(server: RedisServer) -> str:
    """A URL with a password (an ACL user on the session server; the default user stays open)."""
    with server.client() as client:
        client.execute_command("ACL", "SETUSER", "selfheal", "on", f">{PASSWORD}", "~*", "&*", "+@all")
    return f"redis://selfheal:{PASSWORD}@127.0.0.1:{server.port}/0"


def test_user_app_on_redis_from_any_directory(redis_server: RedisServer, redis_url: str, make_repo,
                                              tmp_path: Path) -> None:
    url = redis_user_url(redis_server)
    # the app sends pickle but accepts only JSON: our messages must be JSON, or the worker drops them
    env = user_env(tmp_path, url, USERAPP_SERIALIZER="pickle", USERAPP_ACCEPT="json")
    worker_dir, cli_dir = tmp_path / "worker-cwd", tmp_path / "cli-cwd"
    worker_dir.mkdir()
    cli_dir.mkdir()
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*CELERY, "worker", "--pool", "prefork", "-c", "1", "--loglevel", "INFO",
                                 "--without-mingle", "--without-gossip", "--hostname", "user-1@%h"],
                                cwd=worker_dir, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        text = wait_ready(proc, log)
        # one line says what SelfHeal(app) set; the user's prefetch (3) and serializer stay
        (line,) = [x for x in text.splitlines() if "SelfHeal(app) set " in x]
        assert "broker_transport=" in line and "worker_prefetch_multiplier" not in line
        assert "accept_content includes pickle" not in text  # (that warning: tests/wiring/test_app_conf.py)
        assert f"under {tmp_path / 'xdg' / 'selfheal'}" in text
        assert PASSWORD not in text
        dump = tmp_path / "runtime-env.json"
        job = job_file(tmp_path, make_repo(), f"dump-env {dump}\nwrite out.txt: done")
        run = subprocess.run([*CELERY, "selfheal", "run", str(job)], cwd=cli_dir, env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr + log.read_text()[-3000:]
        assert "ContentDisallowed" not in log.read_text() and "unknown job" not in log.read_text()
        assert "SUCCEEDED" in run.stdout and "result: workspace " in run.stdout
        state = tmp_path / "xdg" / "selfheal"
        assert str(state / "workspaces") in run.stdout
        # nothing in either working directory, nothing of the ready app's embedded default
        assert list(worker_dir.iterdir()) == [] and list(cli_dir.iterdir()) == []
        assert not (state / "broker").exists()
        runtime_env = json.loads(dump.read_text())
        assert_no_control_plane(runtime_env, url)
    finally:
        stop_worker(proc)


def assert_no_control_plane(env: dict[str, str], *urls: str) -> None:
    protocol = {"SELFHEAL_PROMPT_FILE", "SELFHEAL_RETRY_CONTEXT_FILE", "SELFHEAL_JOB_ID", "SELFHEAL_STEP_ID",
                "SELFHEAL_STEP_INDEX", "SELFHEAL_ATTEMPT", "SELFHEAL_ATTEMPT_MARKER"}
    assert {"SELFHEAL_JOB_ID", "SELFHEAL_PROMPT_FILE", "SELFHEAL_ATTEMPT"} <= set(env)
    assert {k for k in env if k.startswith("SELFHEAL_")} <= protocol, sorted(env)
    for name, value in env.items():
        assert not any(u in value for u in urls if u.partition("://")[2]), name
        assert PASSWORD not in value, name
    assert "CELERY_BROKER_URL" not in env


def test_runtime_env_in_embedded_mode(harness, make_repo, tmp_path: Path) -> None:
    dump = tmp_path / "embedded-env.json"
    job_id = harness.submit(harness.job_file(make_repo(), [{"id": "s", "instructions": f"dump-env {dump}"}]))
    assert harness.wait(job_id)["status"] == "succeeded"
    env = json.loads(dump.read_text())
    assert_no_control_plane(env, harness.settings.store_url, str(harness.settings.state_dir / "selfheal.db"))
    assert not any(str(harness.settings.state_dir) in v for k, v in env.items()
                   if k not in ("SELFHEAL_PROMPT_FILE", "SELFHEAL_RETRY_CONTEXT_FILE"))


def test_non_redis_broker_without_store_is_refused(tmp_path: Path, make_repo) -> None:
    env = user_env(tmp_path, "amqp://guest:guest@127.0.0.1:1//")
    worker = subprocess.run([*CELERY, "worker", "--pool", "prefork", "-c", "1"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 2, worker.stdout + worker.stderr
    lines = worker.stderr.strip().splitlines()
    assert len(lines) == 1 and "a store URL is required" in lines[0] and "Traceback" not in worker.stderr, lines
    job = job_file(tmp_path, make_repo(), "print hi")
    cli = subprocess.run([*CELERY, "selfheal", "run", str(job)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 2, cli.stdout + cli.stderr
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "a store URL is required" in lines[0], lines
    assert "submitted" not in cli.stdout
    # accept_content without json: the worker refuses too
    bad = subprocess.run([*CELERY, "worker", "--pool", "prefork", "-c", "1"], cwd=tmp_path, timeout=60,
                         env={**env, "USERAPP_ACCEPT": "pickle",
                              "USERAPP_SELFHEAL_STORE_URL": "redis://127.0.0.1:1/0"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "excludes json" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
