"""Failure signatures: the same failure yields the same hash across attempts.

``normalize_failure_text`` replaces the tokens that change from run to run (ids, hashes,
addresses, timestamps, durations, numbers, line numbers, temp paths, pids, ports) with fixed
placeholders, then lowercases and collapses whitespace. Two attempts failing "the same way" then
share a :func:`failure_signature`, which is what the no-progress detector compares.

Rules run in table order: more specific shapes first (a uuid before the hex hashes inside it, a
timestamp before its numbers, a temp path before the ``:line:col`` that follows it, a pid or line
number before the hash rule could read a 7-digit one as a hash).
"""

from __future__ import annotations

import hashlib
import re

_WEEKDAY = r"(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?,?\s+"
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?"
)
_TIME = r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?[ap]m\b)?(?:z\b)?(?:\s?(?:utc\b|[+-]\d{2}:?\d{2}\b))?"
_TEMP_ROOT = r"(?<![\w./-])(?:/private)?(?:/var/folders/[^/\s]+/[^/\s]+/T|/var/tmp|/tmp)"
_NOT_WORD = r"(?<![A-Za-z0-9_.])"
_END_WORD = r"(?![A-Za-z0-9_])"

#: (pattern, replacement) applied in order, case-insensitively
RULES: tuple[tuple[str, str], ...] = (
    # uuids (any version), before the hex-hash rule would eat their segments
    (r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<uuid>"),
    # loopback endpoints, before the time rule reads "1:54321" as a clock
    (r"\b(?:localhost|127\.0\.0\.1|0\.0\.0\.0):\d+\b|\[::1\]:\d+", "localhost:<port>"),
    # ISO 8601 and log-style timestamps / dates
    (rf"\b\d{{4}}-\d{{2}}-\d{{2}}(?:[t ]{_TIME})?", "<ts>"),
    (r"\b\d{4}/\d{1,2}/\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b", "<date>"),
    (rf"\b(?:{_WEEKDAY})?{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?\b(?:,?\s+\d{{4}}\b)?", "<date>"),
    (rf"\b(?:{_WEEKDAY})?\d{{1,2}}\s+{_MONTH}\s+\d{{4}}\b", "<date>"),
    (rf"(?<![\w:.]){_TIME}", "<time>"),
    # temp paths: the temp root and its first (random) component; pytest's per-test dirs whole
    (rf"{_TEMP_ROOT}/pytest-of-[^/\s]+/pytest-\d+/[^/\s'\":]+", "<tmp>"),
    (rf"{_TEMP_ROOT}/[^/\s'\":]+", "<tmp>"),
    # pids
    (r"\bpid\s*[=:]?\s*\d+\b", "pid=<pid>"),
    BRACKET_PID_RULE := (r"\[\d+\]", "[<pid>]"),
    # source locations: file.py:12:5, "line 12"
    (r"(?<=[\w)\]>]):\d+(?::\d+)?\b", ":<loc>"),
    (r"\bline\s+\d+\b", "line <loc>"),
    # memory addresses and hashes: 7+ hex digits with at least one decimal digit, so plain words
    # such as "defaced" survive. A hash shares the number placeholder because an all-digit short
    # sha is indistinguishable from a number, and the two must not split one failure in two.
    (r"\b0x[0-9a-f]+\b", "<addr>"),
    # (not when part of a decimal such as 1234567.5: that is the number rule's)
    HASH_RULE := (r"(?<!\d\.)\b(?=[a-f]*\d)[0-9a-f]{7,}\b(?!\.\d)", "<n>"),
    # durations: 1.5s, 200ms, 3m, 2 hours
    (
        rf"{_NOT_WORD}\d+(?:\.\d+)?\s?(?:ns|us|µs|ms|s|secs?|seconds?|m|mins?|minutes?"
        rf"|h|hrs?|hours?|d|days?){_END_WORD}",
        "<dur>",
    ),
    # every other standalone number (digits inside identifiers such as test_case_2 stay)
    NUMBER_RULE := (rf"{_NOT_WORD}\d+(?:[.,]\d+)*{_END_WORD}", "<n>"),
)

_COMPILED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), replacement) for pattern, replacement in RULES
)


def normalize_failure_text(text: str) -> str:
    """Replace volatile tokens with placeholders, lowercase, and collapse whitespace."""
    for pattern, replacement in _COMPILED:
        text = pattern.sub(replacement, text)
    return " ".join(text.lower().split())


def failure_signature(text: str) -> str:
    """sha256 hex digest of :func:`normalize_failure_text` of ``text``."""
    return hashlib.sha256(normalize_failure_text(text).encode("utf-8", "surrogatepass")).hexdigest()
