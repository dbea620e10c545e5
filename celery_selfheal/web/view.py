"""What the job page needs beyond the ``status --json`` document: which REQ-09 actions the job's
state allows (asked of `core.control_rules.validate`, the rules the CLI and workers use) and the
scrubbed failure summary of each failed attempt (from its log, as the retry envelope makes it)."""

from __future__ import annotations

from typing import Any

from celery_selfheal.api import job_status, require_job
from celery_selfheal.context import Context
from celery_selfheal.control.requests import job_position
from celery_selfheal.core import control_rules as rules
from celery_selfheal.core.envelope import summarize_failure
from celery_selfheal.errors import ControlError
from celery_selfheal.web.files import NotFound, log_tail

SUMMARY_TAIL = 16_384


def allowed_actions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per action: ``allowed``, ``why`` not (the rule's own sentence), and for resume_from_step the
    ``steps`` it may name."""
    pos = job_position(job)
    out: dict[str, dict[str, Any]] = {}
    for action in rules.ACTIONS:
        if action == "resume_from_step":
            steps, why = [], None
            for index, step_id in enumerate(pos["step_ids"]):
                try:
                    rules.validate(action, step_index=index, **pos)
                    steps.append(step_id)
                except ControlError as exc:
                    why = why or str(exc)
            out[action] = {"allowed": bool(steps), "why": None if steps else why, "steps": steps}
            continue
        try:
            rules.validate(action, step_index=None, **pos)
            out[action] = {"allowed": True, "why": None}
        except ControlError as exc:
            out[action] = {"allowed": False, "why": str(exc)}
    return out


def job_view(ctx: Context, job_id: str) -> dict[str, Any]:
    """``{"status": <status --json>, "actions": allowed_actions, "summaries": {"K:A": text}}``."""
    job = require_job(ctx, job_id)
    doc = job_status(ctx, job_id)
    summaries: dict[str, str] = {}
    for step in doc["steps"]:
        for att in step["attempts"]:
            if att.get("status") in ("failed", "lost"):
                try:
                    text = log_tail(ctx, job_id, att["stepIndex"], att["attempt"], SUMMARY_TAIL)
                except NotFound:
                    continue
                summaries[f"{att['stepIndex']}:{att['attempt']}"] = summarize_failure(text, max_lines=12,
                                                                                    max_chars=1200)
    return {"status": doc, "actions": allowed_actions(job), "summaries": summaries}
