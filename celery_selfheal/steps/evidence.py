"""Evidence of a failed attempt: ``patches/attempts/step-NNNN-attempt-AAAA.patch``.

The change the attempt left, against the tree it started from (the step's base, or for a soft reset
the tree the previous attempt left), binary-safe and ``git apply``-able there. Never replayed: it is
for the operator deciding between retry, hard reset and takeover. A patch cannot be redacted without
breaking it, so one that contains a secret is not written, and the attempt record says why.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from celery_selfheal.artifacts import JobArtifacts, atomic_write
from celery_selfheal.errors import WorkspaceError
from celery_selfheal.workspace.git import Change, GitWorkspace

log = logging.getLogger(__name__)


def write_attempt_patch(arts: JobArtifacts, ws: GitWorkspace, change: Change, *, step_index: int, attempt: int,
                        start_tree: str | None, secret_in: Callable[[bytes], str | None],
                        redact: Callable[[str], str]) -> dict[str, Any]:
    """Write the failed attempt's patch; returns the attempt-record fields that describe it
    (``attemptPatch`` and its sha256, or ``attemptPatchAbsent`` with the reason), or {} when the
    attempt changed nothing or its change is unknown (a lost worker's workspace)."""
    if not change.tree:
        return {}
    start = start_tree or change.base_tree
    if change.tree == start:
        return {}
    try:
        patch = change.patch if start == change.base_tree else ws.diff(start, change.tree)[0]
    except WorkspaceError as exc:  # the start tree is gone (workspace rebuilt): say so, keep going
        log.warning("celery-selfheal: no patch for attempt %s of step %s: %s", attempt, step_index, exc)
        return {"attemptPatchAbsent": redact(f"could not diff against the attempt's start tree: {exc}")}
    leak = secret_in(patch)
    if leak is not None:
        return {"attemptPatchAbsent": redact(f"the change contains a secret in {leak}; not written")}
    path = arts.attempt_patch_path(step_index, attempt)
    atomic_write(path, patch)
    return {"attemptPatch": str(path.relative_to(arts.base)), "attemptPatchSha256": hashlib.sha256(patch).hexdigest(),
            "attemptPatchBase": start}
