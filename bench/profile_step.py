#!/usr/bin/env python3
"""Where a no-op step's time goes: git processes, store calls, fsyncs, event emits, the runtime.

Runs jobs of ``--steps`` no-op steps (runtime ``true``) in-process through the real task body
(``Task.apply``, embedded SQLite store, real git repository) and times, per step: every git
subprocess, every store method, every ``os.fsync``, every event emit and the runtime itself.
Prints the median per step of each part over ``--jobs`` jobs, and the counts.

    python bench/profile_step.py [--jobs 10] [--steps 3] [--store sqlite|redis]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import make_baseline_repo

Totals = collections.defaultdict[str, float]


def _timed(totals: Totals, counts: collections.Counter[str], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - t0
            counts[key] += 1
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    repo = make_baseline_repo(tmp)
    os.environ["SELFHEAL_STATE_DIR"] = str(tmp / "state")
    from celery import Celery

    from celery_selfheal.api import submit
    from celery_selfheal.runtime import supervisor
    from celery_selfheal.settings import load_settings
    from celery_selfheal.wiring.install import SelfHeal

    broker = None
    if args.store == "redis":
        from bench.bench_cluster import start_redis

        redis_proc, broker = start_redis(tmp)
    settings = load_settings(broker_url=broker)
    app = Celery("profile")
    app.conf.update(settings.celery_conf())
    sh = SelfHeal(app, settings)
    ctx = sh.context()
    job_file = tmp / "job.json"
    job_file.write_text(json.dumps({
        "job": {"objective": "noop", "repo": str(repo), "ref": "main", "runtime": ["true"]},
        "steps": [{"id": f"s{i}", "instructions": "nothing"} for i in range(args.steps)]}))
    totals: Totals = collections.defaultdict(float)
    counts: collections.Counter[str] = collections.Counter()
    real_run = subprocess.run

    def run(cmd: Any, *a: Any, **k: Any) -> Any:
        key = f"git {cmd[len([c for c in cmd if c == '-c']) * 2 + 1]}" if cmd and cmd[0] == "git" else "subprocess"
        return _timed(totals, counts, key, real_run)(cmd, *a, **k)

    subprocess.run = run  # type: ignore[assignment]
    if broker is not None:  # every command or pipeline the store sends is one round trip to Redis
        import redis.connection

        send = redis.connection.AbstractConnection.send_packed_command
        redis.connection.AbstractConnection.send_packed_command = _timed(  # type: ignore[method-assign]
            totals, counts, "redis round trips", send)
    os.fsync = _timed(totals, counts, "fsync", os.fsync)  # type: ignore[assignment]
    store = ctx.store
    for name in dir(type(store)):
        if not name.startswith("_") and callable(getattr(store, name)):
            setattr(store, name, _timed(totals, counts, f"store.{name}", getattr(store, name)))
    supervisor_run = supervisor.run_runtime
    import celery_selfheal.steps.attempt as attempt_mod
    attempt_mod.run_runtime = _timed(totals, counts, "runtime (supervisor)", supervisor_run)  # type: ignore[assignment]
    per_job: list[float] = []
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.jobs + 1):
        job = submit(sh, job_file)
        totals.clear()
        counts.clear()
        t0 = time.perf_counter()
        for i in range(args.steps):
            sh.run_step.apply(kwargs={"job_id": job["jobId"], "step_index": i, "epoch": 0})
        per_job.append(time.perf_counter() - t0)
        for key, value in totals.items():
            samples[key].append(value / args.steps)
        samples["#" + "counts"].append(0)
        last_counts = dict(counts)
    per_job, samples = per_job[1:], {k: v[1:] for k, v in samples.items()}  # drop the warm-up job
    step = statistics.median(per_job) / args.steps * 1000
    print(f"machine: {os.cpu_count()} cores; {args.jobs} jobs x {args.steps} no-op steps in-process, "
          f"{args.store} store")
    print(f"{'part':34} {'ms/step':>8} {'calls/step':>10}")
    print(f"{'whole step (task body)':34} {step:8.1f}")
    for key in sorted(samples, key=lambda k: -statistics.median(samples[k])):
        if key.startswith("#"):
            continue
        print(f"{key:34} {statistics.median(samples[key]) * 1000:8.2f} {last_counts.get(key, 0) / args.steps:10.1f}")
    if broker is not None:
        redis_proc.terminate()


if __name__ == "__main__":
    main()
