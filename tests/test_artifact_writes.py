"""`artifacts.atomic_write` and `artifacts.write_fresh` on a real file system."""

from __future__ import annotations

from pathlib import Path

from celery_selfheal.artifacts import atomic_write, write_fresh


def test_atomic_write_makes_missing_folders_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "f.json"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temporary file left


def test_atomic_write_of_empty_data(tmp_path: Path) -> None:
    new = tmp_path / "p" / "step-0000.patch"
    atomic_write(new, b"")  # created directly: an empty file is complete when it exists
    assert new.read_bytes() == b"" and (new.stat().st_mode & 0o777) == 0o600
    old = tmp_path / "old.patch"
    old.write_bytes(b"leftover")
    atomic_write(old, b"")  # an existing file is still replaced atomically
    assert old.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.patch", "p"]


def test_write_fresh_creates_and_truncates(tmp_path: Path) -> None:
    path = tmp_path / "run" / "prompts" / "x.txt"
    write_fresh(path, "a longer first text")
    write_fresh(path, b"short")
    assert path.read_bytes() == b"short" and (path.stat().st_mode & 0o777) == 0o600
