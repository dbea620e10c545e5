"""Cost of ``StatsdSink.handle()`` on the caller's thread, per kind of StatsD peer.

Times ``--events`` calls (``--runs`` times) against a listening UDP socket, a closed port (ICMP
port unreachable) and a host name that cannot resolve (looked up in the background), and prints
the median and worst microseconds per call. Goal: tens of microseconds (a few datagrams per event),
no more for a peer that is down or unknown than for a live one: it must cost the job nothing.

    .venv/bin/python bench/bench_statsd.py [--runs 5] [--events 1000]
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from celery_selfheal.events.statsd import StatsdSink

EVENT = {"event": "task.step.attempt.failed", "ts": "2026-11-21T23:59:59.123Z", "jobId": "job-1",
         "stepId": "build", "stepIndex": 1, "attempt": 1, "failureClass": "transient_runtime",
         "attemptStrategy": "initial", "strategy": "soft_reset", "detector": "idle_timeout",
         "wallClockSeconds": 3.2}


@contextmanager
def udp_port(listening: bool) -> Iterator[int]:
    """A loopback UDP port with a socket bound to it, or one that nothing listens on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    if not listening:
        sock.close()
    try:
        yield port
    finally:
        sock.close()


def per_call(make: Callable[[], StatsdSink], events: int) -> float:
    """Microseconds per ``handle()`` over ``events`` calls on a fresh sink."""
    sink = make()
    try:
        started = time.perf_counter()
        for i in range(events):
            sink.handle({**EVENT, "attempt": i})
        return (time.perf_counter() - started) / events * 1e6
    finally:
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    logging.getLogger("celery_selfheal.events.statsd").setLevel(logging.ERROR)  # the unresolvable warning
    print(f"{args.runs} runs of {args.events} handle() calls; microseconds per call (median / worst)")
    with udp_port(True) as live, udp_port(False) as closed:
        peers: dict[str, Callable[[], StatsdSink]] = {
            "listening": lambda: StatsdSink("127.0.0.1", live),
            "closed port": lambda: StatsdSink("127.0.0.1", closed),
            "unresolvable": lambda: StatsdSink("nonexistent.invalid", 8125, resolve_interval=60),
        }
        for name, make in peers.items():
            costs = [per_call(make, args.events) for _ in range(args.runs)]
            print(f"  {name:<13} {statistics.median(costs):8.2f} / {max(costs):8.2f}")


if __name__ == "__main__":
    main()
