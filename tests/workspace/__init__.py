"""Helpers for the workspace tests: real git repositories built with the git CLI.

They call git directly (not ``celery_selfheal.workspace.git``) so that expectations are computed
independently of the code under test.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}

# A small binary file: NUL bytes and invalid UTF-8, so git treats it as binary.
BINARY = bytes(range(256)) * 4


def run_git(cwd: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> str:
    """Run plain git in ``cwd``; return stdout (stripped); fail loudly."""
    proc = subprocess.run(
        ["git", "-c", "core.autocrlf=false", *args], cwd=cwd, input=input, capture_output=True,
        env={**GIT_ENV, **(env or {})}, check=False,
    )
    assert proc.returncode == 0, f"git {args} failed: {proc.stderr.decode()}"
    return proc.stdout.decode("utf-8", "replace").strip()


def make_repo(path: Path) -> str:
    """A baseline repository with text, binary, executable, ignored and oddly named files; its sha."""
    path.mkdir(parents=True)
    run_git(path, "init", "-q", "-b", "main")
    files = {
        "README.md": b"# demo\n\nline 2\nline 3\n",
        "src/app.py": b"def main():\n    return 1\n" + b"".join(b"# filler %d\n" % i for i in range(30)),
        "src/util.py": b"X = 1\n",
        "assets/logo.bin": BINARY,
        "docs/spaced name.txt": b"spaces\n",
        "docs/\u00fcn\u00efc\u00f6de.txt": b"unicode\n",
        ".gitignore": b"build/\n*.log\n",
    }
    for name, data in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    script = path / "tools" / "run.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho run\n")
    script.chmod(0o755)
    run_git(path, "add", "-A")
    run_git(path, "commit", "-q", "-m", "baseline")
    run_git(path, "tag", "v1")
    return run_git(path, "rev-parse", "HEAD")


def worktree_tree(path: Path) -> str:
    """Tree sha of the work tree at ``path`` (gitignore respected), via a throwaway index."""
    fd, index = tempfile.mkstemp(prefix="test-index-")
    os.close(fd)
    os.unlink(index)
    env = {"GIT_INDEX_FILE": index}
    try:
        run_git(path, "read-tree", "HEAD", env=env)
        run_git(path, "add", "-A", env=env)
        return run_git(path, "write-tree", env=env)
    finally:
        if os.path.exists(index):
            os.unlink(index)


def plain_clone(repo: Path, dest: Path, sha: str) -> Path:
    """A plain clone of ``repo`` checked out (detached) at ``sha``."""
    run_git(repo.parent, "clone", "-q", str(repo), str(dest))
    run_git(dest, "checkout", "-q", "--detach", sha)
    return dest
