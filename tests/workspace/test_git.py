"""GitWorkspace and resolve_ref on real repositories."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from celery_selfheal.errors import InputError, WorkspaceError
from celery_selfheal.workspace.git import GitWorkspace, resolve_ref

from . import BINARY, make_repo, plain_clone, run_git, worktree_tree


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "baseline"
    return path, make_repo(path)


@pytest.fixture
def ws(tmp_path: Path, repo: tuple[Path, str]) -> GitWorkspace:
    return GitWorkspace.create(tmp_path / "ws", str(repo[0]), repo[1])


# --- resolve_ref ---------------------------------------------------------------------------------

def test_resolve_ref_local_branch_tag_sha(repo: tuple[Path, str]) -> None:
    path, sha = repo
    assert resolve_ref(str(path), "main") == sha
    assert resolve_ref(str(path), "v1") == sha
    assert resolve_ref(str(path), sha[:10]) == sha
    assert resolve_ref(str(path), "HEAD") == sha


def test_resolve_ref_url_uses_ls_remote(repo: tuple[Path, str]) -> None:
    path, sha = repo
    run_git(path, "tag", "-a", "-m", "annotated", "v2")
    url = path.resolve().as_uri()
    assert resolve_ref(url, "main") == sha
    assert resolve_ref(url, "v2") == sha  # peeled, not the tag object
    with pytest.raises(InputError) as err:
        resolve_ref(url, "nope")
    assert err.value.where == "job.ref"


def test_resolve_ref_errors_name_the_key(tmp_path: Path, repo: tuple[Path, str]) -> None:
    path, _ = repo
    with pytest.raises(InputError) as err:
        resolve_ref(str(path), "no-such-branch")
    assert err.value.where == "job.ref" and "no-such-branch" in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        resolve_ref(str(tmp_path / "missing"), "main")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InputError) as err:
        resolve_ref(str(plain), "main")
    assert err.value.where == "job.repo" and "not a git repository" in str(err.value)
    # A subdirectory of a repository is not itself a repository.
    with pytest.raises(InputError) as err:
        resolve_ref(str(path / "src"), "main")
    assert err.value.where == "job.repo"
    with pytest.raises(InputError):
        resolve_ref(str(path), "--upload-pack=evil")
    assert "\n" not in str(err.value)


# --- create / open ------------------------------------------------------------------------------

def test_create_is_detached_clean_and_configured(ws: GitWorkspace, repo: tuple[Path, str]) -> None:
    _, sha = repo
    assert run_git(ws.path, "rev-parse", "HEAD") == sha
    assert run_git(ws.path, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"  # detached
    assert ws.is_clean_at(run_git(ws.path, "rev-parse", "HEAD^{tree}"))
    assert run_git(ws.path, "config", "core.autocrlf") == "false"
    assert run_git(ws.path, "config", "gc.auto") == "0"
    assert run_git(ws.path, "config", "user.name")
    hooks = ws.git_dir / "hooks"
    assert not hooks.exists() or not any(hooks.iterdir())
    assert os.access(ws.path / "tools" / "run.sh", os.X_OK)
    assert (ws.path / "assets" / "logo.bin").read_bytes() == BINARY


def test_create_refuses_non_empty_path_and_unknown_commit(tmp_path: Path, repo: tuple[Path, str]) -> None:
    path, sha = repo
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(WorkspaceError, match="not empty"):
        GitWorkspace.create(busy, str(path), sha)
    with pytest.raises(WorkspaceError, match="not found"):
        GitWorkspace.create(tmp_path / "other", str(path), "0" * 40)
    assert not (tmp_path / "other").exists()  # a failed create leaves nothing behind
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkspaceError, match="not found"):
        GitWorkspace.create(empty, str(path), "0" * 40)
    assert empty.is_dir() and not any(empty.iterdir())
    with pytest.raises(WorkspaceError, match="not a git workspace"):
        GitWorkspace.open(tmp_path / "missing")


def test_hooks_never_run(ws: GitWorkspace) -> None:
    # A runtime could plant hooks; our commits must not run them.
    hook = ws.git_dir / "hooks" / "pre-commit"
    hook.parent.mkdir(exist_ok=True)
    marker = ws.path.parent / "hook-ran"
    hook.write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 1\n")
    hook.chmod(0o755)
    (ws.path / "new.txt").write_text("x\n")
    ws.commit_change("step")
    assert not marker.exists()


# --- current_change -----------------------------------------------------------------------------

def test_current_change_covers_every_kind_without_touching_index(ws: GitWorkspace) -> None:
    index_before = (ws.git_dir / "index").read_bytes()
    (ws.path / "new dir").mkdir()
    (ws.path / "new dir" / "caf\u00e9.txt").write_text("new\n")
    (ws.path / "src" / "util.py").unlink()
    os.rename(ws.path / "src" / "app.py", ws.path / "src" / "main.py")
    (ws.path / "assets" / "logo.bin").write_bytes(BINARY[::-1])
    (ws.path / "README.md").chmod(0o755)
    (ws.path / "build").mkdir()
    (ws.path / "build" / "out.o").write_bytes(b"ignored")
    (ws.path / "debug.log").write_text("ignored")

    change = ws.current_change()

    assert (ws.git_dir / "index").read_bytes() == index_before
    assert change.diff_hash == hashlib.sha256(change.patch).hexdigest()
    assert set(change.changed_files) == {
        "new dir/caf\u00e9.txt", "src/util.py", "src/app.py", "src/main.py", "assets/logo.bin", "README.md",
    }
    assert b"rename from src/app.py" in change.patch
    assert b"GIT binary patch" in change.patch
    assert b"new mode 100755" in change.patch
    assert b"build/out.o" not in change.patch and b"debug.log" not in change.patch
    assert change.tree == worktree_tree(ws.path)
    assert change.base_tree == ws.head_tree()


def test_no_change_is_empty(ws: GitWorkspace) -> None:
    change = ws.current_change()
    assert change.patch == b"" and change.changed_files == ()
    assert change.diff_hash == hashlib.sha256(b"").hexdigest()
    assert change.tree == ws.head_tree()


def test_change_includes_commits_the_runtime_made(ws: GitWorkspace) -> None:
    base_tree = ws.head_tree()
    (ws.path / "committed.txt").write_text("by the agent\n")
    run_git(ws.path, "add", "committed.txt")
    run_git(ws.path, "commit", "-q", "-m", "agent commit")
    (ws.path / "pending.txt").write_text("not committed\n")
    change = ws.current_change()
    assert change.base_tree == base_tree
    assert set(change.changed_files) == {"committed.txt", "pending.txt"}


# --- commit_change / is_clean_at / apply_patch -----------------------------------------------------

def test_commit_change_is_reproducible(tmp_path: Path, repo: tuple[Path, str]) -> None:
    path, sha = repo
    heads = []
    for name in ("a", "b"):
        ws = GitWorkspace.create(tmp_path / name, str(path), sha)
        (ws.path / "x.txt").write_text("same\n")
        tree = ws.commit_change("step 0")
        assert ws.is_clean_at(tree) and ws.head_tree() == tree
        assert ws.commit_change("empty step") == tree  # empty commit allowed
        heads.append(run_git(ws.path, "rev-parse", "HEAD"))
    assert heads[0] == heads[1]


def test_is_clean_at_sees_edits_untracked_and_staged(ws: GitWorkspace) -> None:
    tree = ws.head_tree()
    assert ws.is_clean_at(tree)
    assert not ws.is_clean_at("0" * 40)
    (ws.path / "untracked.txt").write_text("x")
    assert not ws.is_clean_at(tree)
    (ws.path / "untracked.txt").unlink()
    (ws.path / "debug.log").write_text("ignored files do not count")
    assert ws.is_clean_at(tree)
    (ws.path / "README.md").write_text("edited\n")
    assert not ws.is_clean_at(tree)


def test_apply_patch_round_trip_and_failure(tmp_path: Path, ws: GitWorkspace, repo: tuple[Path, str]) -> None:
    path, sha = repo
    (ws.path / "README.md").write_text("changed\n")
    (ws.path / "bin.dat").write_bytes(BINARY)
    change = ws.current_change()
    other = GitWorkspace.create(tmp_path / "other", str(path), sha)
    other.apply_patch(b"")  # no-op
    other.apply_patch(change.patch)
    assert worktree_tree(other.path) == change.tree
    with pytest.raises(WorkspaceError, match="git apply failed"):
        other.apply_patch(change.patch)  # already applied: does not apply again
    plain = plain_clone(path, tmp_path / "plain", sha)
    run_git(plain, "apply", input=change.patch)
    assert worktree_tree(plain) == change.tree


def test_same_size_edit_right_after_checkout_is_seen(ws: GitWorkspace) -> None:
    # Racy-git: an edit in the same second as the checkout, keeping the size, must not be missed.
    readme = ws.path / "README.md"
    data = readme.read_bytes()
    readme.write_bytes(data.replace(b"line 2", b"LINE 2"))
    assert ws.current_change().changed_files == ("README.md",)
    assert not ws.is_clean_at(ws.head_tree())


def test_changed_files_named_like_status_letters(ws: GitWorkspace) -> None:
    for name in ("M", "R100", "A"):
        (ws.path / name).write_text(name)
    os.rename(ws.path / "src" / "util.py", ws.path / "D")
    assert ws.current_change().changed_files == ("A", "D", "M", "R100", "src/util.py")


def test_delete_everything_and_back(tmp_path: Path, ws: GitWorkspace, repo: tuple[Path, str]) -> None:
    for child in ws.path.iterdir():
        if child.name != ".git":
            run_git(ws.path, "rm", "-rq", "--cached", child.name)
    for child in ws.path.iterdir():
        if child.name != ".git":
            (shutil.rmtree if child.is_dir() else os.unlink)(child)
    change = ws.current_change()
    assert change.tree == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # the empty tree
    other = GitWorkspace.create(tmp_path / "other", str(repo[0]), repo[1])
    other.apply_patch(change.patch)
    assert other.current_change().tree == change.tree
