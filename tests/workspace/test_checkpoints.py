"""Checkpoint write, verification and replay on real repositories."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.artifacts import JobArtifacts
from celery_selfheal.errors import ReplayError
from celery_selfheal.workspace.checkpoints import (
    matching_workspace,
    replay,
    verify_checkpoint,
    workspace_matches,
    write_checkpoint,
)
from celery_selfheal.workspace.git import GitWorkspace

from . import BINARY, make_repo, plain_clone, run_git, worktree_tree


def _step0(root: Path) -> None:
    (root / "src" / "app.py").write_text("def main():\n    return 2\n")
    (root / "src" / "new module.py").write_text("Y = 2\n")
    (root / "assets" / "logo.bin").write_bytes(BINARY[::-1])
    (root / "README.md").chmod(0o755)


def _step1(root: Path) -> None:
    (root / "src" / "util.py").unlink()
    os.rename(root / "docs" / "spaced name.txt", root / "docs" / "r\u00e9nam\u00e9 file.txt")
    (root / "tools" / "run.sh").chmod(0o644)
    (root / "link").symlink_to("README.md")
    (root / "build").mkdir()
    (root / "build" / "out.o").write_bytes(b"ignored build output")
    (root / "trace.log").write_text("ignored log")
    (root / "data.bin").write_bytes(b"\0\1\2" * 100)


STEPS: list[tuple[str, Callable[[Path], None]]] = [
    ("implement", _step0),
    ("build", _step1),
    ("noop", lambda root: None),
]


def checkpointed_job(tmp_path: Path, steps: Any = STEPS, *, job_id: str = "job-1",
                     summary: str = "ok") -> dict[str, Any]:
    """A straight run of ``steps`` (id, edit) in a fresh workspace with a checkpoint after each."""
    repo = tmp_path / "baseline"
    sha = make_repo(repo)
    arts = JobArtifacts(tmp_path / "artifacts", job_id)
    ws = GitWorkspace.create(tmp_path / "ws", str(repo), sha)
    metas = []
    for index, (step_id, edit) in enumerate(steps):
        edit(ws.path)
        metas.append(write_checkpoint(ws, arts, step_id=step_id, step_index=index, attempt=1, summary=summary))
    return {"repo": repo, "sha": sha, "arts": arts, "ws": ws, "metas": metas, "tmp": tmp_path}


@pytest.fixture
def job(tmp_path: Path) -> dict[str, Any]:
    """A straight run of three steps with a checkpoint after each."""
    return checkpointed_job(tmp_path)


def _listing(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(path.rglob("*")) if (p.is_file() or p.is_symlink()) and ".git" not in p.parts}


def test_checkpoint_files_and_metadata(job: dict[str, Any]) -> None:
    arts, metas, ws = job["arts"], job["metas"], job["ws"]
    m0, m1, m2 = metas
    for meta in metas:
        patch = arts.patch_path(meta["stepIndex"]).read_bytes()
        assert meta["patchSha256"] == meta["diffHash"] == hashlib.sha256(patch).hexdigest()
        on_disk = json.loads(arts.step_state_path(meta["stepIndex"]).read_text())
        assert on_disk == meta
        assert meta["finishedAt"].endswith("Z") and meta["epoch"] == 0 and meta["attempt"] == 1
    assert m0["treeBefore"] == run_git(job["repo"], "rev-parse", f"{job['sha']}^{{tree}}")
    assert m1["treeBefore"] == m0["treeAfter"] and m2["treeBefore"] == m1["treeAfter"]
    assert "src/new module.py" in m0["changedFiles"]
    assert {"docs/spaced name.txt", "docs/r\u00e9nam\u00e9 file.txt", "link"} <= set(m1["changedFiles"])
    assert not any(f.startswith("build/") or f.endswith(".log") for f in m1["changedFiles"])
    # An empty step is a valid, empty checkpoint.
    assert arts.patch_path(2).read_bytes() == b"" and m2["changedFiles"] == []
    assert m2["treeAfter"] == m2["treeBefore"] == ws.head_tree()
    assert ws.is_clean_at(m2["treeAfter"])


def test_replay_round_trip(job: dict[str, Any]) -> None:
    ws, metas = job["ws"], job["metas"]
    target = job["tmp"] / "rebuilt"
    new = replay(target, repo=str(job["repo"]), baseline_sha=job["sha"], checkpoints=metas, arts=job["arts"])
    assert new.path == target and new.head_tree() == metas[-1]["treeAfter"]
    # Same commit ids as the straight run: messages and dates are derived from the checkpoints.
    assert run_git(target, "rev-parse", "HEAD") == run_git(ws.path, "rev-parse", "HEAD")
    expected = {k: v for k, v in _listing(ws.path).items() if not k.startswith("build/") and k != "trace.log"}
    assert _listing(target) == expected  # ignored files do not travel
    assert os.access(target / "README.md", os.X_OK) and not os.access(target / "tools/run.sh", os.X_OK)
    assert (target / "link").is_symlink()
    assert workspace_matches(target, metas, job["sha"])
    assert not [p for p in target.parent.iterdir() if ".replay+" in p.name or ".old-" in p.name]


def test_replay_replaces_existing_workspace(job: dict[str, Any]) -> None:
    ws, metas = job["ws"], job["metas"]
    (ws.path / "README.md").write_text("poisoned\n")
    assert not workspace_matches(ws.path, metas, job["sha"])
    replay(ws.path, repo=str(job["repo"]), baseline_sha=job["sha"], checkpoints=metas[:2], arts=job["arts"])
    assert workspace_matches(ws.path, metas[:2], job["sha"])
    assert not [p for p in ws.path.parent.iterdir() if ".old-" in p.name or ".replay+" in p.name]
    replay(ws.path, repo=str(job["repo"]), baseline_sha=job["sha"], checkpoints=[], arts=job["arts"],
           keep_old=False)
    assert workspace_matches(ws.path, [], job["sha"])
    assert (ws.path / "src" / "util.py").exists()


def test_plain_git_apply_reproduces_the_tree(job: dict[str, Any]) -> None:
    plain = plain_clone(job["repo"], job["tmp"] / "plain", job["sha"])
    for meta in job["metas"]:
        patch = job["arts"].patch_path(meta["stepIndex"])
        if patch.stat().st_size:
            run_git(plain, "apply", str(patch))
        assert worktree_tree(plain) == meta["treeAfter"]


def _assert_untouched(job: dict[str, Any], before: dict[str, bytes], head: str) -> None:
    ws = job["ws"]
    assert _listing(ws.path) == before and run_git(ws.path, "rev-parse", "HEAD") == head
    assert not [p for p in ws.path.parent.iterdir() if ".replay+" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("damage", ["tamper", "missing", "tree", "apply"])
def test_replay_failure_names_step_and_file_and_leaves_path(job: dict[str, Any], damage: str) -> None:
    ws, arts = job["ws"], job["arts"]
    metas = [dict(m) for m in job["metas"]]
    (ws.path / "hand edit.txt").write_text("operator was here\n")  # must survive a failed replay
    before, head = _listing(ws.path), run_git(ws.path, "rev-parse", "HEAD")
    patch = arts.patch_path(1)
    if damage == "tamper":
        patch.write_bytes(patch.read_bytes().replace(b"Y", b"Z", 1) + b"\n")
        expected = "patch patches/steps/step-0001.patch sha256 mismatch"
    elif damage == "missing":
        patch.unlink()
        expected = "patch patches/steps/step-0001.patch is missing"
    elif damage == "tree":
        metas[1]["treeAfter"] = "f" * 40
        expected = f"tree after step 1 is {job['metas'][1]['treeAfter']}"
    else:  # a hash-valid patch that does not apply: step 0's patch recorded again as step 1
        data = arts.patch_path(0).read_bytes()
        patch.write_bytes(data)
        metas[1]["patchSha256"] = hashlib.sha256(data).hexdigest()
        expected = "patch patches/steps/step-0001.patch does not apply: git apply failed"
    with pytest.raises(ReplayError) as err:
        replay(ws.path, repo=str(job["repo"]), baseline_sha=job["sha"], checkpoints=metas, arts=arts)
    assert str(err.value).startswith("step 1 (id 'build'): ")
    assert expected in str(err.value)
    assert err.value.step_index == 1 and err.value.path == str(patch)
    _assert_untouched(job, before, head)


def test_verify_checkpoint_rejects_bad_metadata(job: dict[str, Any]) -> None:
    with pytest.raises(ReplayError, match="lacks a valid stepIndex"):
        verify_checkpoint(job["arts"], {"stepId": "x", "stepIndex": "1", "patchSha256": "0"})
    assert verify_checkpoint(job["arts"], job["metas"][2]) == b""


def test_rewritten_checkpoint_moves_old_one_to_history(job: dict[str, Any]) -> None:
    ws, arts = job["ws"], job["arts"]
    old_patch = arts.patch_path(2).read_bytes()
    old_meta = json.loads(arts.step_state_path(2).read_text())
    (ws.path / "again.txt").write_text("epoch 1\n")
    meta = write_checkpoint(ws, arts, step_id="noop", step_index=2, attempt=1, summary="redo", epoch=1)
    assert meta["epoch"] == 1 and meta["changedFiles"] == ["again.txt"]
    assert json.loads(arts.history_path("step-0002-epoch-0000.json").read_text()) == old_meta
    assert arts.history_path("step-0002-epoch-0000.patch").read_bytes() == old_patch
    write_checkpoint(ws, arts, step_id="noop", step_index=2, attempt=2, summary="redo", epoch=1)
    assert arts.history_path("step-0002-epoch-0001.json").exists()
    write_checkpoint(ws, arts, step_id="noop", step_index=2, attempt=3, summary="redo", epoch=1)
    assert arts.history_path("step-0002-epoch-0001-2.json").exists()


def test_workspace_matches(job: dict[str, Any], tmp_path: Path) -> None:
    ws, metas, sha = job["ws"], job["metas"], job["sha"]
    assert workspace_matches(ws.path, metas, sha)
    assert not workspace_matches(ws.path, metas[:1], sha)  # HEAD is further along
    assert not workspace_matches(tmp_path / "nowhere", metas, sha)
    (ws.path / "trace.log").write_text("ignored: still a match")
    assert workspace_matches(ws.path, metas, sha)
    (ws.path / "stray.txt").write_text("untracked")
    assert not workspace_matches(ws.path, metas, sha)
    fresh = GitWorkspace.create(tmp_path / "fresh", str(job["repo"]), sha)
    assert workspace_matches(fresh.path, [], sha)
    assert not workspace_matches(fresh.path, [], "0" * 40)


def test_runtime_commits_and_deleting_everything_replay(tmp_path: Path) -> None:
    repo = tmp_path / "baseline"
    sha = make_repo(repo)
    arts = JobArtifacts(tmp_path / "artifacts", "job-2")
    ws = GitWorkspace.create(tmp_path / "ws", str(repo), sha)
    (ws.path / "agent.txt").write_text("committed by the runtime\n")
    run_git(ws.path, "add", "-A")
    run_git(ws.path, "commit", "-qm", "agent")
    (ws.path / "later.txt").write_text("left uncommitted\n")
    metas = [write_checkpoint(ws, arts, step_id="agent", step_index=0, attempt=2, summary="")]
    assert {"agent.txt", "later.txt"} <= set(metas[0]["changedFiles"])
    run_git(ws.path, "rm", "-rq", ".")  # step 1 deletes every tracked file
    metas.append(write_checkpoint(ws, arts, step_id="wipe", step_index=1, attempt=1, summary=""))
    assert metas[1]["treeAfter"] == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    rebuilt = replay(tmp_path / "rebuilt", repo=str(repo), baseline_sha=sha, checkpoints=metas, arts=arts)
    assert rebuilt.head_tree() == metas[1]["treeAfter"]
    assert run_git(rebuilt.path, "rev-parse", "HEAD") == run_git(ws.path, "rev-parse", "HEAD")
    assert workspace_matches(rebuilt.path, metas, sha) and workspace_matches(ws.path, metas, sha)


def test_interrupted_replay_leaves_path_untouched(
    job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancel (or the soft time limit) arriving mid-replay: nothing half-built stays behind.
    from celery_selfheal.workspace import patch_stack as gitmod

    ws = job["ws"]
    before, head = _listing(ws.path), run_git(ws.path, "rev-parse", "HEAD")
    calls = []

    def interrupted(self: Any, patch: bytes, message: str, expected: Any = None) -> str:
        calls.append(message)
        raise KeyboardInterrupt

    monkeypatch.setattr(gitmod.PatchStack, "push", interrupted)
    with pytest.raises(KeyboardInterrupt):
        replay(ws.path, repo=str(job["repo"]), baseline_sha=job["sha"], checkpoints=job["metas"],
               arts=job["arts"])
    assert calls
    _assert_untouched(job, before, head)


def test_stale_half_built_replays_are_removed(job: dict[str, Any]) -> None:
    ws = job["ws"]
    stale, fresh = ws.path.parent / ".ws.replay+stale", ws.path.parent / ".ws.replay+fresh"
    other_job = ws.path.parent / "ws.replay"  # a job id that looks similar is never touched
    for d in (stale, fresh, other_job):
        d.mkdir()
    os.utime(stale, (1, 1))
    os.utime(other_job, (1, 1))
    replay(ws.path, repo=str(job["repo"]), baseline_sha=job["sha"], checkpoints=job["metas"],
           arts=job["arts"])
    assert not stale.exists() and fresh.exists() and other_job.exists()


def test_a_matching_workspace_comes_back_with_the_repository_it_opened(
        job: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The step goes on with the instance that checked the workspace: libgit2 opens it once."""
    from celery_selfheal.workspace import libgit

    ws, metas, sha = job["ws"], job["metas"], job["sha"]
    opened: list[Path] = []
    real = libgit.open_workspace
    monkeypatch.setattr(libgit, "open_workspace", lambda path, ref: opened.append(path) or real(path, ref))
    kept = matching_workspace(ws.path, metas, sha)
    assert kept is not None and kept.path == ws.path
    assert kept.head_tree() == metas[-1]["treeAfter"] and kept.current_change().base_tree == metas[-1]["treeAfter"]
    assert len(opened) == (1 if libgit.AVAILABLE else 0)
    assert matching_workspace(ws.path, metas[:1], sha) is None


