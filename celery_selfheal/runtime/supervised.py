"""One supervised run's I/O (`runtime.supervisor` decides when it ends): a ``selectors`` loop over
the child's stdout, stderr, stdin (the prompt is written non-blocking) and a pidfd that becomes
readable when the leader exits (a waiter thread and a self-pipe where there is no pidfd); the kill
phase, which keeps reading output during the grace; the report."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from celery_selfheal.core.model import Detector
from celery_selfheal.core.output_loop import LoopMatch, OutputLoopDetector, describe_loop
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.containment import MARKER_VAR, Guard, end_attempt, start_ticks
from celery_selfheal.runtime.pid_window import PidWindow
from celery_selfheal.runtime.spec import OutputStream, RuntimeResult, RuntimeSpec, Wakeup

__all__ = ["TAIL_CHARS", "SupervisedRun", "close_pipes"]

_CHUNK = 64 * 1024
#: how much of the (redacted) output the result quotes
TAIL_CHARS = 8192
#: how long to keep reading pipes once the group is gone (a writer that escaped the group with
#: setsid could hold them open forever)
_DRAIN_SECONDS = 1.0


class SupervisedRun:
    """One supervised run's I/O: ``pump`` one select, ``terminate`` the attempt, ``drain`` and
    ``close`` the pipes, ``result``."""

    def __init__(self, proc: subprocess.Popen[bytes], spec: RuntimeSpec, log: CappedLog,
                 redact_stream: Callable[[], Any] | None, on_output: Callable[[str], None] | None,
                 clock: Callable[[], float], window: PidWindow | None = None, wakeup: Wakeup | None = None) -> None:
        self.proc, self.spec, self.log, self.on_output, self.clock = proc, spec, log, on_output, clock
        self.window = window
        #: set when ``wakeup`` was readable (drained already); the supervisor clears it
        self.woken = False
        self.sel = selectors.DefaultSelector()
        self.streams: list[OutputStream] = []
        self.output_bytes = 0
        self.start = self.last_output = clock()
        self.max_idle = 0.0
        self._waiter_fds: tuple[int, int] | None = None
        self._pidfd: int | None = None
        self.marker = str(spec.env.get(MARKER_VAR, ""))
        self.started_ticks = start_ticks(proc.pid)
        self.keep = (Guard.pid(),)  # our own children that are not the attempt's (its guard)
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
        if wakeup is not None:  # its owner closes it, after the selector
            self.sel.register(wakeup.fileno(), selectors.EVENT_READ, wakeup)

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
            elif isinstance(key.data, OutputStream):
                self._read(key.data)
            else:  # the wake-up
                key.data.drain()
                self.woken = True
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
                    adopted_since=self.started_ticks, keep=self.keep, window=self.window)

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
        close_pipes(self.proc)


    def result(self, rc: int, detector: Detector, lag: float | None, cancelled: bool, end: float,
               redact_text: Callable[[str], str]) -> RuntimeResult:
        """What ``run_runtime`` reports, from the leader's status and when the end was detected."""
        if detector is Detector.EXIT and rc < 0:
            detector = Detector.SIGNAL
        loop = self.loop
        return RuntimeResult(
            exit_code=rc if rc >= 0 else None, signal=-rc if rc < 0 else None, detector=detector,
            cancelled=cancelled, pid=self.proc.pid, wall_seconds=end - self.start,
            idle_seconds=end - self.last_output, max_idle_seconds=max(self.max_idle, end - self.last_output),
            detection_lag=lag, output_bytes=self.output_bytes, tail=self.log.tail_text(TAIL_CHARS),
            note=redact_text(describe_loop(loop)) if detector is Detector.OUTPUT_LOOP and loop else "",
        )


def close_pipes(proc: subprocess.Popen[bytes]) -> None:
    """Close the child's pipes that are still open."""
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):  # stdin: a prompt the child never read
                pipe.close()
