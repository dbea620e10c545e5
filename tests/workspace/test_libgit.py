"""The in-process git path (`workspace.libgit`) gives exactly what the git CLI gives, or the CLI is used."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from celery_selfheal.workspace import libgit
from celery_selfheal.workspace.git import BASE_REF, IDENTITY, GitWorkspace

from . import make_repo, run_git
from .test_replay_property import apply_op, steps


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("libgit") / "baseline"
    return path, make_repo(path)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="libgit-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli_tree(ws: GitWorkspace) -> str:
    """``git add --all`` + ``write-tree`` on a private index: the CLI's snapshot."""
    tree, index = ws._snapshot(ws.rev("HEAD^{commit}"))
    index.unlink()
    return tree


def test_pygit2_is_installed() -> None:
    # a declared dependency: without it every step pays for about nine git processes
    assert libgit.AVAILABLE


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
def test_snapshot_and_commit_equal_the_cli(baseline: tuple[Path, str], scratch: Path,
                                           plan: list[list[Any]]) -> None:
    repo, sha = baseline
    ws = GitWorkspace.create(Path(tempfile.mkdtemp(dir=scratch)) / "ws", str(repo), sha)  # one per example
    fast = libgit.open_workspace(ws.path, BASE_REF)
    assert fast is not None
    for edits in plan:
        for op in edits:
            apply_op(ws.path, op)
        tree, index = fast.snapshot()
        assert tree == cli_tree(ws)
        base = fast.base_and_tree()[0]
        expected = ws.commit_tree(tree, base, "message\n")  # the CLI's commit-tree
        assert fast.commit(tree, base, "message\n", index, IDENTITY) == expected
        assert ws.rev("HEAD") == expected == ws.git(["rev-parse", BASE_REF]).decode().strip()
        assert fast.is_clean() and ws.is_clean_at(tree)
        assert ws.git(["status", "--porcelain", "-z", "--untracked-files=all"]) == b""


def test_nested_repository_falls_back_to_the_cli_gitlink(baseline: tuple[Path, str], scratch: Path) -> None:
    repo, sha = baseline
    ws = GitWorkspace.create(scratch / "ws", str(repo), sha)
    nested = ws.path / "vendor"
    nested.mkdir()
    run_git(nested, "init", "-q")
    (nested / "a").write_text("a\n")
    run_git(nested, "add", "-A")
    run_git(nested, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "n")
    fast = libgit.open_workspace(ws.path, BASE_REF)
    assert fast is not None
    with pytest.raises(libgit.Error):
        fast.snapshot()  # libgit2 cannot stage it ...
    change = ws.current_change()
    assert change.tree == cli_tree(ws) and "vendor" in change.changed_files  # ... the CLI records it
    assert ws.commit_change("m\n", base=change.base) == change.tree
    assert b"160000 commit" in ws.git(["ls-tree", "HEAD", "vendor"])


def test_workspace_autocrlf_uses_the_cli(baseline: tuple[Path, str], scratch: Path) -> None:
    repo, sha = baseline
    ws = GitWorkspace.create(scratch / "ws", str(repo), sha)
    assert libgit.open_workspace(ws.path, BASE_REF) is not None
    run_git(ws.path, "config", "core.autocrlf", "true")  # the CLI overrides it; libgit2 would not
    assert libgit.open_workspace(ws.path, BASE_REF) is None
    (ws.path / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    assert ws.current_change().tree == cli_tree(ws)


def test_resolve_local_equals_rev_parse_or_defers(baseline: tuple[Path, str], tmp_path: Path) -> None:
    repo, sha = baseline
    for ref in ("HEAD", "main", sha, sha[:12], "HEAD~0"):
        assert libgit.resolve_local(repo, ref) == run_git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    (repo / "sub").mkdir(exist_ok=True)
    assert libgit.resolve_local(repo / "sub", "HEAD") is None  # not the top: the CLI says why
    assert libgit.resolve_local(repo, "no-such-branch") is None
    assert libgit.resolve_local(tmp_path, "HEAD") is None


def _index_stamp(ws: GitWorkspace) -> tuple[int, int]:
    st = (ws.git_dir / "index").stat()
    return st.st_ino, st.st_mtime_ns


def test_noop_commit_keeps_the_index_and_a_change_rewrites_it(baseline: tuple[Path, str], scratch: Path) -> None:
    repo, sha = baseline
    ws = GitWorkspace.create(scratch / "ws", str(repo), sha)
    before = _index_stamp(ws)
    tree = ws.commit_change("noop\n")
    assert _index_stamp(ws) == before  # nothing staged differs: no index write (a lock file and a rename)
    assert ws.rev("HEAD") != sha and ws.is_clean_at(tree) and tree == ws.rev(f"{sha}^{{tree}}")
    (ws.path / "new.txt").write_text("new\n")
    tree = ws.commit_change("change\n")
    assert _index_stamp(ws) != before and ws.is_clean_at(tree)
    assert ws.git(["status", "--porcelain", "-z", "--untracked-files=all"]) == b""


def test_staged_then_reverted_change_rewrites_the_index(baseline: tuple[Path, str], scratch: Path) -> None:
    # the runtime staged a file, then removed it: same tree as the base, but the index on disk differs
    repo, sha = baseline
    ws = GitWorkspace.create(scratch / "ws", str(repo), sha)
    (ws.path / "tmp.txt").write_text("x\n")
    run_git(ws.path, "add", "tmp.txt")
    (ws.path / "tmp.txt").unlink()
    tree = ws.commit_change("m\n")
    assert tree == ws.rev(f"{sha}^{{tree}}") and ws.is_clean_at(tree)
    assert ws.git(["status", "--porcelain", "-z", "--untracked-files=all"]) == b""


def test_cached_inprocess_workspace_is_reopened_when_its_config_changes(baseline: tuple[Path, str],
                                                                         scratch: Path) -> None:
    repo, sha = baseline
    ws = GitWorkspace.create(scratch / "ws", str(repo), sha)
    first = ws._fast()
    assert first is not None and ws._fast() is first  # opened once per instance
    run_git(ws.path, "config", "core.autocrlf", "true")  # set by the runtime between two calls
    assert ws._fast() is None
    (ws.path / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    assert ws.current_change().tree == cli_tree(ws)
