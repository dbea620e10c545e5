#!/usr/bin/env python3
"""Cluster mode on Redis: throughput against plain Celery chains, and recovery time after a worker dies.

Starts its own redis-server (free loopback port, no persistence) and two prefork workers of
``bench._apps`` (the ready app plus ``bench.run_command``), each with its own state dir and
workspace root and a shared artifact root, as two hosts would have.

1. Throughput: ``--jobs`` jobs of ``--steps`` no-op steps (runtime ``true``) submitted at once and
   waited for until all succeeded, against the same number of plain Celery chains of
   ``bench.run_command(["true"])`` on the same broker and workers (the last link touches a marker
   file). Runs alternate; prints median and worst wall time, throughput and the ratio.
2. Recovery: a one-step job whose step sleeps; once it runs, the worker running it is SIGKILLed
   (MainProcess and pool children); prints the time from the kill to the step running again on the
   other worker (median and worst of ``--kills`` runs), with the lease TTL and sweep interval used.

    python bench/bench_cluster.py [--jobs 200] [--steps 3] [--runs 3] [--kills 3] [--concurrency 2]
                                  [--lease-ttl 9] [--sweep-interval 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery, chain

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _cpu  # noqa: E402
from bench._common import make_baseline_repo  # noqa: E402
from celery_selfheal.api import submit  # noqa: E402
from celery_selfheal.cluster.checks import DEFAULT_LEASE_TTL, DEFAULT_SWEEP_INTERVAL  # noqa: E402
from celery_selfheal.embedded.local_worker import worker_running  # noqa: E402
from celery_selfheal.settings import Settings, load_settings  # noqa: E402
from celery_selfheal.wiring.install import SelfHeal  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH")
    port = free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
                             "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0"


class Bench:
    """Redis, workers and a client."""

    def __init__(self, tmp: Path, redis_url: str, concurrency: int, env: dict[str, str]) -> None:
        self.tmp, self.redis_url, self.concurrency, self.env = tmp, redis_url, concurrency, env
        self.artifacts = tmp / "artifacts"
        self.workers: dict[str, tuple[Settings, subprocess.Popen[bytes]]] = {}
        client_settings = self.settings("client")
        self.app = Celery("bench-cluster-client")
        self.app.conf.update(client_settings.celery_conf(), task_default_queue="selfheal", task_ignore_result=True)
        self.sh = SelfHeal(self.app, client_settings)
        self.store = self.sh.context().store
        self.serial = 0

    def settings(self, name: str) -> Settings:
        env = {"SELFHEAL_ARTIFACT_ROOT": str(self.artifacts),
               "SELFHEAL_WORKSPACE_ROOT": str(self.tmp / name / "workspaces")}
        settings = load_settings(state_dir=self.tmp / name / "state", broker_url=self.redis_url, env=env)
        settings.ensure_dirs()
        return settings

    def start(self) -> str:
        """Start a worker ("host"); returns its Celery hostname."""
        self.serial += 1
        name = f"w{self.serial}"
        settings = self.settings(name)
        env = {**os.environ, **settings.as_env(), **self.env, "PYTHONPATH": str(ROOT)}
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench._apps", "worker", "--pool",
                                     "prefork", "-c", str(self.concurrency), "--loglevel", "WARNING",
                                     "--without-mingle", "--without-gossip", "-n", f"{name}@%h"],
                                    env=env, stdout=log, stderr=log, start_new_session=True)
        while not worker_running(settings):
            if proc.poll() is not None:
                sys.exit(f"worker {name} exited; see {self.tmp / f'{name}.log'}")
            time.sleep(0.05)
        host = next((settings.run_dir / "workers").glob("*.lock")).stem
        self.workers[host] = (settings, proc)
        return host

    def kill(self, host: str) -> None:
        """SIGKILL the worker's whole process group (MainProcess and pool children)."""
        _, proc = self.workers.pop(host)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for _, proc in self.workers.values():
            proc.terminate()
        for _, proc in self.workers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def job_file(self, repo: Path, steps: int, runtime: list[str]) -> Path:
        path = self.tmp / f"job-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({"job": {"objective": "bench", "repo": str(repo), "ref": "main",
                                            "runtime": runtime},
                                    "steps": [{"id": f"s{i}", "instructions": "nothing"} for i in range(steps)]}))
        return path

    def selfheal_batch(self, job_file: Path, jobs: int) -> float:
        t0 = time.perf_counter()
        ids = [submit(self.sh, job_file)["jobId"] for _ in range(jobs)]
        # one job at a time, oldest first: a read per job plus one per 20 ms, as cheap for the two
        # cores the workers share as the baseline's marker-file check (reading every pending job every
        # 20 ms took a core's worth of the client's CPU at 200 jobs)
        for job_id in ids:
            while (status := (self.store.get_job(job_id) or {}).get("status")) != "succeeded":
                if status in ("failed", "cancelled"):
                    sys.exit(f"job {job_id} {status}")
                time.sleep(0.02)
        return time.perf_counter() - t0

    def plain_batch(self, jobs: int, steps: int) -> float:
        markers = self.tmp / f"markers-{uuid.uuid4().hex[:6]}"
        markers.mkdir()
        t0 = time.perf_counter()
        for n in range(jobs):
            sigs = [self.app.signature("bench.run_command", args=(["true"],), queue="selfheal", immutable=True)
                    for _ in range(steps - 1)]
            sigs.append(self.app.signature("bench.run_command", args=(["true"], str(markers / str(n))),
                                           queue="selfheal", immutable=True))
            (chain(*sigs) if len(sigs) > 1 else sigs[0]).apply_async()
        while sum(1 for _ in markers.iterdir()) < jobs:
            time.sleep(0.02)
        return time.perf_counter() - t0


