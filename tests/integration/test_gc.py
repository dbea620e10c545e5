"""Day-two operations against a real prefork worker on the embedded default: ``selfheal gc``,
``[retention]`` workspace pruning, ``selfheal artifacts`` when the artifacts are elsewhere, and the
embedded broker keeping no processed messages."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from celery_selfheal.cluster.checks import cluster_options
from celery_selfheal.cluster.sweeper import Sweeper
from celery_selfheal.context import build_context
from celery_selfheal.control.remote import recover
from celery_selfheal.wiring.routing import enqueue_from
from tests.integration.conftest import Harness
from tests.integration.test_controls import running_attempt, wait_for

pytestmark = pytest.mark.slow
SELFHEAL = [sys.executable, "-c", "from celery_selfheal.cli.main import main; main()"]


def cli(h: Harness, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}, **h.settings.as_env(), **env}
    return subprocess.run([*SELFHEAL, *args], env=full, cwd=h.tmp, capture_output=True, text=True, timeout=60)


def test_gc_removes_finished_jobs_only(harness: Harness, make_repo) -> None:
    repo = make_repo()
    ok = harness.submit(harness.job_file(repo, [{"id": "a", "instructions": "write a.txt: a"}]))
    failed = harness.submit(harness.job_file(repo, [{"id": "f", "instructions": "fail 65 schema invalid"}]))
    assert harness.wait(ok)["status"] == "succeeded" and harness.wait(failed)["status"] == "failed"
    busy = harness.submit(harness.job_file(repo, [{"id": "long", "instructions": "sleep 60"}]))
    wait_for(lambda: running_attempt(harness, busy, 0), "the long attempt to run")
    ctx = harness.ctx
    # a leftover message of the finished job, on a queue no worker reads
    enqueue_from(harness.selfheal.app, ctx.store.get_job(ok), 0, queue="nobody-reads-this")
    queue = harness.settings.broker_dir / "queue"
    assert [p for p in queue.glob("*.nobody-reads-this.msg")]
    folders = {j: (ctx.workspace_path(j), ctx.artifacts(j).base) for j in (ok, failed, busy)}
    assert all(p.exists() for j in (ok, busy) for p in folders[j])

    r = cli(harness, "gc", "--older-than", "1d")
    assert r.returncode == 0 and r.stdout.strip().endswith("removed 0 jobs finished more than 1d ago"), r.stdout
    r = cli(harness, "gc", "--older-than", "0s", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert {line.split()[2] for line in lines[:-1]} == {ok, failed} and lines[-1].startswith("would remove 2 jobs")
    assert f"would remove {ok} (succeeded, finished " in r.stdout and "1 broker messages" in r.stdout
    assert ctx.store.get_job(ok) is not None and folders[ok][0].exists()  # dry run: nothing removed

    r = cli(harness, "gc", "--older-than", "0s")
    assert r.returncode == 0 and "removed 2 jobs finished more than 0s ago" in r.stdout, r.stdout + r.stderr
    for j in (ok, failed):
        assert ctx.store.get_job(j) is None and ctx.store.list_events(j) == [] and ctx.store.list_attempts(j) == []
        assert not any(p.exists() for p in folders[j])
    assert not list(queue.glob("*.nobody-reads-this.msg"))
    # the running job is untouched and still runs
    assert ctx.store.get_job(busy)["status"] == "running" and all(p.exists() for p in folders[busy])
    assert running_attempt(harness, busy, 0)
    # the embedded broker keeps no processed messages (store_processed is off)
    assert list((harness.settings.broker_dir / "processed").iterdir()) == []

    r = cli(harness, "gc", "--older-than", "1w")
    assert r.returncode == 2 and r.stderr.strip().startswith("selfheal: error: --older-than: invalid duration")
    recover(harness.selfheal, busy, "cancel", actor="tester")
    harness.wait(busy)


def test_retention_prunes_workspaces_of_succeeded_jobs(harness: Harness, make_repo) -> None:
    repo = make_repo()
    ok = harness.submit(harness.job_file(repo, [{"id": "a", "instructions": "write a.txt: a"}]))
    failed = harness.submit(harness.job_file(repo, [{"id": "f", "instructions": "fail 65 schema invalid"}]))
    harness.wait(ok)
    harness.wait(failed)
    settings = dataclasses.replace(harness.settings, retention={"succeeded_workspace_max_age": "0s"})
    ctx = build_context(settings, sinks=[])
    sweeper = Sweeper(harness.selfheal.app, ctx, "test", cluster_options({}))
    assert sweeper.prune_once() == [ctx.workspace_path(ok)]
    assert not ctx.workspace_path(ok).exists() and ctx.workspace_path(failed).exists()  # evidence kept
    assert ctx.artifacts(ok).base.exists() and ctx.store.get_job(ok) is not None  # only the workspace
    kept = dataclasses.replace(harness.settings, retention={"succeeded_workspace_max_age": "7d"})
    assert Sweeper(harness.selfheal.app, build_context(kept, sinks=[]), "t", cluster_options({})).prune_once() == []


def test_artifacts_says_where_they_are_when_not_found(harness: Harness, make_repo, tmp_path: Path) -> None:
    ok = harness.submit(harness.job_file(make_repo(), [{"id": "a", "instructions": "write a.txt: a"}]))
    harness.wait(ok)
    r = cli(harness, "artifacts", ok)
    assert r.returncode == 0 and "patches/steps/step-0000.patch" in r.stdout
    elsewhere = tmp_path / "other-artifacts"
    r = cli(harness, "artifacts", ok, SELFHEAL_ARTIFACT_ROOT=str(elsewhere))
    assert r.returncode == 1, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert f"under {elsewhere / ok}" in line and "the store has 1 checkpoints" in line
    assert f"written under {harness.settings.artifact_root / ok}" in line
