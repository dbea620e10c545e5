"""Running the git CLI for celery-selfheal: always as a list of arguments (never a shell), with a
fixed set of ``-c`` overrides (no hooks, no fsmonitor, no autocrlf, no gpg, no auto-gc) and, for
work on a workspace, without the user's global and system configuration, so that a patch or a tree
hash never depends on who runs the worker. Reading the user's baseline repository (`resolve.resolve_ref`,
the clone) keeps the user's configuration: credentials, ``safe.directory``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from celery_selfheal.errors import WorkspaceError

BASE_REF = "refs/selfheal/base"
IDENTITY = {
    "GIT_AUTHOR_NAME": "celery-selfheal",
    "GIT_AUTHOR_EMAIL": "selfheal@localhost",
    "GIT_COMMITTER_NAME": "celery-selfheal",
    "GIT_COMMITTER_EMAIL": "selfheal@localhost",
    # Fixed dates make a checkpoint commit reproducible: a replay rebuilds the very same commit ids.
    "GIT_AUTHOR_DATE": "946684800 +0000",
    "GIT_COMMITTER_DATE": "946684800 +0000",
}
OVERRIDES = (
    "core.hooksPath=/dev/null", "core.fsmonitor=false", "core.autocrlf=false", "commit.gpgSign=false",
    "gc.auto=0", "maintenance.auto=false", "advice.detachedHead=false",
)
_CONFIG_ARGS = tuple(arg for kv in OVERRIDES for arg in ("-c", kv))
# Environment variables that point git somewhere else (or carry credentials/proxies, which we keep).
_KEEP_GIT_ENV = ("GIT_SSH", "GIT_ASKPASS", "GIT_SSL", "GIT_HTTP", "GIT_PROXY", "GIT_TRACE", "GIT_CURL")
NETWORK_TIMEOUT = 600.0
APPLY_ARGS = ("--binary", "--whitespace=nowarn", "-")
DIFF_ARGS = ("-r", "--full-index", "--binary", "-M", "--no-color", "--no-ext-diff", "--no-textconv")


def _env(isolated: bool, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k.startswith(_KEEP_GIT_ENV)}
    env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for a password on a worker
    if isolated:
        env["GIT_CONFIG_NOSYSTEM"] = "1"
        env["GIT_CONFIG_GLOBAL"] = os.devnull
    env.update(extra or {})
    return env


def _one_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    text = " | ".join(lines) or "no message"
    return text if len(text) <= 600 else text[:600] + "..."


def git(
    args: Sequence[str], *, cwd: Path | str | None = None, input: bytes | None = None,
    env: Mapping[str, str] | None = None, isolated: bool = True, timeout: float | None = None,
) -> bytes:
    """Run ``git args`` and return stdout; WorkspaceError with git's message when it fails."""
    try:
        proc = subprocess.run(
            ["git", *_CONFIG_ARGS, *args], cwd=cwd, input=input, capture_output=True,
            stdin=subprocess.DEVNULL if input is None else None, env=_env(isolated, env), timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise WorkspaceError(f"git {args[0]} timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise WorkspaceError(f"cannot run git: {exc}") from exc
    if proc.returncode != 0:
        raise WorkspaceError(f"git {args[0]} failed: {_one_line(proc.stderr)}")
    return proc.stdout
