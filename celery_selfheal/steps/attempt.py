"""Running one attempt of one step: prompt files, runtime env, the supervisor, the resulting change.

This module does the I/O of an attempt and returns facts; deciding what they mean is the pure
core's job (`core.classify`, `core.signature`, `core.strategy`), called by `steps.finish`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery_selfheal.artifacts import write_fresh
from celery_selfheal.context import Context
from celery_selfheal.core.budgets import Budgets
from celery_selfheal.core.envelope import render_envelope
from celery_selfheal.core.job_state import INITIAL
from celery_selfheal.core.jobfile import StepSpec
from celery_selfheal.core.model import AttemptOutcome
from celery_selfheal.core.redact import StreamRedactor
from celery_selfheal.core.runtime_env import without_control_plane
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.supervisor import RuntimeResult, RuntimeSpec, WakeCheck, run_runtime
from celery_selfheal.workspace.git import Change, GitWorkspace

#: characters the stream redactor collects before it scans: small, so the attempt log stays close to
#: live (agents print kilobytes per second, not the 100 MB/s a big batch is tuned for)
STREAM_BATCH = 16 * 1024


class ActivityStream:
    """A stream redactor that also reports each raw chunk (activity for the idle display) before
    the redactor holds part of it back."""

    def __init__(self, inner: StreamRedactor, on_activity: Callable[[str], None] | None) -> None:
        self.inner = inner
        self.on_activity = on_activity

    def feed(self, chunk: str) -> str:
        if self.on_activity is not None:
            self.on_activity(chunk)
        return self.inner.feed(chunk)

    def flush(self) -> str:
        return self.inner.flush()


@dataclass(frozen=True)
class AttemptPlan:
    """What to run: the step, which attempt, how it was started and with what context."""

    job_id: str
    step: StepSpec
    argv: tuple[str, ...]
    attempt: int
    round: int
    epoch: int
    #: how this attempt was started: `INITIAL` or a Strategy value
    strategy: str
    budgets: Budgets
    #: the retry envelope (None on a step's first attempt)
    retry_context: Mapping[str, Any] | None = None
    #: what the job record said when the attempt began (read once, used when it ends)
    step_count: int = 1
    resets_used: int = 0
    queue_retries_used: int = 0
    objective: str = ""
    #: the work tree this attempt started from when it is not the step's base (a soft reset keeps
    #: the previous attempt's changes): the tree that attempt left
    start_tree: str | None = None
    #: the step's decided attempts of this epoch as read when the attempt began (the lease keeps
    #: anyone else from adding one): what the controller reads with this one; None: read them then
    prior: tuple[AttemptOutcome, ...] | None = None
    #: the sequence number before the attempt's ``attempt.started`` event (its artifact lists the
    #: attempt's events from there), and that event as stored (None: read it back)
    events_after: int = 0
    started_event: Mapping[str, Any] | None = None

    @property
    def recovery_strategy(self) -> str | None:
        """The contract's ``strategy`` of this attempt's events: None for a first attempt."""
        return None if self.strategy == INITIAL else self.strategy


@dataclass(frozen=True)
class AttemptFacts:
    """What happened: the supervisor's result and the workspace change it left."""

    result: RuntimeResult
    change: Change
    prompt_file: Path
    log_path: Path


def prompt_text(plan: AttemptPlan) -> str:
    """Instructions on a first attempt; the rendered retry envelope afterwards."""
    if plan.retry_context is None:
        return plan.step.instructions
    return render_envelope(plan.retry_context)


def runtime_env(base: Mapping[str, str], plan: AttemptPlan, prompt_file: Path,
                retry_file: Path | None, control_urls: tuple[str, ...] = ()) -> dict[str, str]:
    """The runtime protocol's env vars on top of the worker's environment minus the control plane
    (`core.runtime_env`: no ``SELFHEAL_*`` URL or path, nothing holding ``control_urls``)."""
    env = without_control_plane(base, control_urls)
    env.pop("SELFHEAL_RETRY_CONTEXT_FILE", None)
    env.update({
        "SELFHEAL_JOB_ID": plan.job_id,
        "SELFHEAL_STEP_ID": plan.step.id,
        "SELFHEAL_STEP_INDEX": str(plan.step.index),
        "SELFHEAL_ATTEMPT": str(plan.attempt),
        "SELFHEAL_PROMPT_FILE": str(prompt_file),
    })
    if retry_file is not None:
        env["SELFHEAL_RETRY_CONTEXT_FILE"] = str(retry_file)
    return env


def run_attempt(
    ctx: Context,
    plan: AttemptPlan,
    ws: GitWorkspace,
    *,
    cancel_check: Callable[[], bool] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_activity: Callable[[str], None] | None = None,
    cancel_poll: float = 0.25,
    wake: WakeCheck | None = None,
) -> AttemptFacts:
    """Run the step's runtime once in ``ws`` under the plan's budgets and collect the facts
    (``cancel_check``, ``cancel_poll`` and ``wake``: as in `runtime.supervisor.run_runtime`)."""
    arts = ctx.artifacts(plan.job_id)
    # Prompt files live outside the workspace so they never show up in the step's diff.
    prompt_dir = ctx.settings.run_dir / "prompts" / plan.job_id
    stem = f"step-{plan.step.index:04d}-attempt-{plan.attempt:04d}"
    prompt = ctx.redactor.redact(prompt_text(plan))
    prompt_file = prompt_dir / f"{stem}.prompt.txt"
    # read only by the runtime started below (attempts never overlap): written in place, no rename
    write_fresh(prompt_file, prompt)
    retry_file: Path | None = None
    if plan.retry_context is not None:
        retry_file = prompt_dir / f"{stem}.retry.json"
        write_fresh(retry_file, json.dumps(ctx.redactor.redact_obj(dict(plan.retry_context)), indent=2))
    spec = RuntimeSpec(
        argv=plan.argv,
        cwd=ws.path,
        env=runtime_env(os.environ, plan, prompt_file, retry_file,
                        (ctx.settings.broker_url, ctx.settings.store_url)),
        stdin_text=prompt,
        wall_timeout=plan.budgets.step_timeout_seconds,
        idle_timeout=plan.budgets.step_idle_timeout_seconds,
        kill_grace=plan.budgets.kill_grace_seconds,
        output_loop_limit=plan.budgets.step_output_loop_limit,
    )
    log_path = arts.log_path(plan.step.index, plan.attempt)
    log = CappedLog(log_path)

    def redact_stream() -> ActivityStream:
        return ActivityStream(StreamRedactor(ctx.redactor, batch=STREAM_BATCH), on_activity)

    try:
        result = run_runtime(spec, log=log, redact_stream=redact_stream, cancel_check=cancel_check,
                             cancel_poll=cancel_poll, on_start=on_start, redact_text=ctx.redactor.redact,
                             wake=wake)
    finally:
        log.close()
    return AttemptFacts(result=result, change=ws.current_change(), prompt_file=prompt_file, log_path=log_path)