def _checked_out(path: Path) -> dict[str, Any]:
    """What a checkout leaves: the index as the CLI reads it, the files with their modes and
    symlink targets, and what ``git status`` says (the CLI's own view of the stat cache)."""
    return {
        "index": run_git(path, "ls-files", "--stage"),
        "files": sorted((p.relative_to(path).as_posix(), os.lstat(p).st_mode,
                         os.readlink(p) if p.is_symlink() else p.read_bytes())
                        for p in path.rglob("*") if (p.is_file() or p.is_symlink()) and ".git" not in p.parts),
        "status": run_git(path, "status", "--porcelain", "--untracked-files=all"),
        "head": run_git(path, "rev-parse", "HEAD", "refs/selfheal/base"),
    }


@pytest.mark.parametrize("upto", [0, 3])
def test_replay_checks_out_in_process_as_the_cli_does(
        job: dict[str, Any], monkeypatch: pytest.MonkeyPatch, upto: int) -> None:
    """Replay writes the rebuilt work tree with libgit2 (no git process, as a first step's clone);
    the result is the one the CLI's ``checkout --force`` gives, which is also the fallback."""
    from celery_selfheal.workspace import gitcmd, libgit

    if not libgit.AVAILABLE:
        pytest.skip("pygit2 is a declared dependency; this compares its checkout with the CLI's")
    args = {"repo": str(job["repo"]), "baseline_sha": job["sha"], "checkpoints": job["metas"][:upto],
            "arts": job["arts"]}
    calls: list[list[str]] = []
    real_git = gitcmd.subprocess.run
    with monkeypatch.context() as m:
        m.setattr(gitcmd.subprocess, "run", lambda cmd, *a, **k: calls.append(list(cmd)) or real_git(cmd, *a, **k))
        fast = replay(job["tmp"] / "fast", **args)
    assert not [c for c in calls if "checkout" in c]  # (a patch libgit2 cannot apply goes to the CLI)
    with monkeypatch.context() as m:
        def refuse(self: Any, commit: str) -> None:
            raise libgit.pygit2.GitError("refused by the test")
        m.setattr(libgit.InProcess, "checkout_empty", refuse)
        slow = replay(job["tmp"] / "slow", **args)
    assert _checked_out(fast.path) == _checked_out(slow.path)
    assert _checked_out(fast.path)["status"] == ""
    assert workspace_matches(fast.path, job["metas"][:upto], job["sha"])


def test_a_rebuild_with_the_cli_alone_checks_out_with_the_cli(
        job: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """When libgit2 fails where the CLI cannot take over, replay starts again with the CLI alone:
    that rebuild's checkout is the CLI's too, and the result is the same workspace."""
    from celery_selfheal.workspace import libgit

    if not libgit.AVAILABLE:
        pytest.skip("pygit2 is a declared dependency; this forces its failure")
    in_process: list[str] = []
    real = libgit.InProcess.checkout_empty
    monkeypatch.setattr(libgit.InProcess, "checkout_empty",
                        lambda self, commit: in_process.append(commit) or real(self, commit))

    def broken(*args: Any, **kwargs: Any) -> str:
        raise libgit.pygit2.GitError("broken by the test")

    monkeypatch.setattr(libgit.InProcess, "commit_tree", broken)
    new = replay(job["tmp"] / "cli-only", repo=str(job["repo"]), baseline_sha=job["sha"],
                 checkpoints=job["metas"], arts=job["arts"])
    assert in_process == []
    assert workspace_matches(new.path, job["metas"], job["sha"])
    assert run_git(new.path, "rev-parse", "HEAD") == run_git(job["ws"].path, "rev-parse", "HEAD")
