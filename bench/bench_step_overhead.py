#!/usr/bin/env python3
"""Cost of a no-op step (with its checkpoint) against a plain Celery task running the same command.

Both go through the same prefork worker (concurrency 1) on the same embedded filesystem broker:
- celery-selfheal: a job of K steps whose runtime is `true` (attempt record, events, git diff,
  checkpoint patch + metadata, commit), submitted and waited for until `succeeded`;
- baseline: a Celery chain of K `bench.run_command(["true"])` tasks, the last touching a marker file.
Runs alternate between the two; prints the median and worst end-to-end latency and the ratio.

    python bench/bench_step_overhead.py [--runs 20] [--steps 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from celery import Celery, chain

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import make_baseline_repo
from celery_selfheal.api import submit
from celery_selfheal.embedded.local_worker import worker_running
from celery_selfheal.settings import load_settings
from celery_selfheal.wiring.install import SelfHeal


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    repo = make_baseline_repo(tmp)
    settings = load_settings(state_dir=tmp / "state", env={})
    settings.ensure_dirs()
    env = {**os.environ, **settings.as_env(), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench._apps", "worker", "--pool", "prefork",
                               "-c", "1", "--loglevel", "WARNING", "--without-mingle", "--without-gossip",
                               "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"], env=env, stdout=log, stderr=log,
                              start_new_session=True)
    while not worker_running(settings):
        time.sleep(0.05)
    app = Celery("bench-client")
    app.conf.update(settings.celery_conf(), task_default_queue="selfheal", task_ignore_result=True)
    sh = SelfHeal(app, settings)
    ctx = sh.context()
    job_file = tmp / "job.json"
    job_file.write_text(json.dumps({
        "job": {"objective": "noop", "repo": str(repo), "ref": "main", "runtime": ["true"]},
        "steps": [{"id": f"s{i}", "instructions": "nothing"} for i in range(args.steps)]}))

    def selfheal_once() -> float:
        t0 = time.perf_counter()
        job_id = submit(sh, job_file)["jobId"]
        while (ctx.store.get_job(job_id) or {}).get("status") not in ("succeeded", "failed"):
            time.sleep(0.002)
        return time.perf_counter() - t0

    def plain_once() -> float:
        marker = tmp / f"m-{uuid.uuid4().hex}"
        sigs = [app.signature("bench.run_command", args=(["true"],), queue="selfheal", immutable=True)
                for _ in range(args.steps - 1)]
        sigs.append(app.signature("bench.run_command", args=(["true"], str(marker)), queue="selfheal",
                                  immutable=True))
        t0 = time.perf_counter()
        (chain(*sigs) if len(sigs) > 1 else sigs[0]).apply_async()
        while not marker.exists():
            time.sleep(0.002)
        return time.perf_counter() - t0

    try:
        selfheal_once(), plain_once()  # warm-up
        ours, base = [], []
        for _ in range(args.runs):
            ours.append(selfheal_once())
            base.append(plain_once())
    finally:
        worker.terminate()
        worker.wait(30)
    med_o, med_b = statistics.median(ours), statistics.median(base)
    print(f"machine: {os.cpu_count()} cores; {args.runs} runs each, {args.steps} no-op step(s) per job, "
          f"worker prefork -c 1, embedded filesystem broker")
    print(f"celery-selfheal job : median {med_o * 1000:7.1f} ms  worst {max(ours) * 1000:7.1f} ms")
    print(f"plain Celery chain  : median {med_b * 1000:7.1f} ms  worst {max(base) * 1000:7.1f} ms")
    per_step = (med_o - med_b) / args.steps * 1000
    print(f"ratio (median)      : {med_o / med_b:.2f}x   per-step overhead {per_step:.1f} ms")


if __name__ == "__main__":
    main()
