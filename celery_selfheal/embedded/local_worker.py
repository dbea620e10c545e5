"""The embedded default's local worker: is one running on this state dir, and start one if not.

A worker of the ready app holds an exclusive ``flock`` on ``<run dir>/workers/<name>.lock`` for its
lifetime (taken in ``worker_init``); the CLI tries each lock without blocking to see whether anyone is
alive. No ping over the broker, no pid files that go stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from celery_selfheal.settings import Settings

_held: list[IO[bytes]] = []
#: hostname prefix of the workers the CLI starts (the only ones it ever stops)
LOCAL_PREFIX = "selfheal-local-"


def lock_dir(settings: Settings) -> Path:
    return settings.run_dir / "workers"


def _lock_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-@" else "_" for c in name)[:120] + ".lock"


def hold_presence(settings: Settings, name: str) -> None:
    """Called in the worker MainProcess: take and keep this worker's presence lock."""
    folder = lock_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / _lock_name(name), "wb")  # noqa: SIM115 - kept open for the worker's lifetime
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(str(os.getpid()).encode())
    fh.flush()
    _held.append(fh)


def _lock_held(path: Path) -> bool:
    """True if some process holds the presence lock ``path`` (a live worker)."""
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def worker_running(settings: Settings) -> bool:
    """True if some worker holds a presence lock under this state dir."""
    folder = lock_dir(settings)
    return folder.exists() and any(_lock_held(path) for path in folder.glob("*.lock"))


def other_workers_alive(settings: Settings, name: str) -> bool:
    """True if a worker other than ``name`` (this one) holds a presence lock on this state dir."""
    folder = lock_dir(settings)
    return folder.exists() and any(_lock_held(path) for path in folder.glob("*.lock")
                                   if path.name != _lock_name(name))


class LocalWorker:
    """A prefork worker of the ready app (or ``app_module``) started by the CLI for the embedded default."""

    def __init__(self, settings: Settings, *, concurrency: int = 2, loglevel: str = "WARNING",
                 app_module: str = "celery_selfheal.app") -> None:
        self.settings = settings
        self.app_module = app_module
        self.concurrency = concurrency
        self.loglevel = loglevel
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = settings.run_dir / "worker.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start the worker and wait until it holds its presence lock."""
        self.settings.ensure_dirs()
        env = {**os.environ, **self.settings.as_env()}
        argv = [sys.executable, "-m", "celery", "-A", self.app_module, "worker", "--pool", "prefork",
                "--concurrency", str(self.concurrency), "--loglevel", self.loglevel,
                "--hostname", f"{LOCAL_PREFIX}{os.getpid()}-{time.monotonic_ns() % 10**6}@%h",
                "--without-mingle", "--without-gossip"]
        log = open(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not worker_running(self.settings):
            if self.proc.poll() is not None:
                raise RuntimeError(f"local worker exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"local worker did not start within {timeout:.0f}s; see {self.log_path}")
            time.sleep(0.05)

    def stop(self, warm: float = 5.0, cold: float = 5.0) -> None:
        """Warm shutdown (TERM); a step still running after ``warm`` seconds gets a cold one (QUIT:
        its unacked message stays for the next worker), then the whole group is KILLed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, warm), (signal.SIGQUIT, cold)):
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self, *, wait: bool = True) -> None:
        """KILL the worker's whole process group at once (a second Ctrl-C)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if wait:
            self.proc.wait()



def local_worker_pids(settings: Settings) -> list[int]:
    """Pids of the live CLI-started local workers on this state dir (from their presence locks)."""
    pids = []
    for path in lock_dir(settings).glob(f"{LOCAL_PREFIX}*.lock"):
        with open(path, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held: alive
                text = fh.read().decode("ascii", "replace").strip()
                if text.isdigit():
                    pids.append(int(text))
                continue
            fcntl.flock(fh, fcntl.LOCK_UN)
    return pids


def stop_local_workers(settings: Settings, timeout: float = 30.0) -> None:
    """Warm-stop every CLI-started local worker of this state dir (not a user's own workers)."""
    pids = local_worker_pids(settings)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while local_worker_pids(settings) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in local_worker_pids(settings):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # started with its own session: pgid == pid


class LocalClients:
    """The CLIs following jobs on one state dir share its local worker; the last one stops it.

    Each holds a shared ``flock`` on ``<run dir>/local-clients.lock`` while it follows. Leaving,
    it drops it and tries the exclusive lock: only the last one gets it, and stops the worker while
    holding it (a CLI arriving meanwhile waits for the stop, then starts a new worker)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        # not under workers/: every lock there is a worker's presence
        self._fh = open(settings.run_dir / "local-clients.lock", "ab")  # noqa: SIM115 - held while following
        fcntl.flock(self._fh, fcntl.LOCK_SH)

    def leave(self, *, stop: bool = True, stopper: Callable[[], None] | None = None) -> bool:
        """Stop sharing; stop the local worker if we were the last (and ``stop``), with ``stopper``
        (default `stop_local_workers`). True if stopped."""
        try:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            if not stop:
                return False
            try:
                fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another CLI still follows on this worker
            if stopper is not None:
                stopper()
            else:
                stop_local_workers(self.settings)
            return True
        finally:
            self._fh.close()
