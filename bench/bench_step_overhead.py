#!/usr/bin/env python3
"""Cost of a no-op step (with its checkpoint) against a plain Celery task running the same command.

Both go through the same prefork worker (concurrency 1) on the same embedded filesystem broker:
- celery-selfheal: a job of K steps whose runtime is `true` (attempt record, events, git diff,
  checkpoint patch + metadata, commit), submitted and waited for until `succeeded`;
- baseline: a Celery chain of K `bench.run_command(["true"])` tasks, the last touching a marker file.
Runs alternate between the two; prints the median and worst end-to-end latency and the ratio.
Each run ends with one more plain `run_command` task on the same single slot, waited for as well: the
job's status is stored before its last task has returned (releasing the lease, writing the attempt
artifact, the ack), and without that barrier the tail of one run would be counted in the next one
(the plain chain). Both sides carry the same barrier task, so the difference is exact.

    python bench/bench_step_overhead.py [--runs 20] [--steps 1] [--poll 0.05]

The embedded broker polls its folder every 50 ms, so each hop waits up to a tick and small costs
hide in the slack or cost a whole tick; `--poll 0.002` (both sides, the bench's worker only) shows
the cost without that rounding.
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
    parser.add_argument("--poll", type=float, default=None,
                        help="the embedded broker's polling interval in s (default: the product's 0.05)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    repo = make_baseline_repo(tmp)
    settings = load_settings(state_dir=tmp / "state", env={})
    settings.ensure_dirs()
    env = {**os.environ, **settings.as_env(), "PYTHONPATH": os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"), str(Path(__file__).resolve().parent.parent)) if p)}
    if args.poll is not None:
        env["BENCH_POLLING_INTERVAL"] = str(args.poll)
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

    def barrier() -> None:
        marker = tmp / f"b-{uuid.uuid4().hex}"
        app.signature("bench.run_command", args=(["true"], str(marker)), queue="selfheal").apply_async()
        while not marker.exists():
            time.sleep(0.002)

    def selfheal_once() -> float:
        t0 = time.perf_counter()
        job_id = submit(sh, job_file)["jobId"]
        while (ctx.store.get_job(job_id) or {}).get("status") not in ("succeeded", "failed"):
            time.sleep(0.002)
        barrier()
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
        barrier()
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
          f"worker prefork -c 1, embedded filesystem broker, "
          f"each run ended by one plain barrier task; broker poll {args.poll or 0.05:g} s")
    print(f"celery-selfheal job : median {med_o * 1000:7.1f} ms  worst {max(ours) * 1000:7.1f} ms")
    print(f"plain Celery chain  : median {med_b * 1000:7.1f} ms  worst {max(base) * 1000:7.1f} ms")
    per_step = (med_o - med_b) / args.steps * 1000
    print(f"ratio (median)      : {med_o / med_b:.2f}x   per-step overhead {per_step:.1f} ms")


if __name__ == "__main__":
    main()
