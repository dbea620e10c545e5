"""A duplicated step message (redelivery, a submit retried by hand) never reruns a finished step."""

from __future__ import annotations

import re

import pytest

from celery_selfheal.wiring.routing import enqueue_from
from tests.conftest import wait_for
from tests.integration.conftest import Harness

pytestmark = pytest.mark.slow


def test_duplicate_message_for_a_finished_step_does_nothing(harness: Harness, make_repo) -> None:
    repo = make_repo()
    job_id = harness.submit(harness.job_file(repo, [{"id": "one", "instructions": "write a.txt: 1"},
                                                   {"id": "two", "instructions": "write b.txt: 2"}]))
    assert harness.wait(job_id)["status"] == "succeeded"
    job = harness.ctx.store.get_job(job_id)
    assert job is not None
    # the job is over: a duplicate chain from step 0 is a no-op
    over = enqueue_from(harness.selfheal.app, job, 0)
    # and even on a job record that is not terminal, a finished step is not rerun
    harness.ctx.store.update_job(job_id, {"status": "running"})
    again = enqueue_from(harness.selfheal.app, job, 0)

    def stopped(task_id: str) -> bool:
        return re.search(rf"run_step\[{task_id}\] succeeded .*'outcome': 'stop'",
                         harness.log_path.read_text(errors="replace")) is not None

    wait_for(lambda: stopped(over) and stopped(again), "the worker to handle both duplicates")
    assert len(harness.attempts(job_id)) == 2
    assert [len(harness.ctx.store.list_attempts(job_id, i)) for i in (0, 1)] == [1, 1]
