"""Issue 11: a real SIGKILL of the pool child at each point of recording a successful step (after the
patch, the metadata, the checkpoint commit, the store's checkpoint record, the attempt's status, the
step's status, and after the lease release before the chain's next message is sent) leaves a job
that finishes, with checkpoint files and record in agreement."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_selfheal.settings import load_settings
from celery_selfheal.workspace.checkpoints import verify_checkpoint
from tests.integration.conftest import Harness, client_selfheal, start_worker, stop_worker

POINTS = ["patch", "meta", "commit", "record", "attempt", "step", "released"]


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_point_of_a_checkpoint_leaves_a_job_that_finishes(
        tmp_path: Path, make_repo: Callable[..., Path], point: str) -> None:
    settings = load_settings(state_dir=tmp_path / "state", env={})
    settings.ensure_dirs()
    marker = tmp_path / "killed"
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings, log_path, app_module="tests.killpoint_app", extra_env={
        "KILLPOINT_AT": point, "KILLPOINT_MARKER": str(marker),
        "SELFHEAL_LEASE_TTL_SECONDS": "1.5", "SELFHEAL_SWEEP_INTERVAL_SECONDS": "0.5"})
    try:
        h = Harness(settings=settings, selfheal=client_selfheal(settings), worker=proc, log_path=log_path,
                    tmp=tmp_path)
        # a new random patch on every run of step 0: a rerun that overwrote the files would no longer
        # match the sha256 the store kept
        job = h.job_file(make_repo(), [{"id": "gen", "instructions": "x", "runtime": [
            "sh", "-c", f"echo {uuid.uuid4().hex} $(od -An -N8 -tx8 /dev/urandom) > gen.txt"]},
            {"id": "use", "instructions": "y", "runtime": ["sh", "-c", "cat gen.txt > used.txt"]}])
        job_id = h.submit(job)
        final = h.wait(job_id, timeout=90)
        assert marker.exists(), "the kill point was never reached"
        assert final["status"] == "succeeded", (final.get("failureClass"), final.get("message"))
        assert all(a["status"] != "running" for a in h.attempts(job_id))
        arts = h.ctx.artifacts(job_id)
        for cp in h.ctx.store.list_checkpoints(job_id):
            verify_checkpoint(arts, cp)
    finally:
        stop_worker(proc)
