"""The engine in-process: a real SQLite store, real git workspaces and real runtime subprocesses,
with a recording ``enqueue`` instead of Celery (what the step task would send is recorded)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.context import Context, build_context
from celery_selfheal.core.admission import StepDelivery
from celery_selfheal.core.jobfile import parse_job
from celery_selfheal.jobs.submission import prepare_job
from celery_selfheal.settings import load_settings
from celery_selfheal.steps.execute import execute_step
from celery_selfheal.steps.outcome import StepOutcome


@dataclass
class Engine:
    """One state dir, one context, and what the engine asked to enqueue."""

    ctx: Context
    repo: Path
    sent: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)

    def enqueue(self, job: Any, step_index: int, **kwargs: Any) -> str:
        self.sent.append((job["jobId"], step_index, kwargs))
        return f"task-{len(self.sent)}"

    def submit(self, *steps: str, budgets: str = "") -> str:
        """A job whose step ``i`` runs ``sh -c steps[i]``."""
        body = "\n".join(f'[[steps]]\nid = "s{i}"\ntitle = "step {i}"\ninstructions = "do {i}"\n'
                         f"runtime = {_toml_list(['sh', '-c', cmd])}\n" for i, cmd in enumerate(steps))
        text = (f'[job]\nobjective = "test"\nrepo = "{self.repo}"\nref = "main"\n'
                f'runtime = ["{sys.executable}"]\n[job.selfheal]\nstep_idle_timeout_seconds = 5\n'
                f"step_timeout_seconds = 20\n{budgets}\n{body}")
        job = prepare_job(parse_job(text, source="job.toml"), source="job.toml", settings=self.ctx.settings,
                          redactor=self.ctx.redactor)
        self.ctx.settings.ensure_dirs()
        self.ctx.store.create_job(job)
        return str(job["jobId"])

    def run(self, job_id: str, step_index: int = 0, *, epoch: int = 0, task_id: str = "t-1",
            **delivery: Any) -> StepOutcome:
        return execute_step(self.ctx, StepDelivery(job_id=job_id, step_index=step_index, epoch=epoch, **delivery),
                            task_id=task_id, hostname="test-host", enqueue=self.enqueue)

    def job(self, job_id: str) -> dict[str, Any]:
        job = self.ctx.store.get_job(job_id)
        assert job is not None
        return job

    def events(self, job_id: str) -> list[str]:
        return [e["event"] for _, e in self.ctx.store.list_events(job_id)]


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items) + "]"


@pytest.fixture
def engine(tmp_path: Path, make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Engine:
    for name in ("SELFHEAL_BROKER_URL", "SELFHEAL_STORE_URL", "SELFHEAL_CONFIG", "STATSD_HOST"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config.toml"
    config.write_text("")  # defaults only, whatever ./config.toml says
    settings = load_settings(state_dir=tmp_path / "state", config_path=config)
    return Engine(ctx=build_context(settings, sinks=[]), repo=make_repo())
