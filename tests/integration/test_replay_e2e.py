"""Hard reset and resume by verified checkpoint replay, on a real worker (issue 3 "Must show")."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.api import recover
from tests.integration.conftest import Harness, names

pytestmark = pytest.mark.slow

STEPS = [
    {"id": "add", "instructions": "write docs/guide.md: guide\nwrite bin/blob.bin: \x00binary"},
    {"id": "modify", "instructions": "write src/app.py: print('v2')"},
    {"id": "more", "instructions": "write src/util.py: X = 1\nwrite docs/guide.md: guide v2"},
]


def last_tree(harness: Harness, job_id: str) -> str:
    cps = harness.ctx.store.list_checkpoints(job_id)
    return str(max(cps, key=lambda c: c["stepIndex"])["treeAfter"])


def straight_tree(harness: Harness, repo: Path, steps: list[dict[str, Any]]) -> str:
    job_id = harness.submit(harness.job_file(repo, steps))
    assert harness.wait(job_id)["status"] == "succeeded"
    return last_tree(harness, job_id)


def test_no_progress_hard_reset_replays_earlier_steps_and_succeeds(harness: Harness, make_repo) -> None:
    repo = make_repo()
    final = {"id": "finish", "instructions": "fail-unless-hard-reset\nwrite CHANGELOG.md: done"}
    job_id = harness.submit(harness.job_file(repo, [*STEPS, final], soft_reset_backoff_seconds=0.05))
    job = harness.wait(job_id)
    assert job["status"] == "succeeded", job
    step3 = [a for a in harness.attempts(job_id) if a["stepIndex"] == 3]
    assert [a["attemptStrategy"] for a in step3] == ["initial", "soft_reset", "hard_reset"]
    assert step3[1]["detector"] == "no_progress"
    evs = harness.events(job_id)
    assert [e["strategy"] for e in evs if e["event"] == "task.self_heal.escalated"] == ["hard_reset"]
    assert job["resetsUsed"] == 1
    # the rebuilt workspace ends exactly where a run without the failures ends
    clean = {"id": "finish", "instructions": "write CHANGELOG.md: done"}
    assert last_tree(harness, job_id) == straight_tree(harness, make_repo("straight"), [*STEPS, clean])
    ws = harness.ctx.workspace_path(job_id)
    assert (ws / "docs/guide.md").read_text() == "guide v2\n"


def _finished_job(harness: Harness, repo: Path) -> str:
    job_id = harness.submit(harness.job_file(repo, STEPS))
    assert harness.wait(job_id)["status"] == "succeeded"
    return job_id


def _wait_status(harness: Harness, job_id: str, wanted: tuple[str, ...], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = harness.ctx.store.get_job(job_id) or {}
        if job.get("status") in wanted and not harness.ctx.store.pending_control(job_id):
            return dict(job)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {wanted}")


@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_damaged_checkpoint_stops_the_job_loudly(harness: Harness, make_repo, damage: str) -> None:
    job_id = _finished_job(harness, make_repo())
    arts = harness.ctx.artifacts(job_id)
    patch = arts.patch_path(1)
    if damage == "tampered":
        patch.write_bytes(patch.read_bytes().replace(b"v2", b"v3"))
    else:
        patch.unlink()
    ws = harness.ctx.workspace_path(job_id)
    before = (ws / "src/app.py").read_text()
    recover(harness.selfheal, job_id, "resume_from_step", step="more", reason="test replay", actor="tester")
    job = _wait_status(harness, job_id, ("failed",))
    assert job["terminalReason"] == "deterministic_repo"
    assert "step 1" in job["message"] and "patches/steps/step-0001.patch" in job["message"], job["message"]
    assert ("sha256" in job["message"]) if damage == "tampered" else ("missing" in job["message"])
    assert names(harness.events(job_id))[-1] == "task.job.failed"
    # evidence kept, old workspace untouched
    assert patch.exists() == (damage == "tampered")
    assert (ws / "src/app.py").read_text() == before
    assert arts.step_state_path(1).exists()


def test_hand_edited_workspace_is_rebuilt_before_the_next_step(harness: Harness, make_repo) -> None:
    repo = make_repo()
    steps = [{"id": "first", "instructions": "sleep 1.0\nwrite one.txt: 1"},
             {"id": "second", "instructions": "write two.txt: 2"}]
    job_id = harness.submit(harness.job_file(repo, steps))
    deadline = time.monotonic() + 20
    while not harness.attempts(job_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    recover(harness.selfheal, job_id, "pause", reason="inspect", actor="tester")
    _wait_status(harness, job_id, ("paused",))
    ws = harness.ctx.workspace_path(job_id)
    (ws / "one.txt").write_text("hand edit\n")
    (ws / "stray.txt").write_text("left behind\n")
    recover(harness.selfheal, job_id, "resume", reason="go on", actor="tester")
    assert harness.wait(job_id)["status"] == "succeeded"
    assert (ws / "one.txt").read_text() == "1\n"
    assert not (ws / "stray.txt").exists()
    meta = json.loads(harness.ctx.artifacts(job_id).step_state_path(1).read_text())
    assert meta["changedFiles"] == ["two.txt"]
    assert last_tree(harness, job_id) == straight_tree(harness, make_repo("straight"),
                                                       [{"id": "first", "instructions": "write one.txt: 1"},
                                                        steps[1]])
