"""Issue 11: a real SIGKILL of the pool child at each point of recording a successful step (after the
patch, the metadata, the checkpoint commit, the store write that records the checkpoint with the
attempt's and the step's success, before Celery sends the chain's next step, and after the lease is
released once it was sent) leaves a job that finishes, with checkpoint files and record in agreement."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_selfheal.settings import load_settings
from celery_selfheal.workspace.checkpoints import verify_checkpoint
from tests.integration.conftest import Harness, client_selfheal, start_worker, stop_worker

POINTS = ["patch", "meta", "commit", "attempt", "step", "chain", "released"]


@pytest.fixture(scope="module")
def kill_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One worker for every point (a pool child killed at one point is replaced; the next runs armed)."""
    tmp = tmp_path_factory.mktemp("killpoints")
    settings = load_settings(state_dir=tmp / "state", env={})
    settings.ensure_dirs()
    log_path = tmp / "worker.log"
    proc = start_worker(settings, log_path, app_module="tests.killpoint_app", extra_env={
        "KILLPOINT_DIR": str(tmp), "SELFHEAL_LEASE_TTL_SECONDS": "1.5", "SELFHEAL_SWEEP_INTERVAL_SECONDS": "0.5"})
    try:
        yield Harness(settings=settings, selfheal=client_selfheal(settings), worker=proc, log_path=log_path,
                      tmp=tmp)
    finally:
        stop_worker(proc)


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_point_of_a_checkpoint_leaves_a_job_that_finishes(
        kill_harness: Harness, make_repo: Callable[..., Path], point: str) -> None:
    h = kill_harness
    armed, fired = h.tmp / "armed", h.tmp / "fired"
    fired.unlink(missing_ok=True)
    armed.write_text(point)
    # a new random patch on every run of step 0: a rerun that overwrote the files would no longer
    # match the sha256 the store kept
    job = h.job_file(make_repo(), [{"id": "gen", "instructions": "x", "runtime": [
        "sh", "-c", f"echo {uuid.uuid4().hex} $(od -An -N8 -tx8 /dev/urandom) > gen.txt"]},
        {"id": "use", "instructions": "y", "runtime": ["sh", "-c", "cat gen.txt > used.txt"]}])
    job_id = h.submit(job)
    final = h.wait(job_id, timeout=90)
    assert not armed.exists() and fired.read_text() == point, "the kill point was never reached"
    assert final["status"] == "succeeded", (final.get("failureClass"), final.get("message"))
    assert all(a["status"] != "running" for a in h.attempts(job_id))
    arts = h.ctx.artifacts(job_id)
    for cp in h.ctx.store.list_checkpoints(job_id):
        verify_checkpoint(arts, cp)
