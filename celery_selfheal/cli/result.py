"""The closing lines of ``run``/``follow``: where the job's result is and how to take it."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

from celery_selfheal.context import Context


def workspace_head(path: Any) -> str | None:
    """The commit the workspace's HEAD is at, or None (no workspace on this host)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--verify", "-q", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def result_lines(ctx: Context, job: dict[str, Any]) -> list[str]:
    """``result: workspace PATH at commit C (N checkpoints)``, the git command that takes that commit
    into the job's repository as branch ``selfheal/JOB``, and the artifact export command."""
    job_id = str(job.get("jobId"))
    ws = ctx.workspace_path(job_id)
    checkpoints = ctx.store.list_checkpoints(job_id)
    head = workspace_head(ws) if ws.is_dir() else None
    lines = []
    if head is None:
        lines.append(f"result: no workspace at {ws} on this host ({len(checkpoints)} checkpoints in the store)")
    else:
        lines.append(f"result: workspace {ws} at commit {head[:12]} ({len(checkpoints)} checkpoints)")
        repo = str(job.get("repo") or job.get("spec", {}).get("repo") or ".")
        branch = f"selfheal/{job_id}"
        lines.append(f"  take it: git -C {shlex.quote(repo)} fetch {shlex.quote(str(ws))} "
                     f"{head}:refs/heads/{branch}")
    lines.append(f"  artifacts: selfheal artifacts {job_id} --export DIR  (in {ctx.artifacts(job_id).base})")
    return lines
