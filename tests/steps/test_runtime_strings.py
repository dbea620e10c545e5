"""Issue 11: strings a runtime or an operator controls are redacted and bounded before they are stored;
stored files are private; a broken store or a bad export target is one line."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_selfheal.api import export_artifacts, job_status
from celery_selfheal.control.requests import request_control
from celery_selfheal.errors import InputError
from tests.engine import Engine

SECRET = "ghp_" + "Ab1" * 12


def test_a_secret_in_a_file_name_is_never_stored(engine: Engine) -> None:
    # built by the shell: the job file itself holds no secret (that would be refused at submit)
    job_id = engine.submit("s=$(printf 'Ab1%.0s' $(seq 12)); echo x > \"token-ghp_$s.txt\"")
    engine.run(job_id)
    job = engine.job(job_id)
    assert job["status"] == "failed" and job["failureClass"] == "deterministic_policy"
    doc = json.dumps(job_status(engine.ctx, job_id))
    assert SECRET not in doc and "token-" in doc
    assert not any(SECRET in json.dumps(e) for _, e in engine.ctx.store.list_events(job_id))
    arts = engine.ctx.artifacts(job_id)
    assert not any(SECRET.encode() in p.read_bytes() for p in arts.iter_files())


def test_a_file_name_that_is_not_utf8_is_recorded(engine: Engine) -> None:
    job_id = engine.submit("printf x > \"$(printf 'bad-\\377\\376.txt')\"")
    engine.run(job_id)
    job = engine.job(job_id)
    assert job["status"] == "succeeded", job.get("message")
    [cp] = engine.ctx.store.list_checkpoints(job_id)
    assert cp["changedFiles"] == ["bad-\\xff\\xfe.txt"]
    assert all(a["status"] == "succeeded" for a in engine.ctx.store.list_attempts(job_id))


def test_a_control_reason_is_one_bounded_line(engine: Engine) -> None:
    job_id = engine.submit("true")
    reason = "stop\n12:00:00  job x SUCCEEDED\x1b[2K" + "y" * 1_000_000
    req = request_control(engine.ctx, job_id, "pause", reason=reason, enqueue_apply=lambda _: None)
    stored = req["reason"]
    assert "\n" not in stored and "\x1b" not in stored and len(stored) < 600
    assert all(len(json.dumps(r)) < 2000 for r in engine.ctx.store.list_audit(job_id))


def test_store_and_logs_are_private_under_umask_022(engine: Engine) -> None:
    old = os.umask(0o022)
    try:
        job_id = engine.submit("echo out")
        engine.run(job_id)
    finally:
        os.umask(old)
    db = Path(str(engine.ctx.settings.store_url).removeprefix("sqlite:///"))
    private = [db, *db.parent.glob(db.name + "-*"), *engine.ctx.artifacts(job_id).base.rglob("*.log")]
    assert len(private) >= 2
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_export_into_the_jobs_own_artifacts_is_refused(engine: Engine) -> None:
    job_id = engine.submit("echo out > f")
    engine.run(job_id)
    base = engine.ctx.artifacts(job_id).base
    with pytest.raises(InputError, match="inside the job's own artifact folder"):
        export_artifacts(engine.ctx, job_id, base)
    with pytest.raises(InputError):
        export_artifacts(engine.ctx, job_id, base / "logs")
    assert export_artifacts(engine.ctx, job_id, base.parent.parent / "out").is_dir()


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_a_corrupt_store_is_one_line(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "SELFHEAL_STATE_DIR": str(state)}
    for name in ("SELFHEAL_BROKER_URL", "SELFHEAL_STORE_URL", "SELFHEAL_CONFIG"):
        env.pop(name, None)
    (tmp_path / "config.toml").write_text("")
    cli = [str(Path(sys.executable).parent / "selfheal")]
    first = subprocess.run([*cli, "status", "no-such-job"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 2 and "unknown job" in first.stderr  # a healthy store
    [db] = state.rglob("selfheal.db")
    conn = sqlite3.connect(db)
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    else:
        with open(db, "r+b") as fh:
            fh.truncate(600)
    for leftover in db.parent.glob(db.name + "-*"):
        leftover.unlink()
    proc = subprocess.run([*cli, "status", "no-such-job"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "store" in proc.stderr


def test_a_runtime_that_does_not_exist_fails_at_once(engine: Engine) -> None:
    job_id = engine.submit("true")
    record = engine.job(job_id)
    record["spec"]["steps"][0]["runtime"] = ["/no/such/agent-binary", "--flag"]
    engine.ctx.store.update_job(job_id, {"spec": record["spec"]})
    outcome = engine.run(job_id)
    job = engine.job(job_id)
    assert job["status"] == "failed" and job["failureClass"] == "deterministic_contract", outcome
    assert len(engine.ctx.store.list_attempts(job_id)) == 1 and engine.sent == []


def test_a_job_whose_first_message_cannot_be_sent_does_not_wait_queued(tmp_path: Path,
                                                                       make_repo: Callable[..., Path]) -> None:
    from celery_selfheal.api import submit
    from celery_selfheal.errors import SelfHealError
    from celery_selfheal.settings import load_settings
    from tests.integration.conftest import client_selfheal

    settings = load_settings(state_dir=tmp_path / "state", env={})
    settings.ensure_dirs()
    queue = Path(settings.broker_transport_options()["data_folder_out"])
    # an immutable queue folder: the embedded broker cannot write a message there, even as root
    if subprocess.run(["chattr", "+i", str(queue)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"job": {"objective": "o", "repo": str(make_repo()), "ref": "main",
                                       "runtime": ["true"]}, "steps": [{"id": "a", "instructions": "x"}]}))
    sh = client_selfheal(settings)
    try:
        with pytest.raises(SelfHealError, match=r"^job job-\S+ not sent to the broker: ") as info:
            submit(sh, job)
    finally:
        subprocess.run(["chattr", "-i", str(queue)], check=True)
    assert "\n" not in str(info.value)
    [stored] = sh.context().store.list_jobs()
    assert stored["status"] == "failed" and stored["retryable"] is True
