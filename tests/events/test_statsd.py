"""StatsdSink against a real UDP socket; dead and unresolvable StatsD hosts cost nothing."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celery_selfheal.core.metrics_map import TAG_STYLES, format_packet, metrics_for_event
from celery_selfheal.events.statsd import StatsdSink

FAILED = {
    "event": "task.step.attempt.failed",
    "ts": "2026-11-21T23:59:59.123Z",
    "jobId": "job-1",
    "stepId": "build",
    "stepIndex": 1,
    "attempt": 1,
    "failureClass": "transient_runtime",
    "attemptStrategy": "initial",
    "strategy": "soft_reset",
    "detector": "idle_timeout",
    "wallClockSeconds": 3.2,
}


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    """A real StatsD-side socket on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def _recv(sock: socket.socket, count: int) -> list[str]:
    """Receive ``count`` StatsD lines (a datagram may carry several, newline-separated)."""
    lines: list[str] = []
    while len(lines) < count:
        lines.extend(sock.recv(65535).decode("ascii").split("\n"))
    return lines


def _assert_quiet(sock: socket.socket) -> None:
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(65535)


@pytest.mark.parametrize("style", TAG_STYLES)
def test_each_tag_style_arrives_as_formatted(udp: socket.socket, style: str) -> None:
    sink = StatsdSink("127.0.0.1", udp.getsockname()[1], prefix="ci", tag_style=style)
    try:
        sink.handle(FAILED)
        expected = [format_packet(m, style, "ci") for m in metrics_for_event(FAILED)]
        assert _recv(udp, len(expected)) == expected
    finally:
        sink.close()


