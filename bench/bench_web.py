#!/usr/bin/env python3
"""The console's figures (issue 13, "Must show"), on this machine:

1. event persisted -> received by an SSE client: median and worst over 100 events, SQLite and Redis,
   at the default poll interval and two others (what the embedded store's polling costs), plus the
   console's CPU while one client follows an idle job;
2. ``GET /api/jobs`` first page (limit 50) with 10,000 jobs in the store, SQLite and Redis (also the
   status filter and a page deep in the cursor);
3. the per-step time of a job on a real prefork worker with 0 and with 50 SSE clients following it;
4. pause clicked in the console (headless Chromium) -> the worker's ack shown on the page.

The console always runs as its own process (``--serve``), as ``selfheal web`` does.

    python bench/bench_web.py [--events 100] [--jobs 10000] [--runs 5] [--skip-browser]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench._common import make_baseline_repo
from celery_selfheal.embedded.local_worker import worker_running
from celery_selfheal.settings import Settings, load_settings

TOKEN = "bench-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(args: argparse.Namespace) -> None:
    """The console process: the ready app's settings from flags, one named token, uvicorn."""
    import uvicorn

    from celery_selfheal.web.app import build_app
    from celery_selfheal.web.auth import Tokens
    from tests.integration.conftest import client_selfheal

    settings = load_settings(state_dir=args.state_dir, broker_url=args.broker or None, env={})
    app = build_app(client_selfheal(settings), Tokens({"bench": TOKEN}, explicit=True, source="bench"), poll=args.poll)
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning", lifespan="off")


class Console:
    """A console subprocess on a state dir / broker."""

    def __init__(self, settings: Settings, broker: str | None, poll: float | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, __file__, "--serve", "--state-dir", str(settings.state_dir), "--port", str(self.port)]
        if broker:
            argv += ["--broker", broker]
        if poll is not None:
            argv += ["--poll", str(poll)]
        self.proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("console did not start") from None
                time.sleep(0.05)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def fake_job(job_id: str, status: str = "running", steps: int = 3) -> dict[str, Any]:
    """A job record shaped like a submitted one (objective, spec, step states)."""
    now = "2026-01-01T00:00:00.000Z"
    return {"jobId": job_id, "status": status, "epoch": 0, "createdAt": now, "updatedAt": now, "finishedAt": None,
            "currentStep": 0, "paused": False, "takeover": False, "parked": None,
            "spec": {"objective": f"objective of {job_id}", "steps": [{"id": f"s{i}"} for i in range(steps)]},
            "steps": [{"stepId": f"s{i}", "stepIndex": i, "title": f"step {i}", "status": "pending", "attempts": 0,
                       "round": 0} for i in range(steps)]}


def sse_reader(console: Console, job_id: str, after: int, sink: list[float], ready: threading.Event,
               stop_after: int | None = None) -> None:
    """Follow the stream; append receive-time minus the event's ``sentAt`` to ``sink``."""
    with console.client() as http, http.stream("GET", f"/api/jobs/{job_id}/events/stream?after={after}") as resp:
        ready.set()
        for line in resp.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "sentAt" in event:
                    sink.append(time.time() - event["sentAt"])
                if stop_after is not None and len(sink) >= stop_after:
                    return


