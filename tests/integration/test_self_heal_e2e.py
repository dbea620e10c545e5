"""End to end on a real prefork worker, real git repos and real runtimes (issue 2 "Must show")."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import git, process_alive
from tests.integration.conftest import Harness, names

pytestmark = pytest.mark.slow


def test_idle_timeout_soft_reset_then_success(harness: Harness, make_repo) -> None:
    repo = make_repo()
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "implement", "instructions": "silent@1\nwrite out.txt: done"}],
        step_idle_timeout_seconds=1.0, soft_reset_backoff_seconds=0.1))
    job = harness.wait(job_id)
    assert job["status"] == "succeeded"
    attempts = harness.attempts(job_id)
    assert [a["status"] for a in attempts] == ["failed", "succeeded"]
    first, second = attempts
    assert first["detector"] == "idle_timeout"
    assert first["failureClass"] == "transient_runtime"
    assert first["strategy"] == "soft_reset"
    assert second["attemptStrategy"] == "soft_reset"
    # detected within tens of ms of the threshold (generous bound for a loaded CI box)
    assert first["detectionLagSeconds"] is not None and first["detectionLagSeconds"] < 0.25
    evs = harness.events(job_id)
    failed = next(e for e in evs if e["event"] == "task.step.attempt.failed")
    for key in ("jobId", "stepId", "stepIndex", "attempt", "failureClass", "failureSignature", "diffHash",
                "strategy", "detector"):
        assert key in failed, key
    assert "task.self_heal.triggered" in names(evs)
    assert "task.self_heal.recovered" in names(evs)
    assert names(evs)[-1] == "task.job.succeeded"
    arts = harness.ctx.artifacts(job_id)
    assert arts.patch_path(0).exists() and arts.step_state_path(0).exists()
    assert arts.attempt_state_path(0, 1).exists() and arts.attempt_state_path(0, 2).exists()
    assert "thinking" in arts.log_path(0, 1).read_text()


def test_wall_timeout_chatty_runtime_is_killed_then_success(harness: Harness, make_repo) -> None:
    repo = make_repo()
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "hang", "instructions": "chatty-hang@1\nwrite ok.txt: ok", "step_timeout_seconds": 1.5}],
        kill_grace_seconds=0.5, soft_reset_backoff_seconds=0.1))
    job = harness.wait(job_id)
    assert job["status"] == "succeeded"
    first = harness.attempts(job_id)[0]
    assert first["detector"] == "wall_timeout"  # output kept flowing, so not the idle watchdog
    assert 1.5 <= first["wallClockSeconds"] < 2.0
    assert not process_alive(first["pid"])


def test_wall_timeout_grandchild_ignoring_term_is_gone(harness: Harness, make_repo) -> None:
    pidfile = harness.tmp / f"gc-{time.time_ns()}.pid"
    repo = make_repo()
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "hang", "instructions": f"grandchild-hang@1 {pidfile}\nwrite ok.txt: ok",
                "step_timeout_seconds": 1.0}], kill_grace_seconds=0.3, soft_reset_backoff_seconds=0.1))
    job = harness.wait(job_id)
    assert job["status"] == "succeeded", job
    first = harness.attempts(job_id)[0]
    assert first["detector"] == "wall_timeout"
    gc_pid = int(pidfile.read_text())
    assert not process_alive(gc_pid), "grandchild survived the wall timeout"
    assert not process_alive(first["pid"])


def test_deterministic_policy_failure_ends_job_at_once(harness: Harness, make_repo) -> None:
    repo = make_repo()
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "deploy", "instructions": "fail 77 permission denied"},
               {"id": "never", "instructions": "write x: y"}]))
    job = harness.wait(job_id)
    assert job["status"] == "failed"
    assert job["terminalReason"] == "deterministic_policy"
    assert job["retryable"] is False
    attempts = harness.attempts(job_id)
    assert len(attempts) == 1 and attempts[0]["failureClass"] == "deterministic_policy"
    assert not any(a["stepIndex"] == 1 for a in attempts)
    assert names(harness.events(job_id))[-1] == "task.job.failed"


def test_budgets_never_exceeded_and_queue_retry_after_exhaustion(harness: Harness, make_repo) -> None:
    repo = make_repo()
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "flaky", "instructions": "vary-fail 75"}],
        step_max_attempts=2, job_self_heal_max_resets=1, job_queue_max_retries=1,
        soft_reset_backoff_seconds=0.05, queue_retry_backoff_seconds=0.2))
    job = harness.wait(job_id, timeout=90)
    assert job["status"] == "failed"
    assert job["retryable"] is True
    attempts = harness.attempts(job_id)
    # 2 attempts per round x (initial round + 1 hard reset + 1 queue retry)
    assert len(attempts) == 6
    rounds: dict[int, int] = {}
    for a in attempts:
        rounds[a["round"]] = rounds.get(a["round"], 0) + 1
    assert max(rounds.values()) <= 2
    strategies = [a["attemptStrategy"] for a in attempts]
    assert strategies == ["initial", "soft_reset", "hard_reset", "soft_reset", "queue_retry", "soft_reset"]
    evs = harness.events(job_id)
    escalations = [e["strategy"] for e in evs if e["event"] == "task.self_heal.escalated"]
    assert escalations == ["hard_reset", "queue_retry"]
    assert "task.self_heal.exhausted" in names(evs)
    assert job["resetsUsed"] == 1 and job["queueRetriesUsed"] == 1


def test_no_progress_escalates_to_hard_reset(harness: Harness, make_repo) -> None:
    repo = make_repo()
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "one", "instructions": "write a.txt: one"},
               {"id": "two", "instructions": "fail-unless-hard-reset\nwrite b.txt: two"}],
        soft_reset_backoff_seconds=0.05))
    job = harness.wait(job_id)
    assert job["status"] == "succeeded"
    two = [a for a in harness.attempts(job_id) if a["stepIndex"] == 1]
    assert [a["attemptStrategy"] for a in two] == ["initial", "soft_reset", "hard_reset"]
    assert two[1]["detector"] == "no_progress" and two[1]["failureClass"] == "stuck_no_progress"
    assert two[0]["failureSignature"] == two[1]["failureSignature"]
    ws = harness.ctx.workspace_path(job_id)
    assert (ws / "a.txt").read_text() == "one\n" and (ws / "b.txt").read_text() == "two\n"


def test_checkpoints_replay_with_plain_git_apply(harness: Harness, make_repo, tmp_path: Path) -> None:
    repo = make_repo()
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "add", "instructions": "write docs/new.md: hello"},
               {"id": "edit", "instructions": "write src/app.py: print('changed')"},
               {"id": "empty", "instructions": "print nothing to do"}]))
    assert harness.wait(job_id)["status"] == "succeeded"
    arts = harness.ctx.artifacts(job_id)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    for i in range(3):
        patch = arts.patch_path(i)
        if patch.stat().st_size:
            subprocess.run(["git", "apply", str(patch)], cwd=clone, check=True)
    assert (clone / "docs/new.md").read_text() == "hello\n"
    assert (clone / "src/app.py").read_text() == "print('changed')\n"
    git(clone, "add", "-A")
    tree = git(clone, "write-tree")
    import json

    meta = json.loads(arts.step_state_path(2).read_text())
    assert tree == meta["treeAfter"]
    for key in ("stepId", "stepIndex", "attempt", "diffHash", "patchSha256", "changedFiles", "summary",
                "finishedAt"):
        assert key in meta


def test_runtime_protocol_env_and_prompt(harness: Harness, make_repo) -> None:
    repo = make_repo()
    job_id = harness.submit(harness.job_file(repo, [{"id": "envcheck", "instructions": "env"}]))
    assert harness.wait(job_id)["status"] == "succeeded"
    log = harness.ctx.artifacts(job_id).log_path(0, 1).read_text()
    assert f"SELFHEAL_JOB_ID={job_id}" in log
    assert "SELFHEAL_STEP_ID=envcheck" in log
    assert "SELFHEAL_STEP_INDEX=0" in log
    assert "SELFHEAL_ATTEMPT=1" in log
    assert "SELFHEAL_PROMPT_FILE=" in log
    assert "SELFHEAL_RETRY_CONTEXT_FILE" not in log


def test_a_change_that_contains_a_secret_is_never_checkpointed(harness: Harness, make_repo) -> None:
    repo = make_repo()
    token = "ghp_" + "Z" * 36
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "leak", "instructions": "leak-token config/settings.py"}]))
    job = harness.wait(job_id)
    assert job["status"] == "failed" and job["terminalReason"] == "deterministic_policy"
    assert "config/settings.py" in job["message"]
    arts = harness.ctx.artifacts(job_id)
    assert not arts.patch_path(0).exists()
    assert arts.log_path(0, 1).exists()
    for path in arts.iter_files():
        assert token not in path.read_text(errors="replace"), path
    for _, event in harness.ctx.store.list_events(job_id):
        assert token not in str(event)


def test_cli_status_events_artifacts_follow_the_contract(harness: Harness, make_repo, tmp_path: Path) -> None:
    import json as _json

    from click.testing import CliRunner

    from celery_selfheal.cli.main import selfheal

    repo = make_repo()
    # idle 1.5 s: a busy machine may take 0.5 s to start the agent of attempt 2 (a third attempt)
    job_id = harness.submit(harness.job_file(
        repo, [{"id": "implement", "instructions": "silent@1\nwrite out.txt: done"}],
        step_idle_timeout_seconds=1.5, soft_reset_backoff_seconds=0.05))
    assert harness.wait(job_id)["status"] == "succeeded"
    loc = ["--state-dir", str(harness.settings.state_dir)]
    runner = CliRunner()
    res = runner.invoke(selfheal, ["status", job_id, "--json", *loc])
    assert res.exit_code == 0, res.output
    doc = _json.loads(res.output)
    assert {"jobId", "status", "epoch", "steps", "pendingControl", "audit"} <= doc.keys()
    assert (doc["jobId"], doc["status"], doc["epoch"]) == (job_id, "succeeded", 0)
    step = doc["steps"][0]
    assert {"stepId", "stepIndex", "status", "attempts"} <= step.keys()
    assert [a["attempt"] for a in step["attempts"]] == [1, 2]
    res = runner.invoke(selfheal, ["events", job_id, "--json", *loc])
    lines = [_json.loads(line) for line in res.output.splitlines()]
    assert all({"event", "ts", "jobId"} <= e.keys() for e in lines)
    assert lines[0]["event"] == "task.job.started" and lines[-1]["event"] == "task.job.succeeded"
    res = runner.invoke(selfheal, ["artifacts", job_id, *loc])
    listed = {line.split()[-1] for line in res.output.splitlines()}
    assert {"patches/steps/step-0000.patch", "state/steps/step-0000.json",
            "state/self_heal/attempt-0000-0001.json", "state/self_heal/attempt-0000-0002.json",
            "logs/step-0000-attempt-0001.log", "logs/step-0000-attempt-0002.log"} <= listed
    res = runner.invoke(selfheal, ["artifacts", job_id, "--export", str(tmp_path / "out"), *loc])
    assert res.exit_code == 0
    exported = tmp_path / "out" / job_id
    assert (exported / "patches/steps/step-0000.patch").read_bytes() == \
        harness.ctx.artifacts(job_id).patch_path(0).read_bytes()
    attempt = _json.loads((exported / "state/self_heal/attempt-0000-0001.json").read_text())
    for key in ("stepId", "stepIndex", "attempt", "failureClass", "failureSignature", "strategy",
                "wallClockSeconds", "idleSeconds", "retryContext", "events"):
        assert key in attempt, key
    assert attempt["strategy"] == "soft_reset" and attempt["events"]
    second = _json.loads((exported / "state/self_heal/attempt-0000-0002.json").read_text())
    assert second["retryContext"]["strategy"] == "soft_reset"
    assert second["retryContext"]["step"]["id"] == "implement"


def test_selfheal_worker_command_starts_a_prefork_worker(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import threading

    from celery_selfheal.embedded.local_worker import worker_running
    from celery_selfheal.settings import load_settings

    state = tmp_path / "state"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "selfheal"), "worker", "--state-dir", str(state),
                             "-c", "1", "--without-mingle", "--without-gossip"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            lines.append(raw.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        settings = load_settings(state_dir=state, env={})
        deadline = time.monotonic() + 60
        # wait for the condition itself: the lock held and the banner printed (a busy machine is slow)
        while not (worker_running(settings) and any("(prefork)" in line for line in lines)):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)
    assert "(prefork)" in out, out  # the banner names the pool
