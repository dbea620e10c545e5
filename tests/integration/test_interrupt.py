"""Interrupting ``selfheal run`` with real signals: it says at once that the job goes on and how to
follow it, stops the local worker it started (a second signal forces it), exits 130 / 143, and the
job is left to run on (not cancelled, not failed)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.context import build_context
from celery_selfheal.settings import load_settings
from tests.conftest import process_alive
from tests.integration.conftest import AGENT
from tests.integration.test_controls import wait_for

pytestmark = pytest.mark.slow
SELFHEAL = [sys.executable, "-c", "from celery_selfheal.cli.main import main; main()"]


def start_run(tmp: Path, repo: Path) -> tuple[subprocess.Popen[str], Any, Path]:
    state = tmp / "state"
    job = tmp / "job.json"
    job.write_text(json.dumps({"job": {"objective": "interrupt me", "repo": str(repo), "ref": "main",
                                       "runtime": [sys.executable, AGENT]},
                               "steps": [{"id": "long", "instructions": "sleep 120"}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    proc = subprocess.Popen([*SELFHEAL, "run", str(job), "--state-dir", str(state)], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx = build_context(load_settings(state_dir=state, env={}), sinks=[])
    return proc, ctx, state


def running(ctx: Any) -> dict[str, Any] | None:
    jobs = ctx.store.list_jobs()
    if not jobs:
        return None
    return next((a for a in ctx.store.list_attempts(jobs[0]["jobId"]) if a["status"] == "running" and a.get("pid")),
                None)


def worker_pid(state: Path) -> int:
    (lock,) = (state / "run" / "workers").glob("*.lock")
    return int(lock.read_text())


class Lines:
    """The CLI's stderr lines as they come (a reader thread: pipes buffer more than one line)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        assert proc.stderr is not None
        stream = proc.stderr
        self.reader = threading.Thread(target=lambda: [self.queue.put(line) for line in stream], daemon=True)
        self.reader.start()

    def next(self, timeout: float) -> str:
        """The next line, failing if it takes longer than ``timeout`` (the CLI says it 'at once')."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing on stderr within {timeout}s") from None

    def rest(self) -> str:
        """Every line left once the CLI has exited (its stderr closed)."""
        self.reader.join(10)
        out = []
        while not self.queue.empty():
            out.append(self.queue.get())
        return "".join(out)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_says_the_job_goes_on_and_stops_its_worker(tmp_path: Path, make_repo, sig: int,
                                                                   code: int) -> None:
    proc, ctx, state = start_run(tmp_path, make_repo())
    try:
        attempt = wait_for(lambda: running(ctx), "the attempt to run", timeout=60)
        worker, lines = worker_pid(state), Lines(proc)
        proc.send_signal(sig)
        line = lines.next(2.0)
        job_id = attempt["jobId"]
        assert line.strip() == (f"selfheal: interrupted; job {job_id} goes on. Follow it with: "
                                f"selfheal follow {job_id} --state-dir {state}"), line
        assert "stopping the local worker (Ctrl-C again to force)" in lines.next(2.0)
        assert proc.wait(30) == code
        assert not process_alive(worker), "the local worker outlived the CLI"
        wait_for(lambda: not process_alive(attempt["pid"]), "the runtime to end with its worker", timeout=10)
        rest = lines.rest()
        assert "Traceback" not in rest and "Aborted" not in rest, rest
        assert ctx.store.get_job(job_id)["status"] == "running"  # not cancelled, not failed: it goes on
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_signal_forces_the_worker_down(tmp_path: Path, make_repo) -> None:
    proc, ctx, state = start_run(tmp_path, make_repo())
    try:
        attempt = wait_for(lambda: running(ctx), "the attempt to run", timeout=60)
        worker, lines = worker_pid(state), Lines(proc)
        proc.send_signal(signal.SIGINT)
        lines.next(2.0)
        assert "stopping the local worker" in lines.next(2.0)
        proc.send_signal(signal.SIGINT)  # the warm shutdown would wait for the running step (120 s)
        try:
            assert proc.wait(30) == 130
        except subprocess.TimeoutExpired:
            raise AssertionError("the second Ctrl-C did not force the stop") from None
        assert not process_alive(worker)
        wait_for(lambda: not process_alive(attempt["pid"]), "the runtime to end with its worker", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
