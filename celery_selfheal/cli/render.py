"""Turning events and status documents into lines a person reads (the CLI prints them)."""

from __future__ import annotations

import json
import signal
from datetime import datetime
from typing import Any

from celery_selfheal.core.text_bounds import terminal_safe


def _clock(ts: str | None) -> str:
    if not ts:
        return "--:--:--"
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return ts


def _step(e: dict[str, Any]) -> str:
    return f"step {e.get('stepIndex')} {e.get('stepId', '')}".rstrip()


def _secs(value: Any) -> str:
    return f"{float(value):.1f}s" if isinstance(value, (int, float)) else "?"


def signal_name(number: Any) -> str:
    """``SIGKILL (9)`` for 9; the number alone when it is not a known signal; ``?`` when absent."""
    if not isinstance(number, int):
        return "?"
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


def describe_event(e: dict[str, Any]) -> str:
    """One readable line for an event (the story: detector, class, strategy, result)."""
    name = e.get("event", "")
    att = f"attempt {e.get('attempt')}"
    if name == "task.job.started":
        return f"job {e['jobId']} started: {e.get('steps', '?')} steps from {str(e.get('baselineSha', ''))[:10]}"
    if name == "task.step.attempt.started":
        how = e.get("attemptStrategy")
        return f"{_step(e)}: {att} started" + (f" ({how})" if how and how != "initial" else "")
    if name == "task.step.attempt.finished":
        files = e.get("changedFiles") or []
        took = _secs(e.get("wallClockSeconds"))
        return f"{_step(e)}: {att} succeeded in {took}, {len(files)} file(s) checkpointed"
    if name == "task.step.attempt.failed":
        det = e.get("detector")
        how = f"exit {e.get('exitCode')}" if det == "exit" else det
        if det == "idle_timeout":
            how = f"idle_timeout (silent {_secs(e.get('idleSeconds'))})"
        elif det == "wall_timeout":
            how = f"wall_timeout (after {_secs(e.get('wallClockSeconds'))})"
        elif det == "signal":
            how = f"signal {signal_name(e.get('signal'))}"
        nxt = e.get("strategy") or "give up"
        return f"{_step(e)}: {att} FAILED by {how} -> {e.get('failureClass')}; next: {nxt}"
    if name == "task.self_heal.triggered":
        cd = e.get("countdown") or 0
        when = f" in {cd:g}s" if cd else ""
        return f"{_step(e)}: self-heal {e.get('strategy')}{when} ({e.get('reason', '')})"
    if name == "task.self_heal.escalated":
        return f"{_step(e)}: ESCALATED to {e.get('strategy')} ({e.get('failureClass')}, {e.get('detector')})"
    if name == "task.self_heal.recovered":
        return f"{_step(e)}: recovered on {att} ({e.get('strategy') or 'retry'})"
    if name == "task.self_heal.exhausted":
        return f"{_step(e)}: recovery budgets exhausted ({e.get('failureClass')})"
    if name == "task.resume.from_step":
        return f"resumed from {_step(e)} (epoch {e.get('epoch')})"
    if name.startswith("task.control.recovery."):
        kind = name.rsplit(".", 1)[-1]
        return f"control {e.get('action')} {kind}" + (f": {e.get('reason')}" if e.get("reason") else "")
    if name == "task.job.succeeded":
        return f"job {e['jobId']} SUCCEEDED"
    if name == "task.job.failed":
        return f"job {e['jobId']} FAILED at {_step(e)}: {e.get('failureClass')} ({e.get('reason', '')})"
    if name == "task.job.cancelled":
        return f"job {e['jobId']} CANCELLED"
    return name


def event_line(e: dict[str, Any]) -> str:
    """``HH:MM:SS  <description>``, one line whatever the stored text holds (escaped)."""
    return terminal_safe(f"{_clock(e.get('ts'))}  {describe_event(e)}").replace("\n", "\\n")


def json_line(e: dict[str, Any]) -> str:
    """The ``--json`` form of an event (one line, stable key order)."""
    return json.dumps({k: v for k, v in e.items() if k != "seq"}, sort_keys=True)


def status_text(doc: dict[str, Any]) -> str:
    """The human form of ``selfheal status``."""
    lines = [f"job {doc['jobId']}  status={doc['status']}  epoch={doc['epoch']}  "
             f"resets={doc.get('resetsUsed')}  queue_retries={doc.get('queueRetriesUsed')}"]
    if doc.get("terminalReason") and doc["status"] != "succeeded":
        lines.append(f"  terminal reason: {doc['terminalReason']}  {doc.get('message') or ''}".rstrip())
    for step in doc["steps"]:
        lines.append(f"  step {step['stepIndex']} {step['stepId']}: {step['status']}")
        for a in step["attempts"]:
            extra = ""
            if a.get("status") == "failed":
                extra = f" {a.get('detector')} {a.get('failureClass')} -> {a.get('strategy') or 'give up'}"
            lines.append(f"    attempt {a['attempt']} ({a.get('attemptStrategy')}): {a.get('status')}"
                         f" {_secs(a.get('wallClockSeconds'))}{extra}")
            if a.get("attemptPatch") or a.get("attemptPatchAbsent"):
                lines.append(f"      change left: {a.get('attemptPatch') or 'no patch: ' + a['attemptPatchAbsent']}")
    for req in doc.get("pendingControl", []):
        lines.append(f"  pending control: {req.get('action')} by {req.get('actor')} ({req.get('reason') or ''})")
    for rec in doc.get("audit", []):
        lines.append(f"  audit {rec.get('at')}: {rec.get('actor')} {rec.get('action')} "
                     f"{rec.get('stepId') or ''} -> {rec.get('outcome')} {rec.get('reason') or ''}".rstrip())
    # stored text (reasons, messages, ids) is escaped: it cannot act on the terminal or add lines
    return "\n".join(terminal_safe(line).replace("\n", "\\n") for line in lines)
