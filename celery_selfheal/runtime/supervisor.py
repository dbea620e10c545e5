"""Run one attempt's runtime under event-driven wall/idle watchdogs (REQ-01) and end its whole
process group on timeout, cancel or shutdown (REQ-04).

One thread, one ``selectors`` loop over the child's stdout, stderr, stdin (the prompt is written
non-blocking) and a pidfd that becomes readable when the leader exits. The select timeout is the
time to the nearest deadline (wall, last output + idle, next cancel poll), so a timeout is noticed
within about a millisecond of its threshold instead of at the next coarse poll. The output-loop
detector (`core.output_loop`) is fed each decoded chunk as it is read, so a loop ends the attempt
(detector ``output_loop``) at the chunk that completes its last repetition. Ending an attempt ends
everything it started, also what left the group (`runtime.containment`).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery_selfheal.core.model import Detector
from celery_selfheal.core.output_loop import LoopMatch, OutputLoopDetector, describe_loop
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.containment import MARKER_VAR, Guard, end_attempt, new_marker, start_ticks
from celery_selfheal.runtime.process_group import start_group_child_preexec
from celery_selfheal.runtime.spec import OutputStream, RuntimeResult, RuntimeSpec

__all__ = ["RuntimeResult", "RuntimeSpec", "run_runtime"]

_CHUNK = 64 * 1024
_TAIL_CHARS = 8192
#: how long to keep reading pipes once the group is gone (a writer that escaped the group with
#: setsid could hold them open forever)
_DRAIN_SECONDS = 1.0
#: how often the kill phase re-checks whether the group is gone while it keeps reading output
_KILL_POLL = 0.02


def _not_started(log: CappedLog, message: str) -> RuntimeResult:
    # Like a shell: 127 for a command that cannot be run; a one-line reason, no traceback.
    log.write(message + "\n")
    return RuntimeResult(
        exit_code=127, signal=None, detector=Detector.EXIT, cancelled=False, pid=0, wall_seconds=0.0,
        idle_seconds=0.0, max_idle_seconds=0.0, detection_lag=None, output_bytes=0,
        tail=log.tail_text(_TAIL_CHARS),
    )


class _Run:
    """State of one supervised run; ``run_runtime`` is the public entry point."""

    def __init__(self, proc: subprocess.Popen[bytes], spec: RuntimeSpec, log: CappedLog,
                 redact_stream: Callable[[], Any] | None, on_output: Callable[[str], None] | None,
                 clock: Callable[[], float]) -> None:
        self.proc, self.spec, self.log, self.on_output, self.clock = proc, spec, log, on_output, clock
        self.sel = selectors.DefaultSelector()
        self.streams: list[OutputStream] = []
        self.output_bytes = 0
        self.start = self.last_output = clock()
        self.max_idle = 0.0
        self._waiter_fds: tuple[int, int] | None = None
        self._pidfd: int | None = None
        self.marker = str(spec.env.get(MARKER_VAR, ""))
        self.started_ticks = start_ticks(proc.pid)
        self.keep: tuple[int, ...] = ()  # our own children that are not the attempt's (its guard)
        self.loops = OutputLoopDetector(spec.output_loop_limit, clock=clock) if spec.output_loop_limit else None
        tap = self.loops.feed if self.loops is not None else None
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            stream = OutputStream(pipe.fileno(), redact_stream() if redact_stream else None, tap)
            self.sel.register(stream.fd, selectors.EVENT_READ, stream)
            self.streams.append(stream)
        self._prompt = memoryview(spec.stdin_text.encode("utf-8"))
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        if self._prompt:
            self.sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
        else:
            proc.stdin.close()
        self._watch_exit()

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.proc.pid)
            self.sel.register(self._pidfd, selectors.EVENT_READ, "exit")
        except (AttributeError, OSError):
            # No pidfd (old kernel, not Linux): a waiter thread reports the exit on a self-pipe.
            r, w = os.pipe()
            self._waiter_fds = (r, w)
            self.sel.register(r, selectors.EVENT_READ, "exit")

            def wait() -> None:
                self.proc.wait()
                os.write(w, b"x")

            threading.Thread(target=wait, name=f"selfheal-wait-{self.proc.pid}", daemon=True).start()

    def pump(self, timeout: float) -> bool:
        """Handle the events of one select; True when the leader has exited."""
        exited = False
        for key, _ in self.sel.select(max(timeout, 0.0)):
            if key.data == "exit":
                exited = self.proc.poll() is not None
                if exited:
                    self.sel.unregister(key.fd)
            elif key.data == "stdin":
                self._write_prompt()
            else:
                self._read(key.data)
        return exited

    def _write_prompt(self) -> None:
        assert self.proc.stdin is not None
        try:
            sent = os.write(self.proc.stdin.fileno(), self._prompt[:_CHUNK])
        except BlockingIOError:
            return
        except OSError:  # the child closed stdin or died: the rest of the prompt is moot
            sent = len(self._prompt)
        self._prompt = self._prompt[sent:]
        if not self._prompt:
            self.sel.unregister(self.proc.stdin.fileno())
            self.proc.stdin.close()

    def _read(self, stream: OutputStream) -> None:
        try:
            data = os.read(stream.fd, _CHUNK)
        except BlockingIOError:
            return
        if data:
            now = self.clock()
            self.max_idle = max(self.max_idle, now - self.last_output)
            self.last_output = now
            self.output_bytes += len(data)
            self._emit(stream.text(data))
        else:
            self.sel.unregister(stream.fd)
            self._emit(stream.text(b"", final=True))
            self.streams.remove(stream)

    def _emit(self, text: str) -> None:
        if text:
            self.log.write(text)
            if self.on_output is not None:
                self.on_output(text)

    @property
    def loop(self) -> LoopMatch | None:
        """The output loop found so far, if any."""
        return self.loops.match if self.loops is not None else None

    def terminate(self) -> None:
        """TERM the group and every marked process (`runtime.containment`), keep reading output
        during the grace, KILL what is left."""

        def wait(seconds: float) -> None:
            self.pump(seconds)
            self.proc.poll()  # reap the leader so it does not count as alive

        self.proc.poll()  # a leader that exited is reaped first: an empty group is then seen at once
        end_attempt(self.marker, self.proc.pid, grace=self.spec.kill_grace, wait=wait,
                    adopted_since=self.started_ticks, keep=self.keep)

    def drain(self) -> None:
        """Read what is left in the pipes, bounded in time."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        while self.streams and time.monotonic() < deadline:
            self.pump(deadline - time.monotonic())

    def close(self, *, notify: bool = True) -> None:
        """Flush decoders/redactors into the log (and ``on_output`` unless unwinding), close fds."""
        for stream in self.streams:
            text = stream.text(b"", final=True)
            if notify:
                self._emit(text)
            elif text:
                self.log.write(text)
        self.streams.clear()
        self.sel.close()
        for fd in (self._pidfd, *(self._waiter_fds or ())):
            if fd is not None:
                os.close(fd)
        _close_pipes(self.proc)


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):  # stdin: a prompt the child never read
                pipe.close()


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
    dies. With ``spec.output_loop_limit`` the output is watched for a repeated block of lines
    (detector OUTPUT_LOOP, ended as a timeout; ``note`` quotes the block through ``redact_text``).
    """
    if not spec.argv:
        return _not_started(log, "selfheal: cannot start runtime: empty command")
    marker = new_marker()
    spec = replace(spec, env={**spec.env, MARKER_VAR: marker})
    Guard.attempt(marker, grace=spec.kill_grace)  # named first: the runtime is never unguarded
    try:
        proc = subprocess.Popen(
            list(spec.argv), cwd=spec.cwd, env=dict(spec.env), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=start_group_child_preexec, close_fds=True,
        )
    except OSError as err:
        Guard.release(marker)
        reason = err.strerror or str(err)
        where = f" (cwd {spec.cwd})" if not Path(spec.cwd).is_dir() else ""
        return _not_started(log, f"selfheal: cannot start runtime {spec.argv[0]!r}{where}: {reason}")
    Guard.attempt(marker, proc.pid, grace=spec.kill_grace)
    run: _Run | None = None
    try:
        if on_start is not None:
            on_start(proc.pid)
        run = _Run(proc, spec, log, redact_stream, on_output, clock)
        run.keep = (Guard.pid(),)
        detector, lag, cancelled = _watch(run, cancel_check, cancel_poll)
        end = clock()
        # Also when the leader exited by itself: nothing the attempt started may outlive it.
        run.terminate()
        run.drain()
        rc = proc.wait()
    except BaseException:
        try:
            end_attempt(marker, proc.pid, grace=spec.kill_grace, keep=(Guard.pid(),),
                        adopted_since=run.started_ticks if run is not None else None)
            if run is not None:
                run.close(notify=False)  # the callback may be what raised
            else:
                _close_pipes(proc)
            proc.wait()
        finally:
            Guard.release(marker)
            log.close()
        raise
    Guard.release(marker)
    run.close()
    if detector is Detector.EXIT and rc < 0:
        detector = Detector.SIGNAL
    return RuntimeResult(
        exit_code=rc if rc >= 0 else None, signal=-rc if rc < 0 else None, detector=detector,
        cancelled=cancelled, pid=proc.pid, wall_seconds=end - run.start,
        idle_seconds=end - run.last_output, max_idle_seconds=max(run.max_idle, end - run.last_output),
        detection_lag=lag, output_bytes=run.output_bytes, tail=log.tail_text(_TAIL_CHARS),
        note=redact_text(describe_loop(run.loop)) if detector is Detector.OUTPUT_LOOP and run.loop else "",
    )


def _watch(run: _Run, cancel_check: Callable[[], bool] | None,
           cancel_poll: float) -> tuple[Detector, float | None, bool]:
    """The watchdog loop: returns (detector, detection lag, cancelled) when the attempt must end."""
    spec, clock = run.spec, run.clock
    wall_deadline = run.start + spec.wall_timeout
    next_cancel = run.start + cancel_poll if cancel_check is not None else float("inf")
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
        if run.pump(min(first, next_cancel) - now):
            return Detector.EXIT, None, False
        if run.loop is not None:
            return Detector.OUTPUT_LOOP, None, False
