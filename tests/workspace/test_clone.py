"""The in-process clone of a local baseline (`libgit.clone_local`) against the git CLI's clone:
the same refs, remote, configuration, HEAD, index and work tree, checked with git itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celery_selfheal.workspace import clone, libgit
from celery_selfheal.workspace.git import BASE_REF, GitWorkspace

from . import make_repo, run_git


@pytest.fixture
def baseline(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "baseline"
    sha = make_repo(path)
    run_git(path, "checkout", "-q", "-b", "topic")
    (path / "topic.txt").write_text("topic\n")
    run_git(path, "add", "-A")
    run_git(path, "commit", "-q", "-m", "topic")
    run_git(path, "checkout", "-q", "main")
    return path, sha


def _facts(path: Path) -> dict[str, object]:
    """What a runtime and our own code can see of a workspace."""
    config = run_git(path, "config", "--local", "--list").splitlines()
    return {
        "refs": run_git(path, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": run_git(path, "rev-parse", "HEAD"),
        "detached": run_git(path, "rev-parse", "--abbrev-ref", "HEAD"),
        "base": run_git(path, "rev-parse", BASE_REF),
        "config": sorted(line for line in config if not line.startswith("core.bare")),
        "index": run_git(path, "ls-files", "--stage"),
        "status": run_git(path, "status", "--porcelain", "--untracked-files=all"),
        "files": sorted((str(p.relative_to(path)), p.stat().st_mode, p.read_bytes())
                        for p in path.rglob("*") if p.is_file() and ".git" not in p.parts),
        "git dir": sorted(p.name for p in (path / ".git").iterdir()
                          if p.name not in ("packed-refs", "FETCH_HEAD", "logs", "info")),
    }


def _recorded_git(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argument lists of the git processes `workspace.clone` starts from now on."""
    calls: list[list[str]] = []
    real = clone.git
    monkeypatch.setattr(clone, "git", lambda args, **kw: calls.append(list(args)) or real(args, **kw))
    return calls


def _cli_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libgit, "clone_local", lambda *a, **k: False)


@pytest.mark.parametrize("checkout", [True, False])
def test_in_process_clone_equals_the_cli_clone(baseline: tuple[Path, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, checkout: bool) -> None:
    repo, sha = baseline
    fast = GitWorkspace.create(tmp_path / "fast", str(repo), sha, checkout=checkout)
    with monkeypatch.context() as m:
        _cli_only(m)
        slow = GitWorkspace.create(tmp_path / "slow", str(repo), sha, checkout=checkout)
    got, want = _facts(fast.path), _facts(slow.path)
    got["config"] = [line.replace(str(tmp_path / "fast"), "WS") for line in got["config"]]  # type: ignore[union-attr]
    want["config"] = [line.replace(str(tmp_path / "slow"), "WS") for line in want["config"]]  # type: ignore[union-attr]
    assert got == want
    assert fast.is_clean_at(run_git(repo, "rev-parse", f"{sha}^{{tree}}")) is checkout
    # objects are hard links, as the CLI's local clone makes them: nothing is copied
    obj = next(p for p in (fast.git_dir / "objects").rglob("*") if p.is_file() and len(p.parent.name) == 2)
    assert os.stat(obj).st_nlink > 1


def test_in_process_clone_starts_no_git_process(baseline: tuple[Path, str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    repo, sha = baseline
    calls = _recorded_git(monkeypatch)
    GitWorkspace.create(tmp_path / "ws", str(repo), sha)
    assert calls == []


def test_a_commit_libgit2_cannot_find_falls_back_to_the_cli(baseline: tuple[Path, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = baseline
    calls = _recorded_git(monkeypatch)
    topic = run_git(repo, "rev-parse", "topic")
    # libgit2 refuses (a commit it cannot find): the CLI runs, on an empty directory again
    monkeypatch.setattr(libgit.pygit2.Repository, "revparse_single",
                        lambda self, spec: (_ for _ in ()).throw(KeyError(spec)))
    ws = GitWorkspace.create(tmp_path / "ws", str(repo), topic)
    assert calls and calls[0][0] == "clone"
    assert run_git(ws.path, "rev-parse", "HEAD") == topic


def test_configure_writes_plain_values_and_leaves_the_rest_to_libgit2(tmp_path: Path) -> None:
    bare = tmp_path / "r.git"
    libgit.pygit2.init_repository(str(bare), bare=True).free()
    settings = {"core.hooksPath": "/dev/null", "user.name": 'A "quoted"; name # here', "gc.auto": "0",
                "x.y.z": "three-part"}
    libgit._configure(bare / "config", settings)
    for key, value in {**settings, "core.bare": "false"}.items():
        assert run_git(tmp_path, "--git-dir", str(bare), "config", "--get", key) == value
