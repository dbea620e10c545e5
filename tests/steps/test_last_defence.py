"""Issue 11: every failure ends somewhere. An exception at any stage of a step execution is recorded
as the attempt's failure and goes through the controller; a runtime that destroys the workspace's
repository never makes git work in the enclosing (user's) repository."""

from __future__ import annotations

import errno
import importlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.context import build_context
from celery_selfheal.settings import load_settings
from celery_selfheal.steps.outcome import OutcomeKind, StepOutcome
from tests.engine import Engine

#: (module or class path, attribute): every stage of one step execution, in order; ``write_job``
#: is the store's one write of a stage: the start (attempt record, step, event), then the success
STAGES = [
    ("store", "write_job:start"),                               # recording the start
    ("celery_selfheal.steps.attempt", "write_fresh"),           # the prompt file
    ("celery_selfheal.steps.attempt", "run_runtime"),           # the supervisor
    ("celery_selfheal.workspace.git.GitWorkspace", "current_change"),
    ("celery_selfheal.steps.finish", "judge"),
    ("celery_selfheal.workspace.checkpoints", "atomic_write"),  # the checkpoint patch
    ("celery_selfheal.workspace.checkpoints", "atomic_write_json"),  # the checkpoint metadata
    ("celery_selfheal.workspace.git.GitWorkspace", "commit_change"),
    ("celery_selfheal.steps.finish", "write_attempt_artifact"),
    ("store", "write_job:succeeded"),                           # the checkpoint record, the attempt and step succeeded
]


def _attempt_status(*args: Any, **kwargs: Any) -> str | None:
    """The attempt status a store write sets (``write_job``'s attempt, ``transition_attempt``'s changes)."""
    write = kwargs.get("attempt")
    if write is not None:
        return write.changes.get("status")
    return (args[4] if len(args) > 4 else {}).get("status") if len(args) > 4 else None


def _target(engine: Engine, where: str) -> Any:
    if where == "store":
        return engine.ctx.store
    if where.endswith(".GitWorkspace"):
        return importlib.import_module(where.removesuffix(".GitWorkspace")).GitWorkspace
    return importlib.import_module(where)


def _one_shot(real: Callable[..., Any], exc: BaseException, when: Callable[..., bool]) -> Callable[..., Any]:
    fired: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired and when(*args, **kwargs):
            fired.append(True)
            raise exc
        return real(*args, **kwargs)

    wrapper.fired = fired  # type: ignore[attr-defined]
    return wrapper


def _drive(engine: Engine, job_id: str, first: StepOutcome) -> StepOutcome:
    """Run the retries the engine asks for until the job stops (at most 5)."""
    outcome = first
    for n in range(5):
        if outcome.kind is not OutcomeKind.RETRY:
            return outcome
        outcome = engine.run(job_id, strategy=outcome.strategy, retry_context=outcome.retry_context,
                             task_id=f"t-retry-{n}")
    return outcome


@pytest.mark.parametrize("where,name", STAGES, ids=[f"{w.rsplit('.', 1)[-1]}.{n}" for w, n in STAGES])
def test_an_exception_at_any_stage_never_leaves_the_attempt_running(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, where: str, name: str) -> None:
    job_id = engine.submit("echo work > out.txt")
    target = _target(engine, where)
    name, _, status = name.partition(":")
    real = getattr(target, name)

    def when(*args: Any, **kwargs: Any) -> bool:  # write_job: the start, or the success
        if not status:
            return True
        return _attempt_status(*args, **kwargs) == ("running" if status == "start" else status)

    injected = _one_shot(real, OSError(errno.ENOSPC, "No space left on device"), when)
    monkeypatch.setattr(target, name, injected)
    first = engine.run(job_id)
    assert injected.fired, "the stage was never reached"  # type: ignore[attr-defined]
    assert all(a["status"] != "running" for a in engine.ctx.store.list_attempts(job_id))
    outcome = _drive(engine, job_id, first)
    job = engine.job(job_id)
    assert job["status"] == "succeeded", (outcome, job.get("terminalMessage"), job.get("failureClass"))
    assert all(a["status"] != "running" for a in engine.ctx.store.list_attempts(job_id))
    [cp] = engine.ctx.store.list_checkpoints(job_id)
    from celery_selfheal.workspace.checkpoints import verify_checkpoint

    verify_checkpoint(engine.ctx.artifacts(job_id), cp)  # files and record agree


