#!/usr/bin/env python3
"""Cancel request -> the runtime's whole process tree gone.

Runs a one-step job whose runtime starts a child and sleeps (``sh -c 'sleep 60 & sleep 60'``)
through the real task body (``Task.apply`` in a thread, embedded SQLite store, real git repo);
once it runs, ``selfheal cancel``'s request (`request_control`) is made and the time until no
process of the runtime's group is left is measured. The baseline is the kill grace itself (the
time a TERMed runtime may take); the goal is at most 100 ms more. ``--store redis`` starts its own
redis-server (free loopback port, no persistence) and uses the Redis store instead. Before the
cancels, one attempt runs for ``--reads-seconds`` and the store's job reads made meanwhile (the
running attempt's cancel checks) are counted: reads per second of a running attempt.

    python bench/bench_cancel.py [--runs 10] [--store sqlite|redis] [--reads-seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import make_baseline_repo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--reads-seconds", type=float, default=3.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cancel-"))
    repo = make_baseline_repo(tmp)
    os.environ["SELFHEAL_STATE_DIR"] = str(tmp / "state")
    server = None
    if args.store == "redis":
        from bench.bench_cluster import start_redis

        server, os.environ["SELFHEAL_STORE_URL"] = start_redis(tmp)
    try:
        run(args, tmp, repo)
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def run(args: argparse.Namespace, tmp: Path, repo: Path) -> None:
    from celery import Celery

    from celery_selfheal.api import submit
    from celery_selfheal.control.requests import request_control
    from celery_selfheal.runtime.process_group import group_alive  # zombies count as gone
    from celery_selfheal.settings import load_settings
    from celery_selfheal.wiring.install import SelfHeal

    settings = load_settings()
    app = Celery("bench-cancel")
    app.conf.update(settings.celery_conf())
    sh = SelfHeal(app, settings)
    ctx = sh.context()
    job_file = tmp / "job.json"
    job_file.write_text(json.dumps({
        "job": {"objective": "cancel", "repo": str(repo), "ref": "main",
                "runtime": ["sh", "-c", "sleep 60 & sleep 60"]},
        "steps": [{"id": "s0", "instructions": "wait"}]}))

    def start() -> tuple[str, threading.Thread, int]:
        job_id = submit(sh, job_file)["jobId"]
        worker = threading.Thread(target=sh.run_step.apply,
                                  kwargs={"kwargs": {"job_id": job_id, "step_index": 0, "epoch": 0}})
        worker.start()
        while True:
            attempt = next((a for a in ctx.store.list_attempts(job_id) if a.get("pid")), None)
            if attempt:
                return job_id, worker, int(attempt["pid"])
            time.sleep(0.005)

    reads = count_reads(ctx, start, args.reads_seconds)
    took: list[float] = []
    requested: list[float] = []
    for _ in range(args.runs):
        job_id, worker, pgid = start()
        time.sleep(random.uniform(0.2, 0.7))  # the child starts; any phase of the engine's poll
        t0 = time.perf_counter()
        request_control(ctx, job_id, "cancel", reason="bench", enqueue_apply=lambda _job_id: None)
        requested.append(time.perf_counter() - t0)
        while group_alive(pgid):
            time.sleep(0.001)
        took.append(time.perf_counter() - t0)
        worker.join(30)
    med = statistics.median(took)
    print(f"machine: {os.cpu_count()} cores; {args.runs} cancels, runtime 'sleep 60 & sleep 60' "
          f"(ends on TERM), in-process task body, {args.store} store")
    print(f"cancel -> runtime tree gone: median {med * 1000:.1f} ms  worst {max(took) * 1000:.1f} ms "
          f"(kill grace not used: the runtime ends on TERM)")
    print(f"  of which the request itself (store writes, audit, event): median "
          f"{statistics.median(requested) * 1000:.1f} ms")
    print(f"store job reads of a running attempt: {reads:.1f}/s (over {args.reads_seconds:g} s)")


def count_reads(ctx: Any, start: Callable[[], tuple[str, threading.Thread, int]], seconds: float) -> float:
    """Job reads per second while one attempt runs (counted on the store's class: any process-local
    reader is the attempt, this bench reads none meanwhile); the attempt is then cancelled."""
    from celery_selfheal.control.requests import request_control

    job_id, worker, _ = start()
    cls = type(ctx.store)
    real = cls.get_job
    calls = [0]

    def counted(self: Any, job: str) -> Any:
        calls[0] += 1
        return real(self, job)

    cls.get_job = counted
    try:
        time.sleep(seconds)
    finally:
        cls.get_job = real
    request_control(ctx, job_id, "cancel", reason="bench", enqueue_apply=lambda _job_id: None)
    worker.join(30)
    return calls[0] / seconds


if __name__ == "__main__":
    main()