def wait_for(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError


def recovery_run(bench: Bench, repo: Path, sleep: float, timeout: float) -> float:
    """Kill the worker running a step; seconds until the step runs again elsewhere."""
    job_id = submit(bench.sh, bench.job_file(repo, 1, ["sleep", str(sleep)]))["jobId"]

    def running() -> dict[str, Any] | None:
        return next((a for a in bench.store.list_attempts(job_id) if a.get("status") == "running"
                     and a.get("pid")), None)

    victim = wait_for(running, 60)
    bench.kill(victim["hostname"])
    killed = time.perf_counter()
    wait_for(lambda: any(a["attempt"] > victim["attempt"] and a.get("status") in ("running", "succeeded")
                         for a in bench.store.list_attempts(job_id)), timeout)
    took = time.perf_counter() - killed
    wait_for(lambda: (bench.store.get_job(job_id) or {}).get("status") == "succeeded", timeout + sleep)
    bench.start()  # back to two workers
    return took


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):7.2f} s  worst {max(values):7.2f} s"


def redis_calls(url: str) -> dict[str, int]:
    """Commands redis-server has run so far, by name (``INFO commandstats``)."""
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def print_commands(commands: dict[str, list[dict[str, float]]]) -> None:
    """Redis commands per step (median over runs), both sides, the most frequent first."""
    for name, label in (("ours", "celery-selfheal"), ("base", "plain Celery")):
        names = {k for run in commands[name] for k in run}
        meds = {k: statistics.median(run.get(k, 0.0) for run in commands[name]) for k in names}
        top = sorted(((v, k) for k, v in meds.items() if v >= 0.05), reverse=True)
        print(f"redis commands per step, {label}: {sum(meds.values()):.1f} = "
              + ", ".join(f"{k} {v:.1f}" for v, k in top))


