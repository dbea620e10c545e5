"""Bringing a stale workspace forward instead of cloning the repository again.

When a job's steps move between workers, a worker often still holds the job's workspace as one of
its earlier steps left it. If that workspace is a clean work tree at an earlier checkpoint's tree
(HEAD and the base there; nothing staged, changed or untracked), the later checkpoints' patches are
applied to it and committed one by one, each checked as replay checks it (its sha256, the tree
before, the tree after), with the same commit messages and fixed identity, so the commits are the
ones a replay makes. The step then runs there without a new clone (for a remote repository, a clone
over the network for every change of worker). Files that ``.gitignore`` excludes stay as that earlier
step left them, as they do when a step runs where the previous one ran (a replay has none: they do
not travel, `checkpoints`). Anything else (more than `MAX_BEHIND` checkpoints
behind too), or any failed check, and the caller rebuilds the workspace from scratch with
`checkpoints.replay`, which replaces what is there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from celery_selfheal.artifacts import JobArtifacts
from celery_selfheal.errors import ReplayError, WorkspaceError
from celery_selfheal.workspace.checkpoints import checkpoint_message, verify_checkpoint
from celery_selfheal.workspace.git import GitWorkspace

#: the most checkpoints a workspace is brought forward by: each costs a ``git apply`` and a commit
#: (about 40 ms on a 320-file repository here), and from about nine on a replay, which applies the
#: patches in memory, is as fast for a local repository (`bench/bench_replay.py`)
MAX_BEHIND = 8


def steps_behind(trees: Sequence[Any], head: str) -> int | None:
    """How many checkpoints a workspace at tree ``head`` lacks, given ``trees``: the baseline's tree
    then each checkpoint's ``treeAfter``, in order. None if ``head`` is none of them but the last
    (a workspace at the last one needs nothing; `checkpoints.matching_workspace` takes it). The
    latest match wins: a step that undid an earlier one gives a tree twice."""
    for done in range(len(trees) - 2, -1, -1):
        if trees[done] == head:
            return len(trees) - 1 - done
    return None


def catch_up(path: Path, checkpoints: Sequence[Mapping[str, Any]], baseline_sha: str,
             arts: JobArtifacts) -> GitWorkspace | None:
    """The workspace at ``path`` brought forward to the last of ``checkpoints`` (see the module
    docstring), or None when it cannot be: the caller then replays."""
    try:
        ws = GitWorkspace(Path(path))
        if not ws.git_dir.is_dir():  # never let git find an enclosing repository instead
            return None
        head = ws.head_tree()
        trees = [ws.rev(f"{baseline_sha}^{{tree}}"), *(c.get("treeAfter") for c in checkpoints)]
        behind = steps_behind(trees, head)
        if behind is None or behind > MAX_BEHIND or ws.base_tree() != head or not ws.is_clean_at(head):
            return None
        tree = head
        for meta in checkpoints[len(checkpoints) - behind:]:
            patch = verify_checkpoint(arts, meta)
            if meta.get("treeBefore") not in (None, tree):
                return None
            ws.apply_patch(patch)
            tree = ws.commit_change(checkpoint_message(meta))
            if tree != meta.get("treeAfter"):
                return None
        return ws
    except (WorkspaceError, ReplayError, OSError):
        return None
