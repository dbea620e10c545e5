"""Artifact layout and atomic file writes (DESIGN section 6, "Artifacts").

``<root>/<job id>/patches/steps/step-0000.patch``, ``state/steps/step-0000.json``,
``state/self_heal/attempt-0000-0001.json``, ``logs/step-0000-attempt-0001.log``.
Step indexes are zero-based, attempts one-based, both four digits. Every path is checked to stay
under the job's folder: job ids are validated, but the check is kept here too so that no caller can
build a path that escapes the root.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: starts with a letter or digit: an id is never taken for a command-line option (``-x``) or hidden
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_safe_id(value: str, *, what: str = "id") -> str:
    """Return ``value`` if it is a safe identifier (no separators, not ``.``/``..``)."""
    if not SAFE_ID.match(value) or value in (".", ".."):
        shown = value if len(value) <= 100 else value[:100] + "..."
        raise ValueError(f"{what} {shown!r} must start with a letter or digit and match [A-Za-z0-9._:-]{{1,128}}")
    return value


def atomic_write(path: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    ``durable``: fsync the data before the rename, so that after an OS crash the file is either
    the old one or the whole new one, never torn. Atomicity against a crashed *process* needs no
    fsync (the page cache survives it), so files rebuilt from the store or per attempt (prompts,
    the running-attempt registry, attempt artifacts) pass ``durable=False``; checkpoints keep it.
    Empty data is never torn, so it needs no fsync either, nor a temporary file when ``path`` does
    not exist yet (a no-op step's patch): the file is complete the moment it is created."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not raw and _create_empty(path):
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileNotFoundError:  # the folder is made on first use only (no mkdir call per write)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            if durable and raw:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_empty(path: Path) -> bool:
    """Create ``path`` as an empty file (mode 0600, as `atomic_write`'s temporary files); False if
    it already exists (then it is replaced atomically as usual)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError:
        return False
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _create_empty(path)
    return True


def write_fresh(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` in place (created or truncated, no temporary file, no fsync).

    Only for files that no one reads before they are complete (a prompt file, read by the runtime
    started after it is written) or whose reader takes a partial file for an absent one (the
    running-attempt registry): one created file instead of a temporary file and a rename."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)


def atomic_write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    """Atomically write ``obj`` as pretty, key-sorted JSON (``durable``: see `atomic_write`)."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", durable=durable)


@dataclass(frozen=True)
class JobArtifacts:
    """Paths of one job's artifacts under ``root``."""

    root: Path
    job_id: str

    def __post_init__(self) -> None:
        check_safe_id(self.job_id, what="job id")

    @functools.cached_property
    def _root(self) -> Path:
        return _resolved_root(self.root)  # every path below is still resolved in full

    @functools.cached_property
    def base(self) -> Path:
        return self._inside(self.root / self.job_id)

    def patch_path(self, step_index: int) -> Path:
        return self._inside(self.base / "patches" / "steps" / f"step-{step_index:04d}.patch")

    def attempt_patch_path(self, step_index: int, attempt: int) -> Path:
        """The change a failed attempt left (evidence for the operator; never replayed)."""
        return self._inside(self.base / "patches" / "attempts" / f"step-{step_index:04d}-attempt-{attempt:04d}.patch")

    def step_state_path(self, step_index: int) -> Path:
        return self._inside(self.base / "state" / "steps" / f"step-{step_index:04d}.json")

    def attempt_state_path(self, step_index: int, attempt: int) -> Path:
        return self._inside(
            self.base / "state" / "self_heal" / f"attempt-{step_index:04d}-{attempt:04d}.json"
        )

    def log_path(self, step_index: int, attempt: int) -> Path:
        return self._inside(self.base / "logs" / f"step-{step_index:04d}-attempt-{attempt:04d}.log")

    def history_path(self, name: str) -> Path:
        """A file under ``history/`` (superseded checkpoints, replay evidence)."""
        check_safe_id(name, what="artifact name")
        return self._inside(self.base / "history" / name)

    def iter_files(self) -> Iterator[Path]:
        """Every artifact file of the job, sorted, relative paths resolvable against ``base``."""
        if not self.base.exists():
            return iter(())
        return iter(sorted(p for p in self.base.rglob("*") if p.is_file() and not p.name.startswith(".")))

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not _under(resolved, self._root):
            # the root's resolution is cached per process: check against a fresh one before
            # refusing, so that a root repointed since then gives the answer it always gave
            root = _resolved_root(self.root, fresh=True)
            if not _under(resolved, root):
                raise ValueError(f"artifact path {path} escapes {root}")
        return path


#: the artifact root's resolution, per root, in this process: one ``realpath`` of the root per
#: process instead of one per `JobArtifacts` (several per step); every path under it is still
#: resolved in full on each call, and a miss is checked again against a fresh resolution
_ROOTS: dict[Path, Path] = {}


def _resolved_root(root: Path, *, fresh: bool = False) -> Path:
    resolved = None if fresh else _ROOTS.get(root)
    if resolved is None:
        resolved = _ROOTS[root] = root.resolve()
    return resolved


def _under(resolved: Path, root: Path) -> bool:
    """``resolved`` is ``root`` or below it (both resolved): ``root in resolved.parents`` without
    building the parents (their ``parts`` prefix, compared as `PurePath` equality compares)."""
    parts = root.parts
    return resolved.parts[: len(parts)] == parts
