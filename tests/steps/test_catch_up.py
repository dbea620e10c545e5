"""A job's steps moving between two workers (two workspace roots, one store and artifact root): a
worker that still holds the job's workspace from an earlier step brings it forward with the later
checkpoints instead of cloning again, with the commits a replay makes; a workspace that is not
clean, or a checkpoint that fails its check, is never brought forward (real git, real runtimes)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

from celery_selfheal.steps.outcome import OutcomeKind
from tests.engine import Engine

SENTINEL = "selfheal-test-sentinel"  # inside .git: survives a catch-up, not a replay (a new clone)


def _on(engine: Engine, root: Path) -> None:
    engine.ctx.settings = dataclasses.replace(engine.ctx.settings, workspace_root=root)


def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout.strip()


def _files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.name != ".git"}


def _three_steps_a_b(engine: Engine, tmp_path: Path) -> tuple[str, Path, Path]:
    """Step 0 on worker a, step 1 on worker b; returns the job and both workspaces."""
    job_id = engine.submit("echo zero > f0.txt", "echo one > f1.txt && rm README.md", "echo two > f2.txt")
    a, b = tmp_path / "worker-a", tmp_path / "worker-b"
    _on(engine, a)
    assert engine.run(job_id, 0, task_id="t-0").kind is OutcomeKind.NEXT
    (a / job_id / ".git" / SENTINEL).write_text("a's own clone\n")
    _on(engine, b)
    assert engine.run(job_id, 1, task_id="t-1").kind is OutcomeKind.NEXT
    return job_id, a / job_id, b / job_id


def test_a_step_back_on_a_worker_brings_its_workspace_forward(engine: Engine, tmp_path: Path) -> None:
    job_id, ws_a, ws_b = _three_steps_a_b(engine, tmp_path)
    inode = os.stat(ws_a / ".git").st_ino
    _on(engine, tmp_path / "worker-a")
    assert engine.run(job_id, 2, task_id="t-2").kind is OutcomeKind.DONE
    assert engine.job(job_id)["status"] == "succeeded"
    assert (ws_a / ".git" / SENTINEL).exists() and os.stat(ws_a / ".git").st_ino == inode  # no new clone
    assert _files(ws_a) == _files(ws_b) | {"f2.txt"} and "README.md" not in _files(ws_a)
    assert _git(ws_a, "rev-parse", "HEAD~1") == _git(ws_b, "rev-parse", "HEAD")  # the commit replay made
    assert _git(ws_a, "rev-parse", "refs/selfheal/base") == _git(ws_a, "rev-parse", "HEAD")
    assert _git(ws_a, "status", "--porcelain", "--untracked-files=all") == ""
    [*_, last] = engine.ctx.store.list_checkpoints(job_id)
    assert last["treeAfter"] == _git(ws_a, "rev-parse", "HEAD^{tree}")


def test_a_workspace_changed_since_is_rebuilt_not_brought_forward(engine: Engine, tmp_path: Path) -> None:
    job_id, ws_a, _ = _three_steps_a_b(engine, tmp_path)
    (ws_a / "stray.txt").write_text("left by hand\n")
    _on(engine, tmp_path / "worker-a")
    assert engine.run(job_id, 2, task_id="t-2").kind is OutcomeKind.DONE
    assert not (ws_a / ".git" / SENTINEL).exists() and not (ws_a / "stray.txt").exists()  # replayed
    assert {"f0.txt", "f1.txt", "f2.txt"} <= _files(ws_a) and "README.md" not in _files(ws_a)


def test_a_checkpoint_that_fails_its_check_is_never_applied(engine: Engine, tmp_path: Path) -> None:
    job_id, ws_a, _ = _three_steps_a_b(engine, tmp_path)
    patch = engine.ctx.artifacts(job_id).patch_path(1)
    patch.write_bytes(patch.read_bytes().replace(b"one", b"0ne"))
    before = _git(ws_a, "rev-parse", "HEAD")
    _on(engine, tmp_path / "worker-a")
    outcome = engine.run(job_id, 2, task_id="t-2")
    assert outcome.kind is not OutcomeKind.DONE
    assert "sha256 mismatch" in str(engine.job(job_id).get("terminalMessage") or outcome.reason)
    assert _git(ws_a, "rev-parse", "HEAD") == before and (ws_a / ".git" / SENTINEL).exists()  # untouched
    assert not (ws_a / "f1.txt").exists() and (ws_a / "README.md").exists()


def test_a_workspace_too_far_behind_is_replayed(engine: Engine, tmp_path: Path) -> None:
    """Past `MAX_BEHIND` checkpoints a replay (patches applied in memory) is as fast: it is used."""
    from celery_selfheal.workspace import catch_up

    count = catch_up.MAX_BEHIND + 3  # the last step on worker a: its copy lacks MAX_BEHIND + 1
    job_id = engine.submit(*[f"echo {i} > f{i}.txt" for i in range(count)])
    a, b = tmp_path / "worker-a", tmp_path / "worker-b"
    _on(engine, a)
    assert engine.run(job_id, 0, task_id="t-0").kind is OutcomeKind.NEXT
    (a / job_id / ".git" / SENTINEL).write_text("a's own clone\n")
    _on(engine, b)
    for i in range(1, count - 1):
        assert engine.run(job_id, i, task_id=f"t-{i}").kind is OutcomeKind.NEXT
    _on(engine, a)
    assert engine.run(job_id, count - 1, task_id="t-last").kind is OutcomeKind.DONE
    assert not (a / job_id / ".git" / SENTINEL).exists()  # rebuilt by replay
    assert {f"f{i}.txt" for i in range(count)} <= _files(a / job_id)
