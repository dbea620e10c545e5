"""Failure classification (REQ-03): pluggable, with sysexits and output-marker defaults.

Only ``transient_runtime`` and ``stuck_no_progress`` are retried; the deterministic classes end
the step at once. Misreading a transient failure as deterministic loses the job, while the
reverse only spends bounded budget (the no-progress detector catches repeats), so the default
falls back to ``transient_runtime`` whenever nothing decisive is known.

Precedence of the default classifier, first rule that applies wins:

1. the detector: ``no_progress`` and ``output_loop`` -> stuck_no_progress; ``wall_timeout``, ``idle_timeout``,
   ``signal``, ``worker_lost`` (or any signal / negative exit code) -> transient_runtime. The
   runtime was cut off, so whatever it printed last is not its verdict;
2. sysexits codes: the runtime said explicitly what happened (:data:`EXIT_CODES`);
3. output markers (:data:`MARKERS`): when several match, the one found **latest** in the tail
   wins, because the last error printed is usually the one that ended the run; markers ending
   at the same place fall back to table order (repo, policy, contract, transient);
4. otherwise transient_runtime.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from celery_selfheal.core.model import Detector, FailureClass

#: sysexits.h codes with a clear meaning for us
EXIT_CODES: dict[int, FailureClass] = {
    75: FailureClass.TRANSIENT_RUNTIME,  # EX_TEMPFAIL
    65: FailureClass.DETERMINISTIC_CONTRACT,  # EX_DATAERR
    77: FailureClass.DETERMINISTIC_POLICY,  # EX_NOPERM
}

#: detectors that cut the runtime off (its output is not a verdict)
INTERRUPTING_DETECTORS: frozenset[Detector] = frozenset(
    {Detector.WALL_TIMEOUT, Detector.IDLE_TIMEOUT, Detector.SIGNAL, Detector.WORKER_LOST}
)

#: (class, regex patterns), matched case-insensitively against the scrubbed output tail.
#: Table order breaks ties between markers that end at the same position.
MARKERS: tuple[tuple[FailureClass, tuple[str, ...]], ...] = (
    (
        FailureClass.DETERMINISTIC_REPO,
        (
            r"merge conflict",
            r"^CONFLICT \(",
            r"not a git repository",
        ),
    ),
    (
        FailureClass.DETERMINISTIC_POLICY,
        (
            r"authentication",
            r"permission denied",
            r"access denied",
            r"credentials?\b",
            r"unauthori[sz]ed",
            r"forbidden",
            r"\b(?:http|status)[ /:=]*(?:401|403)\b",
        ),
    ),
    (
        FailureClass.DETERMINISTIC_CONTRACT,
        (
            r"schema ?(?:error|validation|mismatch|violation)",
            r"(?:does not|doesn't|did not) (?:match|conform to) (?:the )?schema",
            r"invalid schema",
            r"validation ?(?:error|failed|failure)",
        ),
    ),
    (
        FailureClass.TRANSIENT_RUNTIME,
        (
            r"time ?out",
            r"timed ?out",
            r"connection (?:reset|refused|aborted)",
            r"\bE(?:CONNRESET|CONNREFUSED|TIMEDOUT)\b",
            r"\b(?:http|status)[ /:=]*(?:429|502|503|504)\b",
            r"too many requests",
            r"bad gateway",
            r"service (?:temporarily )?unavailable",
            r"rate[ _-]?limit",
            r"temporar(?:y|ily) (?:failure|unavailable)",
        ),
    ),
)

_COMPILED: tuple[tuple[FailureClass, re.Pattern[str]], ...] = tuple(
    (cls, re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE | re.MULTILINE))
    for cls, patterns in MARKERS
)


@dataclass(frozen=True)
class FailureFacts:
    """What is known about a failed attempt when it is classified."""

    #: the runtime's exit code (None when it was killed before exiting)
    exit_code: int | None
    #: the signal that ended the runtime, if any
    signal: int | None
    #: what noticed the failure
    detector: Detector
    #: the end of the attempt's output, already scrubbed of secrets
    output_tail: str


class Classifier(Protocol):
    """A pluggable classifier: return a class, or None for "no opinion"."""

    def __call__(self, facts: FailureFacts) -> FailureClass | None: ...


def marker_match(output_tail: str) -> tuple[FailureClass, str] | None:
    """The class and text of the marker found latest in ``output_tail``, or None."""
    best_end, best = -1, None
    for cls, pattern in _COMPILED:
        end, text = -1, ""
        for match in pattern.finditer(output_tail):
            end, text = match.end(), match.group(0)
        # Strictly greater: on a tie the earlier table row, already kept, wins.
        if end > best_end:
            best_end, best = end, (cls, text)
    return best


def marker_class(output_tail: str) -> FailureClass | None:
    """The class of the marker found latest in ``output_tail``, or None when none matches."""
    found = marker_match(output_tail)
    return found[0] if found else None


_SYSEXITS = {75: "EX_TEMPFAIL", 65: "EX_DATAERR", 77: "EX_NOPERM"}


def classification_reason(facts: FailureFacts, cls: FailureClass) -> str:
    """Why the default rules give ``cls`` (the exit code or the output marker that decided), or a
    note that a plugin classifier did; shown with deterministic failures, which are not retried."""
    if default_classifier(facts) is not cls:
        return f"classified {cls.value} by a plugin classifier"
    if facts.detector in (Detector.NO_PROGRESS, Detector.OUTPUT_LOOP):
        return f"detector {facts.detector.value}"
    if facts.exit_code in EXIT_CODES:
        return f"exit code {facts.exit_code} ({_SYSEXITS[facts.exit_code]})"
    found = marker_match(facts.output_tail)
    if found is not None:
        marker = " ".join(found[1].split())[:80]
        return f"output marker {marker!r}"
    return "no decisive exit code or output marker"


def default_classifier(facts: FailureFacts) -> FailureClass:
    """Classify with the built-in rules (see the module docstring for their precedence)."""
    if facts.detector in (Detector.NO_PROGRESS, Detector.OUTPUT_LOOP):
        return FailureClass.STUCK_NO_PROGRESS
    killed = facts.signal is not None or (facts.exit_code is not None and facts.exit_code < 0)
    if facts.detector in INTERRUPTING_DETECTORS or killed:
        return FailureClass.TRANSIENT_RUNTIME
    if facts.exit_code in EXIT_CODES:
        return EXIT_CODES[facts.exit_code]
    return marker_class(facts.output_tail) or FailureClass.TRANSIENT_RUNTIME


def classify(facts: FailureFacts, extra: Sequence[Classifier] = ()) -> FailureClass:
    """Ask each ``extra`` classifier in order; the first opinion wins, else the default's.

    A classifier may return a :class:`FailureClass` or its string value. An exception raised by
    a classifier propagates: a broken plugin should be seen, not silently skipped.
    """
    for classifier in extra:
        verdict = classifier(facts)
        if verdict is not None:
            return FailureClass(verdict)
    return default_classifier(facts)
