"""The retry envelope (REQ-06): the minimal context a fresh runtime gets on a retry.

Objective, the step, a short scrubbed failure summary with its signature and class, the
constraints, the changed files and diff hash, the attempt and the strategy. Never the full
transcript: the summary is the last lines of the output, capped in lines and characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery_selfheal.core.jobfile import StepSpec
from celery_selfheal.core.model import Detector, FailureClass, Strategy

CONSTRAINTS: tuple[str, ...] = (
    "Do not repeat a remediation that did not change the outcome.",
    "Isolate test-harness instability before editing product code.",
)
#: added when the attempt was classified stuck_no_progress
NO_PROGRESS_CONSTRAINT = (
    "The previous attempts failed the same way with the same changes: take a different approach "
    "instead of retrying the last one."
)
#: how many changed file names the envelope lists (the count is always exact)
MAX_CHANGED_FILES = 50

# CSI / OSC escape sequences and other control characters: colours and cursor moves only add
# noise to a prompt.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean_lines(text: str) -> list[str]:
    """Lines as a terminal shows them: escapes removed, a carriage return overwrites the line."""
    text = _ANSI.sub("", text)
    lines = [_CONTROL.sub("", line.rsplit("\r", 1)[-1]).rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def summarize_failure(output_tail: str, *, max_lines: int = 40, max_chars: int = 2000) -> str:
    """The last ``max_lines`` lines of ``output_tail``, at most ``max_chars`` characters in all.

    When anything is cut, the summary starts with a marker line saying how much was left out.
    """
    if max_lines < 1 or max_chars < 1:
        raise ValueError("max_lines and max_chars must be >= 1")
    lines = _clean_lines(output_tail)
    kept = lines[-max_lines:]
    body = "\n".join(kept)
    dropped_lines = len(lines) - len(kept)
    if dropped_lines == 0 and len(body) <= max_chars:
        return body
    marker = f"[... {dropped_lines} earlier lines omitted ...]\n" if dropped_lines else ""
    if len(marker) + len(body) > max_chars:
        marker = f"[... output truncated to the last {max_chars} characters ...]\n"
    room = max_chars - len(marker)
    if room < 1:  # a tiny cap leaves no space for the marker
        return body[-max_chars:]
    return marker + body[-room:]


def attempt_summary(detector: Detector, output_tail: str, *, note: str = "", idle_seconds: float = 0.0,
                    wall_seconds: float = 0.0) -> str:
    """The failure summary of an attempt: what the detector saw, then the end of the output.

    ``output_loop``: the supervisor's ``note`` alone (the repeated block, quoted once, instead of a
    tail that is the block many times). ``idle_timeout``: how long it was silent, after how much
    run time, and the last line it printed, then the tail. Otherwise the tail."""
    if detector is Detector.OUTPUT_LOOP and note:
        return summarize_failure(note)
    tail = summarize_failure(output_tail) if output_tail.strip() else ""
    if detector is Detector.IDLE_TIMEOUT:
        lines = _clean_lines(output_tail)
        last = repr(lines[-1][:200]) if lines else "none (the runtime never printed anything)"
        head = (f"idle timeout: no output for {idle_seconds:.0f} s after {max(wall_seconds - idle_seconds, 0):.1f} s "
                f"of run time; last output: {last}")
        return summarize_failure(f"{head}\n{tail}" if tail else head)
    return tail


def build_envelope(
    *,
    objective: str,
    step: StepSpec,
    attempt: int,
    strategy: Strategy,
    failure_class: FailureClass,
    detector: Detector,
    failure_summary: str,
    failure_signature: str,
    changed_files: Sequence[str],
    diff_hash: str,
    redact: Callable[[str], str],
) -> dict[str, Any]:
    """The envelope as a JSON-ready dict; every free-text string goes through ``redact``.

    ``attempt`` is the number of the attempt the envelope is for. At most
    :data:`MAX_CHANGED_FILES` names are listed; ``changedFilesCount`` is the full count.
    """
    constraints = list(CONSTRAINTS)
    if failure_class is FailureClass.STUCK_NO_PROGRESS:
        constraints.append(NO_PROGRESS_CONSTRAINT)
    return {
        "objective": redact(objective),
        "step": {
            "id": step.id,
            "index": step.index,
            "title": redact(step.title),
            "instructions": redact(step.instructions),
        },
        "failure": {
            "summary": redact(failure_summary),
            "signature": failure_signature,
            "class": failure_class.value,
            "detector": detector.value,
        },
        "constraints": constraints,
        "changedFiles": [redact(name) for name in changed_files[:MAX_CHANGED_FILES]],
        "changedFilesCount": len(changed_files),
        "diffHash": diff_hash,
        "attempt": attempt,
        "strategy": strategy.value,
    }


def _fenced(text: str) -> str:
    """``text`` in a code fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def render_envelope(envelope: Mapping[str, Any]) -> str:
    """The envelope as the prompt text a runtime reads on a retry: short, readable sections."""
    step = envelope.get("step", {})
    failure = envelope.get("failure", {})
    files = list(envelope.get("changedFiles", []))
    count = int(envelope.get("changedFilesCount", len(files)))
    out = [
        f"# Retry of step {step.get('id')!r} (index {step.get('index')}): {step.get('title', '')}",
        f"This is attempt {envelope.get('attempt')}, started by {envelope.get('strategy')}.",
        "",
        "## Objective",
        str(envelope.get("objective", "")),
        "",
        "## Step instructions",
        str(step.get("instructions", "")),
        "",
        "## What went wrong last time",
        f"- failure class: {failure.get('class')}",
        f"- detected by: {failure.get('detector')}",
        f"- failure signature: {failure.get('signature')}",
        "",
        "Last lines of output:",
        _fenced(str(failure.get("summary", "")) or "(no output)"),
        "",
        "## Changes already in the workspace",
        f"Diff hash: {envelope.get('diffHash') or '(none)'}",
    ]
    out += [f"- {name}" for name in files] or ["(no changed files)"]
    if count > len(files):
        out.append(f"(and {count - len(files)} more)")
    out += ["", "## Constraints"]
    out += [f"- {rule}" for rule in envelope.get("constraints", [])]
    return "\n".join(out) + "\n"
