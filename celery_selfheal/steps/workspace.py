"""Choosing the workspace an attempt runs in: reuse it only when it provably matches the checkpoints.

A first attempt (or a queue retry) needs a clean work tree at the last checkpoint's tree; a soft
reset (or an operator's retry_step) keeps the previous attempt's changes but still needs HEAD at that
tree; a hard reset always rebuilds. A clean workspace that an earlier step of the job left on this
worker is brought forward by the later checkpoints' verified patches (`workspace.catch_up`).
Anything else (missing, crashed, hand-edited) is rebuilt by verified replay, never silently used.
"""

from __future__ import annotations

from typing import Any

from celery_selfheal.context import Context
from celery_selfheal.core.job_state import JobState
from celery_selfheal.core.model import Strategy
from celery_selfheal.errors import ReplayError, WorkspaceError
from celery_selfheal.workspace.catch_up import catch_up
from celery_selfheal.workspace.checkpoints import matching_workspace, replay
from celery_selfheal.workspace.git import GitWorkspace


def checkpoints_before(ctx: Context, job_id: str, step_index: int,
                       active: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The active checkpoints of steps ``0..step_index-1``; all of them must be there. ``active``:
    the job's active checkpoints as the caller read them under the job's lease (else read now)."""
    cps = [c for c in (ctx.store.list_checkpoints(job_id) if active is None else active) if c["stepIndex"] < step_index]
    have = {c["stepIndex"] for c in cps}
    for i in range(step_index):
        if i not in have:
            raise ReplayError(f"step {i}: checkpoint missing from the store, cannot rebuild the workspace",
                              step_index=i)
    return sorted(cps, key=lambda c: c["stepIndex"])


def prepare_workspace(ctx: Context, job: JobState, step_index: int, strategy: str,
                      active: list[dict[str, Any]] | None = None) -> GitWorkspace:
    """A workspace at the tree after step ``step_index - 1``, rebuilt if needed (``active``: as in
    `checkpoints_before`)."""
    job_id = job.job_id
    baseline = str(job.get("baselineSha"))
    path = ctx.workspace_path(job_id)
    cps = checkpoints_before(ctx, job_id, step_index, active)
    if strategy != Strategy.HARD_RESET.value and (path / ".git").exists():
        if strategy in (Strategy.SOFT_RESET.value, Strategy.OPERATOR_REQUEST.value):
            try:
                ws = GitWorkspace.open(path)
                # base_tree: the last checkpoint's tree, even if the runtime made commits of its own
                if ws.base_tree() == (cps[-1]["treeAfter"] if cps else ws.rev(f"{baseline}^{{tree}}")):
                    return ws
            except WorkspaceError:
                pass  # its repository was destroyed or replaced: rebuilt from the checkpoints below
        elif (kept := matching_workspace(path, cps, baseline)) is not None:
            return kept  # the instance that checked it: its repository stays open for the step
        elif (caught := catch_up(path, cps, baseline, ctx.artifacts(job_id))) is not None:
            return caught  # left here some steps ago, clean: brought forward, no new clone
    return replay(path, repo=str(job.get("repo")), baseline_sha=baseline, checkpoints=cps,
                  arts=ctx.artifacts(job_id))
