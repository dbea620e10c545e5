"""Worker app for the kill-point tests: the ready app, with the pool child SIGKILLing itself once
right after a chosen write of a successful step, as a real crash would. The test arms a point by
writing its name to ``$KILLPOINT_DIR/armed``; the child that reaches that point renames the file to
``fired`` (atomic: only one child ever wins it) and dies, so the worker's next pool child runs
normally and one worker serves the kill points one after another."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Any

from celery.canvas import Signature

from celery_selfheal.app import app, selfheal  # noqa: F401 - the worker's app
from celery_selfheal.cluster.leases import AttemptLease
from celery_selfheal.steps import finish
from celery_selfheal.store.sqlite import SQLiteStore
from celery_selfheal.workspace import checkpoints
from celery_selfheal.workspace.git import GitWorkspace

DIR = Path(os.environ.get("KILLPOINT_DIR", "/nonexistent"))
# billiard holds a job whose child died for worker_lost_wait (10 s) before it fails it with
# WorkerLostError; until then the job blocks a pool slot and a warm shutdown waits for it. The lease
# sweeper, not that error, recovers the step: 1 s keeps one worker quick across all the points.
app.conf.worker_lost_wait = 1.0


def _die_once(point: str) -> None:
    armed = DIR / "armed"
    try:
        if armed.read_text() != point:
            return
        armed.rename(DIR / "fired")
    except FileNotFoundError:  # nothing armed, or another child fired it first
        return
    if os.environ.get("KILLPOINT_WHOLE_WORKER"):  # the whole worker (its process group), as a lost host
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _after(point: str, real: Any, when: Any = lambda *a, **k: True) -> Any:
    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        if when(*args, **kwargs):
            _die_once(point)
        return out

    return wrapper


def _is_patch(path: Any, *_: Any, **__: Any) -> bool:
    return str(path).endswith(".patch") and "patches/steps" in str(path)


def _succeeded(*args: Any, **kwargs: Any) -> bool:
    return (args[5] if len(args) > 5 else kwargs.get("changes", {})).get("status") == "succeeded"


checkpoints.atomic_write = _after("patch", checkpoints.atomic_write, _is_patch)  # type: ignore[assignment]
checkpoints.atomic_write_json = _after("meta", checkpoints.atomic_write_json)  # type: ignore[assignment]
GitWorkspace.commit_change = _after("commit", GitWorkspace.commit_change)  # type: ignore[method-assign]
SQLiteStore.transition_attempt = _after("attempt", SQLiteStore.transition_attempt,  # type: ignore[method-assign]
                                        _succeeded)
finish.update_step = _after("step", finish.update_step,  # type: ignore[assignment]
                            lambda *a, **k: k.get("status") == "succeeded")


def _writes_success(*args: Any, **kwargs: Any) -> bool:
    attempt = kwargs.get("attempt")
    return attempt is not None and attempt.changes.get("status") == "succeeded"


# the usual path records the checkpoint, the attempt and the step succeeded in one store write: both
# points are after it
SQLiteStore.write_job = _after("attempt", _after("step", SQLiteStore.write_job, _writes_success),  # type: ignore[method-assign]
                               _writes_success)
# after the step task released the lease of a succeeded step (once Celery sent the chain's next step)
AttemptLease.release = _after("released", AttemptLease.release)  # type: ignore[method-assign]


def _before(point: str, real: Any) -> Any:
    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _die_once(point)
        return real(*args, **kwargs)

    return wrapper


# a succeeded step recorded, its task returned, and Celery about to send the chain's next step: the
# only message a pool child sends after a successful step of this two-step job
Signature.apply_async = _before("chain", Signature.apply_async)  # type: ignore[method-assign]
