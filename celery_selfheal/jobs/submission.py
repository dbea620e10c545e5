"""Turning a job file into a stored, queued job: validation, ref resolution, budgets, record.

Everything that can be wrong with a submission is checked here, before anything is written, so a
bad job file changes no state (exit 2 from the CLI).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery_selfheal.artifacts import check_safe_id
from celery_selfheal.core.budgets import (
    budgets_to_dict,
    env_overrides,
    resolve_budgets,
)
from celery_selfheal.core.input_limits import MAX_JOB_FILE_BYTES
from celery_selfheal.core.jobfile import JobSpec, StepSpec, parse_job
from celery_selfheal.core.redact import Redactor
from celery_selfheal.errors import InputError
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.settings import Settings
from celery_selfheal.workspace.git import resolve_ref

JobRecord = dict[str, Any]


def load_job_file(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a job file (TOML or JSON)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:  # bounded read: never load a huge file to find out it is too big
            raw = fh.read(MAX_JOB_FILE_BYTES + 1)
        if len(raw) > MAX_JOB_FILE_BYTES:
            raise InputError(f"job file too large: more than {MAX_JOB_FILE_BYTES} bytes", where=str(p))
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise InputError("no such file", where=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", where=str(p)) from None
    return parse_job(text, source=str(p))


def is_remote(repo: str) -> bool:
    """True for URLs and scp-like ``git@host:path`` specs (not resolved against the job file)."""
    return "://" in repo or (":" in repo.split("/", 1)[0] and not Path(repo).exists())


def new_job_id(now: datetime | None = None) -> str:
    """A sortable, unique job id: ``job-YYYYmmdd-HHMMSS-xxxxxx``."""
    now = now or datetime.now(timezone.utc)
    return f"job-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_runtime_has_no_secret(spec: JobSpec, redactor: Redactor, source: str) -> None:
    """A runtime command is persisted and logged as given, so a secret in it would leak:
    refuse it and ask for the environment instead (redacting argv would silently break it)."""
    candidates: list[tuple[str, tuple[str, ...] | None]] = [("job.runtime", spec.runtime)]
    candidates += [(f"steps[{s.index}] (id {s.id!r}).runtime", s.runtime) for s in spec.steps]
    for where, argv in candidates:
        for arg in argv or ():
            if redactor.redact(arg) != arg:
                raise InputError("contains a secret; pass it to the runtime through the worker's "
                                 "environment instead", where=f"{source}: {where}")


def check_repo_has_no_secret(repo: str, redactor: Redactor, source: str) -> None:
    """A repository URL is stored with the job, shown by ``status`` and kept by git in every
    workspace's ``.git/config``, so a password in it would leak: refuse it (redacting it would
    break the clone)."""
    if redactor.redact(repo) != repo:
        raise InputError("contains a secret; give git the credentials on the workers instead "
                         "(a credential helper, GIT_ASKPASS or ~/.netrc)", where=f"{source}: job.repo")


def prepare_job(
    spec: JobSpec,
    *,
    source: str,
    settings: Settings,
    redactor: Redactor,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> JobRecord:
    """Validate everything that needs the outside world and build the job record (nothing stored)."""
    env = os.environ if env is None else env
    check_repo_has_no_secret(spec.repo, redactor, source)
    repo = spec.repo
    if not is_remote(repo):
        path = Path(repo)
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        if not path.exists():
            raise InputError(f"repository {repo!r} does not exist (resolved to {path})",
                             where=f"{source}: job.repo")
        repo = str(path)
    try:
        sha = resolve_ref(repo, spec.ref)
    except InputError as exc:
        raise InputError(exc.message, where=f"{source}: {exc.where or 'job.ref'}") from None
    budgets = resolve_budgets(
        (f"{settings.config_path or 'config.toml'} [selfheal]", dict(settings.budget_config)),
        ("env", env_overrides(env)),
        (f"{source}: job.selfheal", dict(spec.overrides)),
    )
    for step in spec.steps:  # reject bad step overrides now, not when the step runs
        resolve_budgets(("job", budgets_to_dict(budgets)), (f"{source}: steps[{step.index}] (id {step.id!r})",
                                                           dict(step.overrides)))
    check_runtime_has_no_secret(spec, redactor, source)
    job_id = spec.id or new_job_id()
    check_safe_id(job_id, what="job id")
    now = utc_now_iso()
    return {
        "jobId": job_id,
        "status": "queued",
        "epoch": 0,
        "spec": redactor.redact_obj(spec.to_dict()),
        "source": source,
        "repo": repo,
        "ref": spec.ref,
        "baselineSha": sha,
        "budgets": budgets_to_dict(budgets),
        "createdAt": now,
        "updatedAt": now,
        "currentStep": 0,
        "resetsUsed": 0,
        "queueRetriesUsed": 0,
        "paused": False,
        "takeover": False,
        "parked": None,
        "terminalReason": None,
        # titles redacted like the spec: `status` shows them and the store keeps them
        "steps": [{**initial_step_state(s), "title": redactor.redact(s.title)} for s in spec.steps],
    }


def initial_step_state(step: StepSpec) -> dict[str, Any]:
    """The per-step status entry of a new job record."""
    return {"stepId": step.id, "stepIndex": step.index, "title": step.title, "status": "pending",
            "attempts": 0, "round": 0}