def print_cpu(cpu: dict[str, list[dict[str, float]]]) -> None:
    """CPU milliseconds per step by process role (median over runs), both sides."""
    roles = sorted({role for runs in cpu.values() for run in runs for role in run})
    print("CPU ms per step        " + "".join(f"{role:>16}" for role in roles) + f"{'total':>10}")
    for name, label in (("ours", "celery-selfheal"), ("base", "plain Celery")):
        meds = {role: statistics.median(run.get(role, 0.0) for run in cpu[name]) for role in roles}
        print(f"{label:<23}" + "".join(f"{meds[r]:16.2f}" for r in roles) + f"{sum(meds.values()):10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--lease-ttl", type=float, default=None,
                        help=f"default: the documented {DEFAULT_LEASE_TTL:g} s (20 s before issue 16)")
    parser.add_argument("--sweep-interval", type=float, default=None,
                        help=f"default: the documented {DEFAULT_SWEEP_INTERVAL:g} s (5 s before issue 16)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    repo = make_baseline_repo(tmp)
    env = {}
    if args.lease_ttl:
        env["SELFHEAL_LEASE_TTL_SECONDS"] = str(args.lease_ttl)
    if args.sweep_interval:
        env["SELFHEAL_SWEEP_INTERVAL_SECONDS"] = str(args.sweep_interval)
    redis_proc, url = start_redis(tmp)
    bench = Bench(tmp, url, args.concurrency, env)
    try:
        bench.start(), bench.start()
        noop = bench.job_file(repo, args.steps, ["true"])
        bench.selfheal_batch(noop, 4), bench.plain_batch(4, args.steps)  # warm-up
        ours, base = [], []
        roles = {redis_proc.pid: "redis-server", os.getpid(): "client",
                 **{proc.pid: "worker" for _, proc in bench.workers.values()}}
        cpu: dict[str, list[dict[str, float]]] = {"ours": [], "base": []}
        commands: dict[str, list[dict[str, float]]] = {"ours": [], "base": []}
        for _ in range(args.runs):
            for name, times, batch in (("ours", ours, lambda: bench.selfheal_batch(noop, args.jobs)),
                                       ("base", base, lambda: bench.plain_batch(args.jobs, args.steps))):
                before, calls = _cpu.snapshot(roles), redis_calls(url)
                times.append(batch())
                cpu[name].append(_cpu.per_step(before, _cpu.snapshot(roles), args.jobs * args.steps))
                commands[name].append({k: (v - calls.get(k, 0)) / (args.jobs * args.steps)
                                       for k, v in redis_calls(url).items()})
        kills = [recovery_run(bench, repo, sleep=3.0, timeout=180) for _ in range(args.kills)]
    finally:
        bench.stop()
        redis_proc.terminate()
        redis_proc.wait()
    steps = args.jobs * args.steps
    med_o, med_b = statistics.median(ours), statistics.median(base)
    print(f"machine: {os.cpu_count()} cores; redis-server on loopback; 2 workers x prefork -c {args.concurrency}; "
          f"{args.jobs} jobs x {args.steps} no-op steps; {args.runs} runs each")
    print(f"celery-selfheal jobs : {fmt(ours)}  -> {steps / med_o:7.1f} steps/s  {args.jobs / med_o:6.1f} jobs/s")
    print(f"plain Celery chains  : {fmt(base)}  -> {steps / med_b:7.1f} steps/s  {args.jobs / med_b:6.1f} jobs/s")
    print(f"throughput ratio     : celery-selfheal = {med_b / med_o:.3f} x plain Celery "
          f"({(med_o - med_b) / steps * 1000 * 2 * args.concurrency:.0f} ms more per step per slot)")
    print_cpu(cpu)
    print_commands(commands)
    ttl = args.lease_ttl or DEFAULT_LEASE_TTL
    sweep = args.sweep_interval or DEFAULT_SWEEP_INTERVAL
    if not kills:
        return
    print(f"worker death -> step running again ({args.kills} kills, lease TTL {ttl:g} s, sweep {sweep:g} s, "
          f"bound {ttl + sweep:g} s + pickup): {fmt(kills)}")


if __name__ == "__main__":
    main()
