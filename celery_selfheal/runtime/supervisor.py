"""Run one attempt's runtime under event-driven wall/idle watchdogs (REQ-01) and end its whole
process group on timeout, cancel or shutdown (REQ-04).

One thread, one ``selectors`` loop (`runtime.supervised`) over the child's stdout, stderr, stdin
and a pidfd that becomes readable when the leader exits. The select timeout is the
time to the nearest deadline (wall, last output + idle, next cancel poll), and a wake-up descriptor
(`spec.WakeCheck`: an operator's cancel pushed by the store) is selected on too, so a timeout is noticed
within about a millisecond of its threshold instead of at the next coarse poll. The output-loop
detector (`core.output_loop`) is fed each decoded chunk as it is read, so a loop ends the attempt
(detector ``output_loop``) at the chunk that completes its last repetition. Ending an attempt ends
everything it started, also what left the group (`runtime.containment`); on a clean exit that
costs a look at the few processes forked since the attempt began (`runtime.pid_window`), and the
runtime is started with vfork (no preexec hook) when a guard covers this process's death.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery_selfheal.core.model import Detector
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.containment import MARKER_VAR, Guard, end_attempt, new_marker
from celery_selfheal.runtime.pid_window import PidWindow
from celery_selfheal.runtime.process_group import start_group_child_preexec
from celery_selfheal.runtime.spec import RuntimeResult, RuntimeSpec, WakeCheck
from celery_selfheal.runtime.supervised import TAIL_CHARS, SupervisedRun, close_pipes

__all__ = ["RuntimeResult", "RuntimeSpec", "WakeCheck", "run_runtime"]


def _not_started(log: CappedLog, message: str) -> RuntimeResult:
    # Like a shell: 127 for a command that cannot be run; a one-line reason, no traceback.
    log.write(message + "\n")
    return RuntimeResult(
        exit_code=127, signal=None, detector=Detector.EXIT, cancelled=False, pid=0, wall_seconds=0.0,
        idle_seconds=0.0, max_idle_seconds=0.0, detection_lag=None, output_bytes=0,
        tail=log.tail_text(TAIL_CHARS),
    )


def _spawn(spec: RuntimeSpec) -> subprocess.Popen[bytes]:
    # The parent-death signal needs a preexec hook, which makes Python fork (not vfork) and run
    # Python in the child: 10-25 ms of a no-op step in a worker of a few hundred MiB. A live guard
    # already ends the attempt when this process dies, so the hook is only for when there is none.
    preexec = None if Guard.running() else start_group_child_preexec
    return subprocess.Popen(
        list(spec.argv), cwd=spec.cwd, env=dict(spec.env), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=preexec, close_fds=True,
    )


def _start_error(spec: RuntimeSpec, err: OSError) -> str:
    reason = err.strerror or str(err)
    where = f" (cwd {spec.cwd})" if not Path(spec.cwd).is_dir() else ""
    return f"selfheal: cannot start runtime {spec.argv[0]!r}{where}: {reason}"


def _abort(proc: subprocess.Popen[bytes], spec: RuntimeSpec, run: SupervisedRun | None, window: PidWindow | None,
           log: CappedLog) -> None:
    """An exception while supervising: end the attempt, close everything (the caller re-raises)."""
    marker = str(spec.env[MARKER_VAR])
    try:
        end_attempt(marker, proc.pid, grace=spec.kill_grace, keep=(Guard.pid(),), window=window,
                    adopted_since=run.started_ticks if run is not None else None)
        if run is not None:
            run.close(notify=False)  # the callback may be what raised
        else:
            close_pipes(proc)
        proc.wait()
    finally:
        Guard.release(marker)
        log.close()


def run_runtime(
    spec: RuntimeSpec,
    *,
    log: CappedLog,
    redact_stream: Callable[[], Any] | None = None,
    cancel_check: Callable[[], bool] | None = None,
    cancel_poll: float = 0.25,
    on_start: Callable[[int], None] | None = None,
    on_output: Callable[[str], None] | None = None,
    redact_text: Callable[[str], str] = str,
    clock: Callable[[], float] = time.monotonic,
    wake: WakeCheck | None = None,
) -> RuntimeResult:
    """Run ``spec`` in its own process group until it exits, times out or is cancelled.

    Output chunks are decoded, passed through a fresh ``redact_stream()`` per pipe (``feed``/``flush``),
    written to ``log`` and given to ``on_output``; each chunk resets the idle deadline. On a
    timeout or cancel the whole group is ended (TERM, ``kill_grace``, KILL); when the leader exits
    by itself what is left of its group is ended too. Any exception (also ``BaseException`` such
    as Celery's soft time limit) kills the group, closes ``log`` and is re-raised; otherwise the
    caller keeps ``log`` open (to add a footer) and closes it. A command that cannot be started
    gives exit code 127 and the reason in ``tail`` and the log.

    Containment (`runtime.containment`): the runtime's environment gets a fresh
    ``SELFHEAL_ATTEMPT_MARKER``; whenever the attempt ends (success too) the group *and* every
    process carrying the marker are ended, and a guard process does the same if this process
    dies. ``cancel_check`` is run every ``cancel_poll`` seconds (keep it cheap); ``wake.check`` at
    the start, when ``wake.wakeup`` is readable and every ``wake.fallback`` seconds; either one
    returning True cancels. The caller closes ``wake.wakeup``. With ``spec.output_loop_limit`` the
    output is watched for a repeated block of lines
    (detector OUTPUT_LOOP, ended as a timeout; ``note`` quotes the block through ``redact_text``).
    """
    if not spec.argv:
        return _not_started(log, "selfheal: cannot start runtime: empty command")
    marker = new_marker()
    spec = replace(spec, env={**spec.env, MARKER_VAR: marker})
    Guard.attempt(marker, grace=spec.kill_grace)  # named first: the runtime is never unguarded
    window = PidWindow.open()  # before the fork: every process of the attempt comes after
    try:
        proc = _spawn(spec)
    except OSError as err:
        Guard.release(marker)
        return _not_started(log, _start_error(spec, err))
    Guard.attempt(marker, proc.pid, grace=spec.kill_grace)
    if window is not None and not window.covers(proc.pid):
        window = None  # pids not handed out as expected here: look at every process
    run: SupervisedRun | None = None
    try:
        if on_start is not None:
            on_start(proc.pid)
        run = SupervisedRun(proc, spec, log, redact_stream, on_output, clock, window,
                            wake.wakeup if wake is not None else None)
        detector, lag, cancelled = _watch(run, cancel_check, cancel_poll, wake)
        end = clock()
        # Also when the leader exited by itself: nothing the attempt started may outlive it.
        run.terminate()
        run.drain()
        rc = proc.wait()
    except BaseException:
        _abort(proc, spec, run, window, log)
        raise
    Guard.release(marker)
    run.close()
    return run.result(rc, detector, lag, cancelled, end, redact_text)


def _watch(run: SupervisedRun, cancel_check: Callable[[], bool] | None, cancel_poll: float,
           wake: WakeCheck | None) -> tuple[Detector, float | None, bool]:
    """The watchdog loop: returns (detector, detection lag, cancelled) when the attempt must end."""
    spec, clock = run.spec, run.clock
    wall_deadline = run.start + spec.wall_timeout
    next_cancel = run.start + cancel_poll if cancel_check is not None else float("inf")
    # at once first: a request made before the wake-up listened was pushed to nobody
    next_wake = run.start if wake is not None else float("inf")
    while True:
        now = clock()
        idle_deadline = run.last_output + spec.idle_timeout
        first = min(wall_deadline, idle_deadline)
        if now >= first:
            # Both passed (e.g. a stalled select): report the one whose threshold came first.
            kind = Detector.WALL_TIMEOUT if wall_deadline <= idle_deadline else Detector.IDLE_TIMEOUT
            return kind, now - first, False
        if cancel_check is not None and now >= next_cancel:
            if cancel_check():
                return Detector.EXIT, None, True
            next_cancel = clock() + cancel_poll
        if wake is not None and (run.woken or now >= next_wake):
            run.woken = False
            if wake.check():
                return Detector.EXIT, None, True
            next_wake = clock() + wake.fallback
        if run.pump(min(first, next_cancel, next_wake) - now):
            return Detector.EXIT, None, False
        if run.loop is not None:
            return Detector.OUTPUT_LOOP, None, False
