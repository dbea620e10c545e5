"""Resolving a job's ``repo`` and ``ref`` to a commit sha at submission (a local path or a URL)."""

from __future__ import annotations

import re
from pathlib import Path

from celery_selfheal.errors import InputError, WorkspaceError
from celery_selfheal.workspace import libgit
from celery_selfheal.workspace.gitcmd import NETWORK_TIMEOUT, git

_HEX_SHA = re.compile(r"^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$")


def is_local(repo: str) -> bool:
    return Path(repo).exists() or not (
        "://" in repo or re.match(r"^[A-Za-z0-9._-]+@[^:/]+:", repo) or re.match(r"^[^/:]{2,}:", repo)
    )


def resolve_ref(repo: str, ref: str) -> str:
    """The commit sha of ``ref`` in ``repo`` (a local path or a URL); InputError naming the job key.

    A local repository is asked with ``rev-parse``; a URL with ``ls-remote`` (branches, tags, HEAD; a
    full hex sha is accepted as is, since a server cannot be asked about unadvertised commits).
    """
    if not repo or repo.startswith("-"):
        raise InputError(f"{repo!r} is not a git repository path or URL", where="job.repo")
    if not ref or ref.startswith("-") or any(c.isspace() for c in ref):
        raise InputError(f"{ref!r} is not a valid git ref", where="job.ref")
    if is_local(repo):
        root = Path(repo).resolve()
        if not root.is_dir():
            raise InputError(f"{repo} does not exist or is not a directory", where="job.repo")
        fast = libgit.resolve_local(root, ref)
        if fast is not None:
            return fast
        try:
            out = git(["rev-parse", "--absolute-git-dir"], cwd=root, isolated=False)
            git_dir: Path | None = Path(out.decode().strip())
        except WorkspaceError:
            git_dir = None
        if git_dir is None or not ((root / ".git").exists() or git_dir == root):
            raise InputError(f"{repo} is not a git repository", where="job.repo")
        try:
            out = git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=root, isolated=False)
        except WorkspaceError:
            raise InputError(f"{ref!r} does not name a commit in {repo}", where="job.ref") from None
        return out.decode().strip()
    try:
        listing = git(["ls-remote", repo, ref, f"{ref}^{{}}"], isolated=False, timeout=NETWORK_TIMEOUT)
    except WorkspaceError as exc:
        raise InputError(f"cannot read {repo}: {exc}", where="job.repo") from None
    found: dict[str, str] = {}
    for line in listing.decode("utf-8", "replace").splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
        if name in found:
            return found[name]
    if _HEX_SHA.match(ref):
        return ref.lower()
    raise InputError(f"{ref!r} is not a branch, tag or full commit sha of {repo}", where="job.ref")