def bench_sse(settings: Settings, broker: str | None, events: int, poll: float | None) -> dict[str, float]:
    from celery_selfheal.context import build_context

    ctx = build_context(settings)
    job_id = f"sse-{uuid.uuid4().hex[:8]}"
    ctx.store.create_job(fake_job(job_id))
    console = Console(settings, broker, poll)
    try:
        lags: list[float] = []
        ready = threading.Event()
        reader = threading.Thread(target=sse_reader, args=(console, job_id, 0, lags, ready, events), daemon=True)
        reader.start()
        ready.wait(10)
        time.sleep(0.5)
        cpu0, t0 = console.cpu_seconds(), time.monotonic()
        time.sleep(5)  # one client following a quiet job: what the polling costs
        idle_cpu = (console.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        for n in range(events):
            ctx.store.append_event(job_id, {"event": "task.step.attempt.started", "jobId": job_id, "attempt": n,
                                            "ts": "x", "sentAt": time.time()})
            time.sleep(0.03 + (n % 7) * 0.005)  # not in step with the poll
        reader.join(30)
        assert len(lags) == events, len(lags)
        ms = sorted(x * 1000 for x in lags)
        return {"median_ms": statistics.median(ms), "worst_ms": ms[-1], "idle_cpu_pct": idle_cpu * 100}
    finally:
        console.stop()


def bench_list(settings: Settings, broker: str | None, jobs: int) -> dict[str, float]:
    from celery_selfheal.context import build_context

    ctx = build_context(settings)
    t0 = time.monotonic()
    for n in range(jobs):
        ctx.store.create_job(fake_job(f"list-{n:06d}", "failed" if n % 10 == 3 else "succeeded"))
    fill = time.monotonic() - t0
    console = Console(settings, broker)
    try:
        with console.client() as http:
            def timed(params: dict[str, Any]) -> float:
                samples = []
                for _ in range(30):
                    t = time.perf_counter()
                    body = http.get("/api/jobs", params=params).json()
                    samples.append((time.perf_counter() - t) * 1000)
                    assert len(body["jobs"]) == params.get("limit", 50), body
                return statistics.median(samples)

            first = timed({"limit": 50})
            failed = timed({"limit": 50, "status": "failed"})
            cursor = ""
            for _ in range(min(100, jobs // 50 - 2)):  # 100 pages down: 5,000 jobs in
                cursor = http.get("/api/jobs", params={"limit": 50, "cursor": cursor}).json()["next"]
            deep = timed({"limit": 50, "cursor": cursor})
        return {"fill_s": fill, "first_page_ms": first, "status_filter_ms": failed, "page_100_ms": deep}
    finally:
        console.stop()


def start_worker(settings: Settings, tmp: Path, concurrency: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.as_env()}
    log = open(tmp / "worker.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_selfheal.app", "worker", "--pool",
                             "prefork", "-c", str(concurrency), "--loglevel", "WARNING", "--without-mingle",
                             "--without-gossip", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"],
                            env=env, stdout=log, stderr=log, start_new_session=True)
    while not worker_running(settings):
        time.sleep(0.05)
    return proc


class RawFollowers:
    """``n`` SSE clients on raw sockets, read by one selector thread that only drains them: the
    clients' own cost stays out of the measurement (browsers would be on other machines)."""

    def __init__(self, console: Console, job_id: str, n: int) -> None:
        import selectors

        self.sel = selectors.DefaultSelector()
        request = (f"GET /api/jobs/{job_id}/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n").encode()
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", console.port))
            sock.sendall(request)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ)
        self.open, self.bytes = n, 0
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while self.open:
            for key, _ in self.sel.select(timeout=1):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                self.bytes += len(data)
                if not data or data.endswith(b"0\r\n\r\n"):  # the chunked stream's end
                    self.sel.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
                    self.open -= 1

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


def bench_followers(tmp: Path, runs: int, clients: int = 50, steps: int = 8) -> dict[str, float]:
    from celery_selfheal.api import submit
    from tests.integration.conftest import client_selfheal, stop_worker

    settings = load_settings(state_dir=tmp / "followers", env={})
    settings.ensure_dirs()
    repo = make_baseline_repo(tmp / "followers")
    worker = start_worker(settings, tmp, 1)
    sh = client_selfheal(settings)
    ctx = sh.context()
    console = Console(settings, None)
    job_file = tmp / "followers.json"
    job_file.write_text(json.dumps({"job": {"objective": "followers", "repo": str(repo), "ref": "main",
                                            "runtime": [sys.executable, "-c", "print('step')"]},
                                    "steps": [{"id": "warmup", "instructions": "x", "runtime": ["sleep", "3"]}]
                                    + [{"id": f"s{i}", "instructions": "x"} for i in range(steps)]}))

    cpu: list[float] = []

    def one(n_clients: int) -> float:
        job_id = submit(sh, job_file)["jobId"]
        followers = RawFollowers(console, job_id, n_clients) if n_clients else None
        cpu0 = console.cpu_seconds()
        while (ctx.store.get_job(job_id) or {}).get("status") not in ("succeeded", "failed"):
            time.sleep(0.05)
        if followers:
            followers.join(30)
            assert followers.open == 0 and followers.bytes > 0
            cpu.append(console.cpu_seconds() - cpu0)
        atts = [a for a in ctx.store.list_attempts(job_id) if a["stepIndex"] >= 1]
        first, last = min(a["startedAt"] for a in atts), max(a["finishedAt"] for a in atts)
        from datetime import datetime

        span = (datetime.fromisoformat(last.replace("Z", "+00:00"))
                - datetime.fromisoformat(first.replace("Z", "+00:00"))).total_seconds()
        return span / steps

    try:
        base, loaded = [], []
        for _ in range(runs):  # alternate, so drift on a shared machine hits both alike
            base.append(one(0))
            loaded.append(one(clients))
        b, m = statistics.median(base), statistics.median(loaded)
        return {"per_step_0_clients_ms": b * 1000, f"per_step_{clients}_clients_ms": m * 1000,
                "change_pct": (m - b) / b * 100, "console_cpu_s": statistics.median(cpu)}
    finally:
        console.stop()
        stop_worker(worker)


def bench_pause_ack(tmp: Path, runs: int) -> dict[str, float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from celery_selfheal.api import submit
    from tests.integration.conftest import client_selfheal, stop_worker
    from tests.web.browser import FLAGS

    settings = load_settings(state_dir=tmp / "pause", env={})
    settings.ensure_dirs()
    repo = make_baseline_repo(tmp / "pause")
    worker = start_worker(settings, tmp, 2)
    sh = client_selfheal(settings)
    ctx = sh.context()
    console = Console(settings, None)
    job_file = tmp / "pause.json"
    job_file.write_text(json.dumps({"job": {"objective": "pause", "repo": str(repo), "ref": "main",
                                            "runtime": ["sleep", "30"]},
                                    "steps": [{"id": "long", "instructions": "x"},
                                              {"id": "next", "instructions": "x"}]}))
    profile = tempfile.mkdtemp(prefix="bench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"{console.url}/login?token={TOKEN}")
        samples = []
        for _ in range(runs):
            job_id = submit(sh, job_file)["jobId"]
            driver.get(f"{console.url}/jobs/{job_id}")
            wait(lambda: driver.find_elements("css selector", ".step tr.attempt.running"))
            wait(lambda: driver.find_element("id", "action-pause").get_attribute("disabled") is None)
            t0 = time.perf_counter()
            driver.find_element("id", "action-pause").click()
            wait(lambda: driver.find_elements("css selector", '#events li[data-event="task.control.recovery.ack"]'))
            samples.append((time.perf_counter() - t0) * 1000)
            with console.client() as http:
                http.post(f"/api/jobs/{job_id}/control", json={"action": "cancel"})
            wait(lambda j=job_id: (ctx.store.get_job(j) or {}).get("status") == "cancelled")
        return {"median_ms": statistics.median(samples), "worst_ms": max(samples)}
    finally:
        driver.quit()
        console.stop()
        stop_worker(worker)


def wait(pred: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir")
    parser.add_argument("--broker")
    parser.add_argument("--port", type=int)
    parser.add_argument("--poll", type=float, default=None)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument("--only", choices=["sse", "list", "followers", "pause"], action="append")
    args = parser.parse_args()
    if args.serve:
        if args.poll is None:
            from celery_selfheal.web.sse import POLL_SECONDS

            args.poll = POLL_SECONDS
        serve(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    redis_proc, redis_url = start_redis(tmp)
    try:
        only = set(args.only or ("sse", "list", "followers", "pause"))
        for name, broker in (("sqlite", None), ("redis", redis_url)) if "sse" in only else ():
            for poll in (None, 0.05, 0.25):
                settings = load_settings(state_dir=tmp / f"sse-{name}-{poll}", broker_url=broker, env={})
                settings.ensure_dirs()
                r = bench_sse(settings, broker, args.events, poll)
                label = "default 0.1 s" if poll is None else f"{poll} s"
                print(f"SSE {name:6} poll {label:13}: event persisted -> client median {r['median_ms']:.0f} ms, "
                      f"worst {r['worst_ms']:.0f} ms over {args.events}; idle console CPU {r['idle_cpu_pct']:.1f} %",
                      flush=True)
        for name, broker in (("sqlite", None), ("redis", redis_url)) if "list" in only else ():
            settings = load_settings(state_dir=tmp / f"list-{name}", broker_url=broker, env={})
            settings.ensure_dirs()
            if broker:
                import redis

                redis.Redis.from_url(broker).flushdb()
            r = bench_list(settings, broker, args.jobs)
            print(f"/api/jobs {name:6} with {args.jobs} jobs: first page {r['first_page_ms']:.1f} ms, "
                  f"status=failed {r['status_filter_ms']:.1f} ms, page 101 {r['page_100_ms']:.1f} ms "
                  f"(median of 30; filled in {r['fill_s']:.0f} s)", flush=True)
        r = bench_followers(tmp, args.runs) if "followers" in only else None
        if r:
            print(f"per-step time: {r['per_step_0_clients_ms']:.0f} ms with 0 SSE clients, "
                  f"{r['per_step_50_clients_ms']:.0f} ms with 50 ({r['change_pct']:+.1f} %; "
                  f"medians of {args.runs} jobs); console CPU {r['console_cpu_s']:.2f} s per followed job",
                  flush=True)
        if not args.skip_browser and "pause" in only:
            r = bench_pause_ack(tmp, args.runs)
            print(f"pause clicked -> worker's ack on the page: median {r['median_ms']:.0f} ms, "
                  f"worst {r['worst_ms']:.0f} ms over {args.runs}", flush=True)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


if __name__ == "__main__":
    main()
