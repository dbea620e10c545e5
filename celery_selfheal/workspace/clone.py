"""Making a workspace: a clone of the job's baseline repository, detached at the baseline commit.

A local repository is cloned with hard-linked objects (git falls back to copying across file
systems): never shared through alternates or a worktree, so nothing a runtime does in the workspace
can reach the user's repository, and nothing the user does there (``gc --prune``) can break it.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from celery_selfheal.errors import WorkspaceError
from celery_selfheal.workspace import libgit
from celery_selfheal.workspace.gitcmd import BASE_REF, IDENTITY, NETWORK_TIMEOUT, OVERRIDES, git
from celery_selfheal.workspace.resolve import is_local

if TYPE_CHECKING:
    from celery_selfheal.workspace.git import GitWorkspace


def create(ws: GitWorkspace, repo: str, sha: str, *, checkout: bool) -> GitWorkspace:
    """Clone ``repo`` into ``ws.path`` (absent or empty), detached at ``sha``; on any failure the
    path is left as it was (see `GitWorkspace.create`)."""
    path = ws.path
    existed = path.exists()
    if existed and (not path.is_dir() or any(path.iterdir())):
        raise WorkspaceError(f"workspace path {path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _clone(ws, repo, sha, checkout)
        return ws
    except BaseException:  # leave `path` as it was: absent or empty
        if existed:
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _clone(ws: GitWorkspace, repo: str, sha: str, checkout: bool) -> None:
    local = is_local(repo)
    source = str(Path(repo).resolve()) if local else repo
    settings = (*OVERRIDES, f"user.name={IDENTITY['GIT_AUTHOR_NAME']}", f"user.email={IDENTITY['GIT_AUTHOR_EMAIL']}")
    if local and libgit.clone_local(source, ws.path, sha, checkout=checkout,
                                    config=dict(kv.split("=", 1) for kv in settings)):
        _set_base(ws, sha, head=False)
        return
    shutil.rmtree(ws.git_dir, ignore_errors=True)  # what an in-process attempt left
    conf = [arg for kv in settings for arg in ("--config", kv)]
    git(["clone", "--quiet", "--no-checkout", "--template=", *conf, "--", source, str(ws.path)],
        isolated=False, timeout=None if local else NETWORK_TIMEOUT)
    if not ws.has_commit(sha):
        with contextlib.suppress(WorkspaceError):  # a server may serve an unadvertised commit
            ws.git(["fetch", "-q", "--no-tags", "origin", sha], isolated=False, timeout=NETWORK_TIMEOUT)
        if not ws.has_commit(sha):
            raise WorkspaceError(f"commit {sha} not found in {repo}")
    if checkout:
        ws.git(["checkout", "--quiet", "--force", "--detach", sha])
    _set_base(ws, sha, head=not checkout)


def _set_base(ws: GitWorkspace, sha: str, *, head: bool) -> None:
    """Point the base ref (and with ``head`` a detached HEAD) at ``sha``."""
    fast = libgit.open_workspace(ws.path, BASE_REF)
    if fast is not None:
        try:
            fast.set_refs(sha, head=head)
            return
        except libgit.Error:
            pass  # the CLI below does the same
    if head:
        ws.git(["update-ref", "--no-deref", "HEAD", sha])
    ws.git(["update-ref", BASE_REF, sha])
