"""Helpers of the observability tests: workers that stop at once, a real UDP StatsD collector, packet
parsing, a real Celery event receiver in a thread, scripted jobs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

from celery_selfheal.settings import load_settings
from tests.integration.conftest import Harness, client_selfheal, start_worker


def kill_worker(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker whose jobs are over by killing its process group (worker and pool children).

    Even a cold shutdown takes 4-6 s on the filesystem transport (a bare Celery app too); these
    tests have nothing left for a shutdown to finish."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def worker(tmp: Path, name: str, extra_env: dict[str, str] | None = None) -> Iterator[Harness]:
    """A prefork worker of the ready app on its own embedded state dir, with ``extra_env``."""
    base = tmp / name
    settings = load_settings(state_dir=base / "state", env={})
    settings.ensure_dirs()
    log = base / "worker.log"
    # STATSD_HOST="" switches StatsD off even when the developer's shell sets it
    proc = start_worker(settings, log, extra_env={"STATSD_HOST": "", **(extra_env or {})})
    try:
        yield Harness(settings=settings, selfheal=client_selfheal(settings), worker=proc, log_path=log, tmp=base)
    finally:
        kill_worker(proc)


def free_udp_port() -> int:
    """A loopback UDP port nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StatsdCollector:
    """A real UDP socket on 127.0.0.1 collecting StatsD lines."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])

    def env(self, style: str, prefix: str = "") -> dict[str, str]:
        """Worker env sending here in ``style``."""
        return {"STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(self.port), "STATSD_TAG_STYLE": style,
                "STATSD_PREFIX": prefix}

    def drain(self, quiet: float = 0.3) -> list[str]:
        """Every line received until nothing arrives for ``quiet`` seconds."""
        lines: list[str] = []
        self.sock.settimeout(quiet)
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return lines
            lines.extend(line for line in data.decode().split("\n") if line)

    def close(self) -> None:
        self.sock.close()


def parse_packet(line: str, style: str) -> tuple[str, str, dict[str, str], float]:
    """``(name, type, tags, value)`` of one StatsD line in ``dogstatsd`` or ``telegraf`` style."""
    if style == "dogstatsd":
        stat, _, rest = line.partition(":")
        value, kind, *extra = rest.split("|")
        tags = {}
        if extra:
            assert extra[0].startswith("#"), line
            tags = dict(t.split(":", 1) for t in extra[0][1:].split(","))
        return stat, kind, tags, float(value)
    assert style == "telegraf", style
    head, _, rest = line.rpartition(":")
    value, kind = rest.split("|")
    name, *pairs = head.split(",")
    return name, kind, dict(p.split("=", 1) for p in pairs), float(value)


class EventCapture:
    """A real ``app.events.Receiver`` consuming every Celery event in a thread, as Flower does."""

    def __init__(self, settings: Any) -> None:
        self.app = Celery("selfheal-event-capture", set_as_current=False)
        self.app.conf.update(settings.celery_conf())
        self.events: list[dict[str, Any]] = []
        self._conn = self.app.connection_for_read()
        self.receiver = self.app.events.Receiver(self._conn, handlers={"*": self.events.append})
        self._thread = threading.Thread(target=self._run, name="event-capture", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def __enter__(self) -> EventCapture:
        # bound before anything is sent (filesystem:// keeps events for bound queues only)
        self.receiver.queue(self._conn.default_channel).declare()
        self._thread.start()
        return self

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until ``predicate(events)`` holds; returns the events."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise AssertionError(f"receiver failed: {self.error!r}")
            if predicate(list(self.events)):
                return list(self.events)
            time.sleep(0.05)
        raise AssertionError(f"events never matched; got {[e.get('type') for e in self.events]}")

    def __exit__(self, *exc: object) -> None:
        self.receiver.should_stop = True  # capture() ends within its 1 s drain interval
        self._thread.join(5)
        self._conn.release()


def heal_steps(step: str = "implement") -> list[dict[str, Any]]:
    """One step that hangs silently on attempt 1 and heals by a soft reset."""
    return [{"id": step, "instructions": "silent@1\nwrite out.txt: done"}]


HEAL_BUDGETS = {"step_idle_timeout_seconds": 1.5, "soft_reset_backoff_seconds": 0.05}
#: step "two" fails the same way with no change until a hard reset runs it (no progress -> hard reset)
ESCALATE_STEPS = [{"id": "one", "instructions": "write a.txt: one"},
                  {"id": "two", "instructions": "fail-unless-hard-reset\nwrite b.txt: two"}]
ESCALATE_BUDGETS = {"soft_reset_backoff_seconds": 0.05}
