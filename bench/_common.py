"""Helpers shared by the benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(cwd: Path, *args: str) -> None:
    """Run git with a throwaway identity."""
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=cwd, check=True,
                   capture_output=True)


def make_baseline_repo(tmp: Path) -> Path:
    """A one-commit repository on ``main`` under ``tmp/repo``: the baseline of the bench jobs."""
    repo = tmp / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("bench\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    return repo