def test_dogstatsd_and_telegraf_packets_look_like_the_contract(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    for style, line in [
        (
            "dogstatsd",
            "task.self_heal.attempts_total:1|c|#class:transient_runtime,strategy:initial,outcome:failure",
        ),
        (
            "telegraf",
            "task.self_heal.attempts_total,class=transient_runtime,strategy=initial,outcome=failure:1|c",
        ),
        ("none", "task.self_heal.attempts_total.transient_runtime.initial.failure:1|c"),
    ]:
        sink = StatsdSink("127.0.0.1", port, tag_style=style)
        sink.handle(FAILED)
        assert _recv(udp, 3)[0] == line
        sink.close()


def _names(lines: list[str]) -> list[str]:
    return [line.split("|#")[0].split(":")[0] for line in lines]


def test_soft_reset_heal_and_escalation_sequences(udp: socket.socket) -> None:
    """The metrics of a step healed by a soft reset, then of one that escalates and is exhausted."""
    sink = StatsdSink("127.0.0.1", udp.getsockname()[1], tag_style="dogstatsd")
    base = {"jobId": "j", "stepId": "build", "stepIndex": 0}
    healed = [
        {**base, "event": "task.step.attempt.started", "attempt": 1},
        {**FAILED, "attempt": 1},
        {**base, "event": "task.self_heal.triggered", "attempt": 2, "strategy": "soft_reset"},
        {
            **base,
            "event": "task.step.attempt.finished",
            "attempt": 2,
            "attemptStrategy": "soft_reset",
            "wallClockSeconds": 0.5,
        },
        {**base, "event": "task.self_heal.recovered", "attempt": 2, "attemptStrategy": "soft_reset"},
    ]
    for event in healed:
        sink.handle(event)
    lines = _recv(udp, 6)
    assert lines[3:] == [
        "task.self_heal.attempts_total:1|c|#class:none,strategy:soft_reset,outcome:success",
        "task.step.duration_seconds:500.000000|ms|#step:build,attempt:2",
        "task.self_heal.recovered_total:1|c|#step:build,strategy:soft_reset",
    ]
    stuck = {**FAILED, "failureClass": "stuck_no_progress", "detector": "no_progress"}
    escalated = [
        {**stuck, "attempt": 2, "attemptStrategy": "soft_reset", "strategy": "hard_reset"},
        {**base, "event": "task.self_heal.escalated", "strategy": "hard_reset"},
        {
            **stuck,
            "attempt": 3,
            "attemptStrategy": "hard_reset",
            "detector": "wall_timeout",
            "strategy": None,
        },
        {**base, "event": "task.self_heal.exhausted", "failureClass": "stuck_no_progress"},
    ]
    for event in escalated:
        sink.handle(event)
    lines = _recv(udp, 7)
    assert _names(lines) == [
        "task.self_heal.attempts_total",
        "task.step.no_progress_total",
        "task.step.duration_seconds",
        "task.self_heal.attempts_total",
        "task.step.wall_timeout_total",
        "task.step.duration_seconds",
        "task.self_heal.exhausted_total",
    ]
    assert "strategy:hard_reset" in lines[3]
    assert lines[6] == "task.self_heal.exhausted_total:1|c|#step:build,class:stuck_no_progress"
    sink.close()


def test_hostname_is_resolved_in_the_background_and_early_metrics_are_kept(udp: socket.socket) -> None:
    sink = StatsdSink("localhost", udp.getsockname()[1], tag_style="none")
    sink.handle(FAILED)  # may run before the address is known: buffered, then flushed
    assert len(_recv(udp, 3)) == 3
    assert sink.resolved
    sink.handle(FAILED)
    assert len(_recv(udp, 3)) == 3
    sink.close()


class BlockingLookups:
    """``socket.getaddrinfo`` that records the calling thread and blocks until `release` (then
    fails as an unresolvable name would): a lookup on the caller's path hangs the caller."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.released = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread())
        if threading.current_thread() is threading.main_thread():
            raise AssertionError("name lookup on the caller's thread")
        self.released.wait(30)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_unresolvable_host_is_looked_up_off_the_caller_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = BlockingLookups()
    monkeypatch.setattr(socket, "getaddrinfo", lookups)
    sink = StatsdSink("nonexistent.invalid", 8125, resolve_interval=60)
    try:
        for i in range(1000):
            sink.handle({**FAILED, "attempt": i})
        assert not lookups.released.is_set()  # all 1000 returned while the lookup hangs
        resolver = sink._resolver
        assert resolver is not None and lookups.threads == [resolver]  # one lookup, in the background
    finally:
        lookups.released.set()
    resolver.join(timeout=30)
    assert not resolver.is_alive() and not sink.resolved
    for i in range(100):
        sink.handle({**FAILED, "attempt": i})
    assert sink._resolver is resolver and len(lookups.threads) == 1  # at most one per resolve_interval
    sink.close()


def test_closed_port_costs_no_lookup_and_the_sink_survives(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the kernel answers ICMP port unreachable
    sink = StatsdSink("127.0.0.1", port)  # an IP literal: connected inline, nothing to resolve
    assert sink.resolved
    lookups = BlockingLookups()
    monkeypatch.setattr(socket, "getaddrinfo", lookups)
    for i in range(1000):
        sink.handle({**FAILED, "attempt": i})
    assert lookups.threads == []
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", port))  # someone listens again: the refusals did not break the sink
    listener.settimeout(5)
    try:
        sink.handle(FAILED)
        assert len(_recv(listener, 3)) == 3
    finally:
        listener.close()
        sink.close()


def test_broken_events_and_closed_sinks_never_raise(udp: socket.socket) -> None:
    sink = StatsdSink("127.0.0.1", udp.getsockname()[1])
    sink.handle({"event": "task.step.attempt.failed", "wallClockSeconds": object()})
    sink.handle({})
    sink.handle(None)  # type: ignore[arg-type]
    assert _recv(udp, 1) == [
        "task.self_heal.attempts_total:1|c|#class:unknown,strategy:initial,outcome:failure"
    ]
    sink.close()
    sink.handle(FAILED)
    _assert_quiet(udp)


def test_forked_child_sends_through_its_own_state(udp: socket.socket) -> None:
    sink = StatsdSink("localhost", udp.getsockname()[1], tag_style="telegraf")
    pid = os.fork()  # the prefork pool forks after the sink is built, maybe mid-resolution
    if pid == 0:  # pragma: no cover - child
        try:
            sink.handle(FAILED)
            deadline = time.monotonic() + 5
            while not sink.resolved and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    lines = _recv(udp, 3)
    assert lines[0].startswith("task.self_heal.attempts_total,class=transient_runtime")
    sink.close()


def test_from_env() -> None:
    env = {
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": "9125",
        "STATSD_PREFIX": "ci",
        "STATSD_TAG_STYLE": "Telegraf",
    }
    sink = StatsdSink.from_env(env)
    assert (sink.host, sink.port, sink.prefix, sink.tag_style) == ("127.0.0.1", 9125, "ci", "telegraf")
    assert StatsdSink.from_env(env, port=9999).port == 9999
    default = StatsdSink.from_env({})
    assert (default.host, default.port, default.prefix, default.tag_style) == (
        "localhost",
        8125,
        "",
        "dogstatsd",
    )
    with pytest.raises(ValueError, match="STATSD_PORT"):
        StatsdSink.from_env({"STATSD_PORT": "eighty"})
    with pytest.raises(ValueError, match="STATSD_PORT"):
        StatsdSink.from_env({"STATSD_PORT": "70000"})
    with pytest.raises(ValueError, match="STATSD_TAG_STYLE"):
        StatsdSink.from_env({"STATSD_TAG_STYLE": "influx"})


def test_handle_is_thread_safe_while_resolving(udp: socket.socket) -> None:
    # 4 x 10 events x 3 metrics: 120 datagrams fit a default (~208 KiB) loopback receive buffer;
    # many more are dropped by the kernel, not by the sink
    sink = StatsdSink("localhost", udp.getsockname()[1])

    def burst() -> None:
        for _ in range(10):
            sink.handle(FAILED)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_recv(udp, 120)) == 120  # none lost between the buffer and the socket
    _assert_quiet(udp)
    sink.close()
