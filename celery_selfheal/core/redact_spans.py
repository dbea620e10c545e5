"""Spans of the redactor: merging them and replacing them with :data:`REDACTED`."""

from __future__ import annotations

from celery_selfheal.core.redact_rules import REDACTED

Span = tuple[int, int]


def merge(spans: list[Span]) -> list[Span]:
    """Sort and merge overlapping spans (touching spans stay separate)."""
    if not spans:
        return spans
    spans.sort()
    merged = [spans[0]]
    for start, end in spans[1:]:
        last_start, last_end = merged[-1]
        if start < last_end:
            if end > last_end:
                merged[-1] = (last_start, end)
        else:
            merged.append((start, end))
    return merged


def apply(text: str, spans: list[Span], lo: int, hi: int) -> str:
    """``text[lo:hi]`` with each span (clipped to the range) replaced by :data:`REDACTED`."""
    out, pos = [], lo
    for start, end in spans:
        if end <= lo or start >= hi:
            continue
        start, end = max(start, lo), min(end, hi)
        out.append(text[pos:start])
        out.append(REDACTED)
        pos = end
    out.append(text[pos:hi])
    return "".join(out)
