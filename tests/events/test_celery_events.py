"""CeleryEventSink against a real broker (filesystem:// and redis-server) and a real Receiver."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.events.state import State

from celery_selfheal.events.celery_events import (
    EVENT_TYPE_PREFIX,
    CeleryEventSink,
    celery_event_type,
    contract_event_name,
)
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

FAILED: dict[str, Any] = {
    "event": "task.step.attempt.failed",
    "ts": "2026-11-21T23:59:59.123Z",
    "jobId": "job-1",
    "epoch": 0,
    "stepId": "build",
    "stepIndex": 1,
    "attempt": 2,
    "failureClass": "transient_runtime",
    "failureSignature": "a" * 64,
    "diffHash": "b" * 64,
    "strategy": "soft_reset",
    "detector": "idle_timeout",
    "wallClockSeconds": 3.2,
    "idleSeconds": 3.0,
    "exitCode": None,
    "reason": "no output for 3.0s",
}
CONTRACT_NAMES = [
    "task.job.started",
    "task.job.succeeded",
    "task.job.failed",
    "task.job.cancelled",
    "task.step.attempt.started",
    "task.step.attempt.finished",
    "task.step.attempt.failed",
    "task.self_heal.triggered",
    "task.self_heal.escalated",
    "task.self_heal.recovered",
    "task.self_heal.exhausted",
    "task.resume.from_step",
    "task.control.recovery.requested",
    "task.control.recovery.ack",
    "task.control.recovery.rejected",
]


def filesystem_conf(folder: Path) -> dict[str, Any]:
    """Celery settings for a filesystem:// broker in ``folder`` (the folders must exist)."""
    data, control = folder / "data", folder / "control"
    data.mkdir(parents=True, exist_ok=True)
    control.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(data),
            "data_folder_out": str(data),
            "control_folder": str(control),
            "polling_interval": 0.05,
        },
    }