def test_a_crash_after_the_checkpoint_is_recorded_reuses_it(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rerun of a step whose checkpoint was recorded (attempt still `running`, as after a kill) keeps
    the recorded patch: no sha256 mismatch, the job finishes. The usual path records checkpoint and
    success in one write; this state comes from the step-by-step path (the job changed meanwhile,
    so that write was refused) killed between the checkpoint's record and the attempt's."""
    job_id = engine.submit("date +%s%N > out.txt", "cat out.txt")
    store = engine.ctx.store
    real_write, real_transition = store.write_job, store.transition_attempt
    refused: list[bool] = []

    def refuse_success_once(*args: Any, **kwargs: Any) -> Any:
        if not refused and _attempt_status(*args, **kwargs) == "succeeded":
            refused.append(True)
            return None  # as a compare-and-set that lost to another change: nothing written
        return real_write(*args, **kwargs)

    monkeypatch.setattr(store, "write_job", refuse_success_once)
    monkeypatch.setattr(store, "transition_attempt", _one_shot(
        real_transition, KeyboardInterrupt(), lambda *a, **k: _attempt_status(*a, **k) == "succeeded"))
    with pytest.raises(KeyboardInterrupt):  # not an Exception: like a kill, nothing records it
        engine.run(job_id)
    assert refused
    [running] = store.list_attempts(job_id)
    assert running["status"] == "running"
    [cp] = store.list_checkpoints(job_id)
    # what the sweeper does for the expired lease
    from celery_selfheal.steps.lost import finish_lost_attempt

    class _App:  # the lost-attempt path only sends the retry: record it as the engine fixture does
        pass

    monkeypatch.setattr("celery_selfheal.steps.lost.enqueue_from", lambda app, job, idx, **kw: engine.sent.append(
        (job["jobId"], idx, kw)))
    finish_lost_attempt(engine.ctx, _App(), {"jobId": job_id, "stepIndex": 0, "attempt": 1, "epoch": 0, "pgid": 0},
                        detector="worker_lost", reason="test")
    _, _, kw = engine.sent[-1]
    second = engine.run(job_id, strategy=kw["strategy"], retry_context=kw["retry_context"], task_id="t-2")
    assert second.kind is OutcomeKind.NEXT
    assert store.list_checkpoints(job_id) == [cp]  # the first record, its files intact
    assert engine.run(job_id, 1, task_id="t-3").kind is OutcomeKind.DONE
    assert engine.job(job_id)["status"] == "succeeded"


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout
    return "".join(line for line in out.splitlines(True) if ".selfheal/" not in line)  # our state dir


@pytest.mark.parametrize("destroy", ["find .git -mindepth 1 -delete", "rm -rf .git",
                                     "rm -rf .git && git init -q && git add -A && git -c user.name=x "
                                     "-c user.email=x@x commit -qm mine"])
def test_a_destroyed_workspace_repo_never_resolves_to_the_users_repo(
        tmp_path: Path, make_repo: Callable[..., Path], destroy: str) -> None:
    project = make_repo("project")
    (project / "README.md").write_text("uncommitted work of the user\n")
    head, status = _git(project, "rev-parse", "HEAD"), _git(project, "status", "--porcelain")
    config = tmp_path / "config.toml"
    config.write_text("")
    # the default layout: ./.selfheal inside the user's project repository
    settings = load_settings(state_dir=project / ".selfheal", config_path=config, env={})
    engine = Engine(ctx=build_context(settings, sinks=[]), repo=project)
    job_id = engine.submit(f"echo new > new.txt && {destroy}")
    outcome = _drive(engine, job_id, engine.run(job_id))
    job = engine.job(job_id)
    assert outcome.kind is OutcomeKind.STOP and job["status"] == "failed"
    assert job["failureClass"] == "deterministic_repo"
    assert all(a["status"] != "running" for a in engine.ctx.store.list_attempts(job_id))
    # the user's repository is exactly as it was: same HEAD (not detached), same uncommitted work
    assert _git(project, "rev-parse", "HEAD") == head
    assert _git(project, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert _git(project, "status", "--porcelain") == status
    assert "selfheal checkpoint" not in _git(project, "log", "--all", "--format=%s")
    assert engine.ctx.store.list_checkpoints(job_id) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs (needs root and CAP_SYS_ADMIN; skipped, saying so, where mount is refused)."""
    where = tmp_path / "small"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_during_a_step_is_transient_and_clears(
        tmp_path: Path, make_repo: Callable[..., Path], small_disk: Path) -> None:
    # the workspaces fill up; the store is elsewhere (a store on the full disk too cannot record
    # anything: then the step task leaves the attempt lease to expire and the sweeper records it)
    config = tmp_path / "config.toml"
    config.write_text(f'[state]\nworkspace_root = "{small_disk / "ws"}"\n')
    settings = load_settings(state_dir=tmp_path / "state", config_path=config, env={})
    engine = Engine(ctx=build_context(settings, sinks=[]), repo=make_repo())
    flag = tmp_path / "fill-the-disk"
    flag.write_text("1")
    # the runtime fills the disk (its write fails half-way, as a real one does), then succeeds
    job_id = engine.submit(f"if [ -e {flag} ]; then head -c 3000000 /dev/urandom > big.bin; fi; "
                           "echo ok > out.txt; true")
    first = engine.run(job_id)
    assert all(a["status"] != "running" for a in engine.ctx.store.list_attempts(job_id))
    [attempt] = engine.ctx.store.list_attempts(job_id)
    assert attempt["failureClass"] == "transient_runtime", attempt
    assert "No space left on device" in json.dumps(attempt)
    assert first.kind is OutcomeKind.RETRY
    # the operator frees the space; the retry the controller scheduled then succeeds
    flag.unlink()
    (engine.ctx.workspace_path(job_id) / "big.bin").unlink(missing_ok=True)
    outcome = _drive(engine, job_id, first)
    assert outcome.kind is OutcomeKind.DONE, engine.job(job_id).get("message")
    assert engine.job(job_id)["status"] == "succeeded"


def test_a_full_disk_at_submit_is_one_line(tmp_path: Path, make_repo: Callable[..., Path], small_disk: Path) -> None:
    import sys

    repo = make_repo()
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"job": {"objective": "o", "repo": str(repo), "ref": "main", "runtime": ["true"]},
                               "steps": [{"id": "a", "instructions": "x" * 200_000}]}))
    (tmp_path / "config.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "STATSD_"))}
    cli = [str(Path(sys.executable).parent / "selfheal"), "submit", str(job), "--state-dir", str(small_disk / "s")]
    subprocess.run([*cli[:2], "--help"], env=env, cwd=tmp_path, check=True, capture_output=True)
    # fill the disk, leaving a few KB: the store's first write or the message does not fit
    filler = small_disk / "filler"
    subprocess.run(["sh", "-c", f"head -c 3000000 /dev/zero > {filler}"], check=False, capture_output=True)
    os.truncate(filler, filler.stat().st_size - 16 * 1024)
    proc = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert any(why in proc.stderr for why in ("No space left", "disk is full", "disk full")), proc.stderr
