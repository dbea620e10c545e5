"""Checkpoints after successful steps and verified replay of them (REQ-05, REQ-07).

A checkpoint is the step's patch (``patches/steps/step-NNNN.patch``: the exact bytes of a binary
``git diff --full-index`` from the tree before the step to the tree after it) plus its metadata
(``state/steps/step-NNNN.json``). The patch is written first, the JSON last, each atomically: a
checkpoint whose JSON exists is complete. Every patch can also be applied with plain ``git apply``,
in order, on a clone of the baseline commit.

What travels from step to step, and what does not:

* new, modified, deleted, renamed and binary files, symlinks, and the executable bit travel;
* files excluded by ``.gitignore`` (the baseline's, or one a step wrote) do **not** travel: they are
  not part of the step's change, so a rebuilt workspace lacks them (build outputs, caches, local
  env files). Steps that need them must recreate them. A file force-added to the index by the
  runtime (``git add -f``) is tracked and does travel;
* empty directories, timestamps, owners and other permission bits do not travel (git keeps none);
* a nested git repository is recorded as a gitlink (its commit id), not its contents.

Replay builds a new workspace next to the old one, checks every patch's sha256 and the tree after
every step, and only then swaps it in; on any failure the half-built copy is removed and the
original workspace is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery_selfheal.artifacts import JobArtifacts, atomic_write, atomic_write_json
from celery_selfheal.errors import ReplayError, WorkspaceError
from celery_selfheal.workspace import libgit
from celery_selfheal.workspace.git import Change, GitWorkspace
from celery_selfheal.workspace.patch_stack import PatchStack


def checkpoint_message(meta: Mapping[str, Any]) -> str:
    """The commit message of a checkpoint; replay uses the same one, so commit ids match too."""
    return (f"selfheal checkpoint: step {meta['stepIndex']} ({meta['stepId']})\n\n"
            f"epoch {meta.get('epoch', 0)}, attempt {meta.get('attempt', 0)}\n")


def _label(meta: Mapping[str, Any]) -> str:
    return f"step {meta.get('stepIndex')} (id {meta.get('stepId')!r})"


def _rel(arts: JobArtifacts, path: Path) -> str:
    return path.relative_to(arts.base).as_posix()


def _archive_existing(arts: JobArtifacts, step_index: int, state: Path, patch: Path) -> None:
    """Move an earlier checkpoint of this step into ``history/`` (JSON first: then it is absent);
    ``state`` and ``patch``: the step's `JobArtifacts` paths, as the caller just checked them."""
    if not state.exists():
        return  # a patch without JSON is a leftover of an interrupted write: overwritten below
    try:
        old_epoch = int(json.loads(state.read_text(encoding="utf-8")).get("epoch", 0))
        stem = f"step-{step_index:04d}-epoch-{old_epoch:04d}"
    except (ValueError, TypeError, AttributeError):
        stem = f"step-{step_index:04d}-epoch-unknown"
    name, n = stem, 1
    while arts.history_path(f"{name}.json").exists() or arts.history_path(f"{name}.patch").exists():
        n += 1
        name = f"{stem}-{n}"
    target = arts.history_path(f"{name}.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(state, target)
    if patch.exists():
        os.replace(patch, arts.history_path(f"{name}.patch"))


def write_checkpoint(
    ws: GitWorkspace, arts: JobArtifacts, *, step_id: str, step_index: int, attempt: int,
    summary: str, epoch: int = 0, change: Change | None = None,
) -> dict[str, Any]:
    """Record the step's full change as a checkpoint, then commit it in the workspace.

    ``summary`` must already be scrubbed. ``change`` is the change just measured (the attempt's),
    saving a second snapshot; the commit still stages the work tree and must find the same tree.
    Returns the metadata written to ``step_state_path``.
    """
    if change is None:
        change = ws.current_change()
    patch_path, state_path = arts.patch_path(step_index), arts.step_state_path(step_index)
    meta: dict[str, Any] = {
        "stepId": step_id,
        "stepIndex": step_index,
        "attempt": attempt,
        "epoch": epoch,
        "diffHash": change.diff_hash,
        "patchSha256": hashlib.sha256(change.patch).hexdigest(),
        "patchPath": _rel(arts, patch_path),
        "patchBytes": len(change.patch),
        "changedFiles": list(change.changed_files),
        "summary": summary,
        "finishedAt": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "treeBefore": change.base_tree,
        "treeAfter": change.tree,
    }
    _archive_existing(arts, step_index, state_path, patch_path)
    # Durable: the patch bytes (fsynced before the caller records the checkpoint in the store).
    # The JSON is a copy of the metadata the store keeps, and replay reads the store's: atomic only.
    atomic_write(patch_path, change.patch)
    atomic_write_json(state_path, meta, durable=False)
    tree = ws.commit_change(checkpoint_message(meta), base=change.base)
    if tree != change.tree:
        # The work tree changed while we recorded it. The checkpoint stays authoritative: the next
        # workspace check sees HEAD differ from treeAfter and rebuilds from the checkpoints.
        raise WorkspaceError(f"{_label(meta)}: work tree changed while checkpointing "
                             f"(recorded {change.tree}, committed {tree})")
    return meta


def reuse_checkpoint(ws: GitWorkspace, arts: JobArtifacts, meta: Mapping[str, Any], change: Change) -> dict[str, Any]:
    """The checkpoint already recorded for this step and epoch (a crash came between recording it and
    marking the attempt succeeded): its files are checked against the record and kept as they are,
    never overwritten, so record and files cannot disagree. If the rerun produced the same tree the
    workspace is committed there; otherwise the next step's workspace check rebuilds it by replay."""
    verify_checkpoint(arts, meta)
    if change.tree == meta.get("treeAfter") and change.base_tree == meta.get("treeBefore"):
        ws.commit_change(checkpoint_message(meta), base=change.base)
    return dict(meta)


def verify_checkpoint(arts: JobArtifacts, meta: Mapping[str, Any]) -> bytes:
    """The checkpoint's patch bytes, after checking them against ``meta['patchSha256']``."""
    index = meta.get("stepIndex")
    expected = meta.get("patchSha256")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0 or not isinstance(expected, str):
        raise ReplayError(f"{_label(meta)}: checkpoint metadata lacks a valid stepIndex/patchSha256",
                          step_index=index if isinstance(index, int) else None)
    path = arts.patch_path(index)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReplayError(f"{_label(meta)}: patch {_rel(arts, path)} is missing",
                          step_index=index, path=str(path)) from None
    except OSError as exc:
        raise ReplayError(f"{_label(meta)}: patch {_rel(arts, path)} cannot be read: {exc}",
                          step_index=index, path=str(path)) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ReplayError(f"{_label(meta)}: patch {_rel(arts, path)} sha256 mismatch "
                          f"(checkpoint says {expected}, file has {actual})",
                          step_index=index, path=str(path))
    return data


def _where(arts: JobArtifacts, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"step_index": meta["stepIndex"], "path": str(arts.patch_path(meta["stepIndex"]))}


def _build(tmp: Path, repo: str, baseline_sha: str, metas: Sequence[Mapping[str, Any]],
           patches: Sequence[bytes], arts: JobArtifacts) -> None:
    try:
        _build_once(tmp, repo, baseline_sha, metas, patches, arts, in_process=True)
    except libgit.Error:
        # libgit2 failed where the CLI cannot take over (its objects were still in memory): start
        # again from an empty directory with the CLI alone.
        for child in tmp.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        _build_once(tmp, repo, baseline_sha, metas, patches, arts, in_process=False)


def _build_once(tmp: Path, repo: str, baseline_sha: str, metas: Sequence[Mapping[str, Any]],
                patches: Sequence[bytes], arts: JobArtifacts, *, in_process: bool) -> None:
    try:
        # nothing to replay (a job's first step): a plain clone checked out at the baseline, without
        # the patch stack's private index and scratch repository, and one ref update instead of two
        ws = GitWorkspace.create(tmp, repo, baseline_sha, checkout=not metas)
    except WorkspaceError as exc:
        raise ReplayError(f"replay: cannot create a workspace at baseline {baseline_sha}: {exc}") from None
    if not metas:
        return
    stack = PatchStack(ws, baseline_sha, in_process=in_process)
    try:
        tree = ws.rev(f"{baseline_sha}^{{tree}}")
        for meta, patch in zip(metas, patches, strict=True):
            index = meta["stepIndex"]
            before = meta.get("treeBefore")
            if before and before != tree:
                raise ReplayError(f"{_label(meta)}: tree before step {index} is {tree}, checkpoint "
                                  f"{_rel(arts, arts.step_state_path(index))} says {before}",
                                  **_where(arts, meta))
            try:
                tree = stack.push(patch, checkpoint_message(meta), expected=meta.get("treeAfter"))
            except WorkspaceError as exc:
                raise ReplayError(f"{_label(meta)}: patch {_rel(arts, arts.patch_path(index))} does not "
                                  f"apply: {exc}", **_where(arts, meta)) from None
            if tree != meta.get("treeAfter"):
                raise ReplayError(f"{_label(meta)}: tree after step {index} is {tree}, checkpoint "
                                  f"{_rel(arts, arts.step_state_path(index))} says {meta.get('treeAfter')}",
                                  **_where(arts, meta))
        stack.finish()
    finally:
        stack.close()


def _swap(new: Path, path: Path, keep_old: bool) -> None:
    """Put ``new`` at ``path``; the old one is moved aside first and removed once the swap worked."""
    old: Path | None = None
    if path.exists() or path.is_symlink():
        if keep_old:
            n = 1
            while path.with_name(f"{path.name}.old-{n}").exists():
                n += 1
            old = path.with_name(f"{path.name}.old-{n}")
            os.rename(path, old)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    try:
        os.rename(new, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)  # put the old workspace back: path stays as it was
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_prefix(path: Path) -> str:
    # '+' cannot occur in a job id (artifacts.SAFE_ID), so these names never collide with a workspace.
    return f".{path.name}.replay+"


def _remove_stale_builds(path: Path, max_age: float = 3600.0) -> None:
    """Remove half-built replays left by a killed process (e.g. a Celery hard time limit)."""
    now, prefix = time.time(), _build_prefix(path)
    try:  # a prefix test on the listing, not a glob: the folder holds every job's workspace
        with os.scandir(path.parent) as entries:
            builds = [entry.path for entry in entries if entry.name.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError, PermissionError):  # what glob found there: nothing
        return
    for stale in builds:
        with contextlib.suppress(OSError):
            if now - os.stat(stale).st_mtime > max_age:
                shutil.rmtree(stale, ignore_errors=True)


def replay(
    path: Path, *, repo: str, baseline_sha: str, checkpoints: Sequence[Mapping[str, Any]],
    arts: JobArtifacts, keep_old: bool = True,
) -> GitWorkspace:
    """Rebuild the workspace at ``path`` from ``baseline_sha`` plus ``checkpoints`` (in order).

    Every patch is verified against its sha256 before any git work starts; every step's resulting
    tree is checked against ``treeAfter``. The new workspace is built in a hidden sibling directory
    and swapped in only when all checks passed. With ``keep_old`` the old workspace is renamed to
    ``<path>.old-<n>`` during the swap (and put back if the swap fails), then removed; without it,
    it is removed before the swap. Any failure raises ReplayError naming the step and the file and
    leaves ``path`` untouched.
    """
    path = Path(path)
    metas = list(checkpoints)
    patches = [verify_checkpoint(arts, meta) for meta in metas]
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_build_prefix(path)))
    try:
        _build(tmp, repo, baseline_sha, metas, patches, arts)
        _swap(tmp, path, keep_old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return GitWorkspace.open(path)


def workspace_matches(path: Path, checkpoints: Sequence[Mapping[str, Any]], baseline_sha: str) -> bool:
    """True if ``path`` is a clean workspace at the last checkpoint's tree (the baseline's if none)."""
    return matching_workspace(path, checkpoints, baseline_sha) is not None


def matching_workspace(path: Path, checkpoints: Sequence[Mapping[str, Any]],
                       baseline_sha: str) -> GitWorkspace | None:
    """The workspace at ``path`` if `workspace_matches`, else None: the instance that checked it, so
    the step goes on with the repository it opened (not opened again)."""
    try:
        ws = GitWorkspace(Path(path))  # not open(): its rev-parse is redundant with is_clean_at
        if not ws.git_dir.is_dir():  # never let git find an enclosing repository instead
            return None
        expected = checkpoints[-1].get("treeAfter") if checkpoints else ws.rev(f"{baseline_sha}^{{tree}}")
    except (WorkspaceError, OSError):
        return None
    return ws if isinstance(expected, str) and ws.is_clean_at(expected) else None