def _app(conf: dict[str, Any]) -> Celery:
    app = Celery("selfheal-events-test", set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.fixture(params=["filesystem", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """(kind, Celery settings) of a real broker: a filesystem:// folder or a redis-server."""
    if request.param == "filesystem":
        return "filesystem", filesystem_conf(tmp_path)
    return "redis", {"broker_url": request.getfixturevalue("redis_url")}


@pytest.fixture
def app(broker: tuple[str, dict[str, Any]]) -> Celery:
    return _app(broker[1])


class Capture:
    """A real ``app.events.Receiver`` consuming every event in a background thread.

    Redis delivers events by PUB/SUB, so the receiver must be subscribed before anything is sent:
    it starts at once and :meth:`listen` probes until it hears us. kombu's filesystem transport
    can hand a consumer a message file that is still being written (an empty payload, then
    ``JSONDecodeError`` out of ``drain_events``; kombu#1551), so there the queue is bound up
    front and consumed only once the events are sent.
    """

    def __init__(self, app: Celery, kind: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._kind = kind
        self._conn = app.connection_for_read()
        self._recv = app.events.Receiver(self._conn, handlers={"*": self.events.append})
        self._thread: threading.Thread | None = None
        if kind == "filesystem":
            self._recv.queue(self._conn.default_channel).declare()
        else:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Receiver.capture() with a short safety interval, so stop() returns within 0.1 s
        for _ in self._recv.consume(limit=None, timeout=None, safety_interval=0.1, wakeup=False):
            pass

    def listen(self, sink: CeleryEventSink) -> None:
        """Return once events sent through ``sink`` reach this receiver."""
        if self._kind == "filesystem":
            return  # the queue is bound already
        deadline = time.monotonic() + 10
        while not self.ours(probes=True):
            assert time.monotonic() < deadline, "the receiver never saw a probe event"
            sink.handle({"event": "task.job.started", "jobId": "probe"})
            time.sleep(0.1)

    def ours(self, probes: bool = False) -> list[dict[str, Any]]:
        """Our events in send order (Lamport ``clock``: filesystem:// does not keep order within
        a millisecond), without the probes unless asked."""
        events = [
            e
            for e in self.events
            if e["type"].startswith(EVENT_TYPE_PREFIX) and (probes or e.get("jobId") != "probe")
        ]
        return sorted(events, key=lambda e: e["clock"])

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until ``count`` of our events (probes aside) arrived; return them."""
        self._start()
        deadline = time.monotonic() + timeout
        while len(self.ours()) < count:
            assert time.monotonic() < deadline, f"timed out; got {[e['type'] for e in self.events]}"
            time.sleep(0.02)
        return self.ours()

    def stop(self) -> None:
        self._recv.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._conn.release()


@pytest.fixture
def capture(app: Celery, broker: tuple[str, dict[str, Any]]) -> Iterator[Capture]:
    cap = Capture(app, broker[0])
    yield cap
    cap.stop()


def test_type_names() -> None:
    assert celery_event_type("task.step.attempt.failed") == "selfheal-task-step-attempt-failed"
    for name in CONTRACT_NAMES:
        event_type = celery_event_type(name)
        assert not event_type.startswith(("task-", "worker-"))
        assert event_type.split("-", 1)[0] == "selfheal"
        assert contract_event_name(event_type) == name
    assert contract_event_name("task-succeeded") is None


def test_every_contract_event_arrives_with_its_payload(app: Celery, capture: Capture) -> None:
    sink = CeleryEventSink(app, hostname="celery@selfheal-test")
    capture.listen(sink)
    for name in CONTRACT_NAMES:
        sink.handle({**FAILED, "event": name})
    received = capture.wait_for(len(CONTRACT_NAMES))
    assert [e["type"] for e in received] == [celery_event_type(n) for n in CONTRACT_NAMES]
    failed = received[CONTRACT_NAMES.index("task.step.attempt.failed")]
    assert {k: failed[k] for k in FAILED} == FAILED  # every contract field, JSON round-tripped
    assert failed["hostname"] == "celery@selfheal-test"
    assert failed["pid"] == os.getpid()
    sink.close()


def test_reserved_celery_keys_do_not_clobber_the_envelope(app: Celery, capture: Capture) -> None:
    sink = CeleryEventSink(app, hostname="celery@selfheal-test")
    capture.listen(sink)
    sink.handle({**FAILED, "hostname": "evil", "type": "task-succeeded", "timestamp": 1, "retry": True})
    (event,) = capture.wait_for(1)
    assert event["type"] == "selfheal-task-step-attempt-failed"
    assert event["hostname"] == "celery@selfheal-test"
    assert (event["selfheal_hostname"], event["selfheal_type"], event["selfheal_timestamp"]) == (
        "evil",
        "task-succeeded",
        1,
    )
    assert event["retry"] is True
    sink.close()


def test_monitors_count_our_events_without_touching_task_state(app: Celery, capture: Capture) -> None:
    sink = CeleryEventSink(app, hostname="celery@selfheal-test")
    capture.listen(sink)
    for name in CONTRACT_NAMES:
        sink.handle({**FAILED, "event": name})
    capture.wait_for(len(CONTRACT_NAMES))
    state = State()  # what `celery events` (curses) and Flower build on
    now = time.time()
    started = {"type": "task-started", "uuid": "step-task", "hostname": "celery@selfheal-test"}
    state.event({**started, "timestamp": now, "local_received": now, "clock": 0, "utcoffset": 0, "pid": 1})
    for event in capture.ours():
        state.event(dict(event))
    assert state.event_count == 1 + len(CONTRACT_NAMES)
    assert list(state.tasks) == ["step-task"]  # no task invented...
    assert state.tasks["step-task"].state == "STARTED"  # ...and none rewritten
    flower_events = pytest.importorskip("flower.events")
    flower_state = flower_events.EventsState(max_tasks_in_memory=100)
    for event in capture.ours():
        flower_state.event(dict(event))
    assert flower_state.counter["celery@selfheal-test"]["selfheal-task-step-attempt-failed"] == 1
    assert not flower_state.tasks
    sink.close()


def test_unserializable_event_is_dropped_alone(app: Celery, capture: Capture) -> None:
    sink = CeleryEventSink(app, hostname="celery@selfheal-test")
    capture.listen(sink)
    sink.handle({**FAILED, "reason": object()})
    sink.handle(None)  # type: ignore[arg-type]
    sink.handle({"jobId": "no event name"})
    sink.handle(FAILED)  # the connection was kept: this one still goes out
    assert [e["reason"] for e in capture.wait_for(1)] == [FAILED["reason"]]
    sink.close()


def test_forked_child_uses_its_own_dispatcher(app: Celery, capture: Capture) -> None:
    sink = CeleryEventSink(app, hostname="celery@selfheal-test")
    capture.listen(sink)
    sink.handle({**FAILED, "jobId": "before-fork"})  # the parent's dispatcher and connection now exist
    assert sink._dispatcher is not None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            sink.handle({**FAILED, "jobId": "from-child"})
            code = 0 if sink._pid == os.getpid() and sink._dispatcher is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sink.handle({**FAILED, "jobId": "from-parent"})  # the parent's connection still works
    assert sorted((e["jobId"], e["pid"]) for e in capture.wait_for(3)) == sorted(
        [("before-fork", os.getpid()), ("from-child", pid), ("from-parent", os.getpid())]
    )
    sink.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_broker_down_never_raises_and_backs_off() -> None:
    app = _app({"broker_url": f"redis://127.0.0.1:{_closed_port()}/0"})
    sink = CeleryEventSink(app, hostname="celery@x", connect_timeout=0.5, retry_interval=60)
    opened: list[object] = []
    real_open = sink._open

    def counting_open() -> object:
        opened.append(real_open())
        return opened[-1]

    sink._open = counting_open  # type: ignore[method-assign]
    sink.handle(FAILED)  # tries the broker once (bounded by connect_timeout and the retry policy)
    assert len(opened) == 1 and sink._dispatcher is None  # failed: the connection was dropped
    for _ in range(1000):
        sink.handle(FAILED)
    assert len(opened) == 1  # backing off: not one more connection during retry_interval
    sink.close()


def test_celery_events_dump_shows_our_events(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    """`celery -A app events --dump` in a real subprocess prints our events readably.

    On Redis: with filesystem:// a consumer polling while we write can crash on a half-written
    message file (kombu#1551), and evdump does not survive that.
    """
    conf = {"broker_url": redis_url}
    (tmp_path / "evapp.py").write_text(
        textwrap.dedent(
            f"""\
            from celery import Celery
            app = Celery("evapp")
            app.conf.update({conf!r})
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "evapp", "events", "--dump"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    sink = CeleryEventSink(_app(conf), hostname="celery@selfheal-test")
    try:
        deadline = time.monotonic() + 30
        while not any("selfheal task step attempt failed" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            sink.handle(FAILED)
            time.sleep(0.2)
    finally:
        sink.close()
        proc.terminate()
        proc.wait(timeout=10)
    line = next(line for line in lines if "selfheal task step attempt failed" in line)
    # e.g. "celery@selfheal-test [2026-...] selfheal task step attempt failed: attempt=2, ..., stepId=build"
    assert line.startswith("celery@selfheal-test [")
    assert "event=task.step.attempt.failed" in line
    assert "stepId=build" in line and "detector=idle_timeout" in line
