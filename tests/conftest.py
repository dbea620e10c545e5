"""Shared fixtures: real git repositories, real Redis (tests.redis_server), real prefork workers."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings

T = TypeVar("T")

pytest_plugins = ["tests.redis_server", "tests.rabbitmq_server"]

# Hypothesis's per-example deadline and its too_slow health check time the machine, not the code: on
# a busy machine (pytest-xdist processes, other test runs) they fail properties that hold. Tests keep
# their own max_examples; their settings only override what they name.
settings.register_profile("selfheal", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("selfheal")

ROOT = Path(__file__).resolve().parent.parent


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_for(pred: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``pred`` until it is truthy and return its value (a condition, never a guessed delay)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` with a fixed identity; returns stdout."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="session", autouse=True)
def _require_git() -> None:
    import shutil

    if shutil.which("git") is None:
        if _in_ci():
            pytest.fail("git is not installed; CI must run the git tests", pytrace=False)
        pytest.skip("git is not installed")


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    """Undo what a test did to ``os.environ``: the CLI run in-process (click's CliRunner) exports its
    settings there for the workers it starts, and the next test in this process must not inherit
    another state dir's store or broker (which test runs next depends on pytest-xdist)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """``make_repo(files={...})``: a real git repo with one commit on ``main``."""

    def make(name: str = "baseline", files: dict[str, str] | None = None) -> Path:
        repo = tmp_path / name
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        for rel, text in (files or {"README.md": "# baseline\n", "src/app.py": "print('hi')\n"}).items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "baseline")
        return repo

    return make


# the engine in-process (tests/engine.py), for the unit tests of jobs/, steps/ and control/
from tests.engine import engine  # noqa: E402,F401
