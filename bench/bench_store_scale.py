#!/usr/bin/env python3
"""The store at scale: 10,000 jobs and 1,000,000 events, in SQLite and in Redis.

Seeds each store with ``--jobs`` jobs (through ``create_job``) and ``--events`` events: one job
holds ``--big`` of them, the others share the rest. Events are seeded in bulk straight into the
store's own table / lists (one ``append_event`` per event would take minutes), exactly as
``append_event`` lays them out (the bench then appends one real event and checks its number);
everything measured goes through the public store and API calls:

- ``selfheal jobs``' first page: ``store.list_jobs(50)``;
- ``events --follow`` on the big job: one poll for new events at its tail
  (``list_events(after=N - 10)``) against the same poll on a small job: O(new events), not O(all);
- following the big job from the start (``api.follow_events``, paged): time and peak Python memory;
- ``selfheal jobs`` as a user runs it: the whole CLI process against the seeded store (start-up,
  imports, the query, printing), next to a process that only imports Celery (the floor any
  Celery-based command pays).

    python bench/bench_store_scale.py [--jobs 10000] [--events 1000000] [--big 100000]
                                      [--stores sqlite,redis]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_cluster import start_redis
from celery_selfheal.store._codec import dumps
from celery_selfheal.store.base import StateStore, open_store

EVENT = {"event": "task.step.attempt.finished", "ts": "2026-01-01T00:00:00.000Z", "stepId": "s0",
         "stepIndex": 0, "attempt": 1, "epoch": 0, "exitCode": 0, "wallClockSeconds": 0.01,
         "changedFiles": ["README.md"], "patchSha256": "0" * 64}


def job_record(n: int) -> dict[str, Any]:
    return {"jobId": f"job-{n:06d}", "status": "succeeded", "epoch": 0, "objective": "scale",
            "steps": [{"id": "s0", "status": "succeeded", "attempts": 1}], "createdAt": "2026-01-01T00:00:00Z"}


def seed_events(store: StateStore, job_id: str, count: int) -> None:
    """``count`` events for ``job_id``, laid out as ``append_event`` does, in bulk."""
    rows = (dumps({**EVENT, "jobId": job_id, "n": i}) for i in range(count))
    if hasattr(store, "_write"):  # SQLite: (job_id, seq, data)
        with store._write() as db:
            db.executemany("insert into events values (?, ?, ?)",
                           ((job_id, i + 1, data) for i, data in enumerate(rows)))
        return
    client, key = store._r(), store._job(job_id, ":events")  # type: ignore[attr-defined]
    batch: list[str] = []
    for data in rows:
        batch.append(data)
        if len(batch) == 10_000:
            client.rpush(key, *batch)
            batch = []
    if batch:
        client.rpush(key, *batch)


def median_ms(fn: Callable[[], Any], runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def process_ms(argv: list[str], env: dict[str, str], runs: int = 5) -> float:
    """Median wall time of a whole process (after one warm-up run), which must succeed."""
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1000


def cli_figures(url: str, tmp: Path) -> dict[str, float]:
    """``selfheal jobs`` (first page) as a whole process, and the Celery-import floor."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env.update(SELFHEAL_STATE_DIR=str(tmp / "cli-state"), SELFHEAL_STORE_URL=url)
    selfheal = str(Path(sys.executable).parent / "selfheal")
    return {"selfheal jobs (whole process)": process_ms([selfheal, "jobs"], env),
            "python -c 'import celery.app'": process_ms([sys.executable, "-c", "import celery.app"], env)}


def measure(name: str, store: StateStore, args: argparse.Namespace, tmp: Path, url: str) -> dict[str, float]:
    t0 = time.perf_counter()
    for n in range(args.jobs):
        store.create_job(job_record(n))
    big, small = "job-000000", "job-000001"
    seed_events(store, big, args.big)
    rest = max(args.events - args.big, 0)
    per_job = rest // max(args.jobs - 1, 1)
    for n in range(1, args.jobs):
        seed_events(store, f"job-{n:06d}", per_job)
    # one real append on top of the bulk rows: it must number the event right after them
    assert store.append_event(small, {**EVENT, "jobId": small}) == per_job + 1
    seeded = time.perf_counter() - t0
    out = {
        "list_jobs(50)": median_ms(lambda: store.list_jobs(50)),
        "tail poll, big job": median_ms(lambda: store.list_events(big, after=args.big - 10)),
        "tail poll, small job": median_ms(lambda: store.list_events(small, after=per_job - 9)),
    }
    from celery_selfheal import api

    class _Ctx:  # what follow_events needs of a context
        def __init__(self, store: StateStore) -> None:
            self.store = store

    def follow() -> int:
        return sum(1 for _ in api.follow_events(_Ctx(store), big, until_terminal=False, timeout=0))  # type: ignore[arg-type]

    t0 = time.perf_counter()
    assert follow() == args.big
    out["follow big job from 0"] = (time.perf_counter() - t0) * 1000
    tracemalloc.start()  # slows allocation down: timed apart
    follow()
    out["follow peak memory (MiB)"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out.update(cli_figures(url, tmp))
    print(f"{name}: seeded {args.jobs} jobs, {args.big + per_job * (args.jobs - 1)} events in {seeded:.1f} s")
    for key, value in out.items():
        print(f"  {name} {key:30} {value:9.2f}" + ("" if key.endswith("(MiB)") else " ms"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,redis")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    print(f"machine: {os.cpu_count()} cores; {args.jobs} jobs, {args.events} events "
          f"(one job with {args.big})")
    for name in args.stores.split(","):
        if name == "sqlite":
            url = f"sqlite:///{tmp / 'state.db'}"
            measure("sqlite", open_store(url), args, tmp, url)
        else:
            proc, url = start_redis(tmp)
            try:
                measure("redis", open_store(url), args, tmp, url)
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
