"""Files the console serves: an attempt's log tail and the job's artifacts, never anything outside
the job's artifact folder (``..``, absolute paths, symlinks anywhere on the way: `NotFound`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from celery_selfheal.api import require_job
from celery_selfheal.context import Context

#: the tail served when the request names none, and the most one request may ask for
DEFAULT_TAIL = 65_536
MAX_TAIL = 4 * 1024 * 1024


class NotFound(Exception):
    """The file does not exist, or the path is not one the console serves (both answer 404)."""


def log_tail(ctx: Context, job_id: str, step_index: int, attempt: int, tail: int = DEFAULT_TAIL) -> str:
    """The last ``tail`` bytes of the attempt's log (scrubbed again: what the console shows is redacted)."""
    require_job(ctx, job_id)
    path = ctx.artifacts(job_id).log_path(step_index, attempt)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - min(max(tail, 0), MAX_TAIL)))
            data = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no log for step {step_index} attempt {attempt} of job {job_id!r}") from None
    while data and data[0] & 0xC0 == 0x80:  # do not start inside a UTF-8 sequence
        data = data[1:]
    return ctx.redactor.redact(data.decode("utf-8", "replace"))


def artifact_file(ctx: Context, job_id: str, rel: str) -> Path:
    """The artifact at ``rel`` under the job's folder, or `NotFound` (also for every unsafe path)."""
    require_job(ctx, job_id)
    base = ctx.artifacts(job_id).base
    parts = PurePosixPath(rel).parts
    if (not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or not parts
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        raise NotFound(f"no artifact {rel!r}")
    current = base
    try:
        if stat.S_ISLNK(os.lstat(base).st_mode):
            raise NotFound(f"no artifact {rel!r}")
        for part in parts:  # lstat each component: a symlink anywhere is refused, not followed
            current = current / part
            if stat.S_ISLNK(os.lstat(current).st_mode):
                raise NotFound(f"no artifact {rel!r}")
        if not stat.S_ISREG(os.lstat(current).st_mode):
            raise NotFound(f"no artifact {rel!r}")
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no artifact {rel!r}") from None
    return current
