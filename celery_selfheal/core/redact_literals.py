"""Secret values taken from the environment: which ones, in which forms, and how they are found.

A value is found as an exact literal, in one regex pass shared with the rules where possible
(see :func:`place_literals`), else in passes of its own (:class:`LiteralMatcher`). Every pass
starts with one literal *anchor* character (the fast path of ``re``), and checks the rest of
the literal with a lookbehind and a lookahead, consuming one character: overlapping literals
are all found.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import AnyStr, NamedTuple
from urllib.parse import quote, quote_plus

from celery_selfheal.core.redact_rules import LITERAL, REDACTED, PassSpec, ascii_lower

_BOOLEANS = frozenset(["true", "false", "yes", "no", "on", "off", "none", "null", "0", "1", "y", "n"])


def usable_secret_value(value: str) -> bool:
    """An env value worth hunting for: 4+ characters, not a boolean, not part of ``REDACTED``."""
    value = value.strip()
    return len(value) >= 4 and value.lower() not in _BOOLEANS and value not in REDACTED


def literal_forms(value: str) -> set[str]:
    """The value as it may appear in output: raw, base64 (std/urlsafe, also of the value plus a
    newline as ``echo $X | base64`` makes it), URL-encoded and JSON-escaped. Base64 forms are
    unpadded; whoever finds one takes up to two ``=`` after it along (:func:`literal_span`)."""
    value = value.strip()
    raw = value.encode("utf-8", "surrogateescape")
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1]}
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    for data in (raw, raw + b"\n"):
        for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
            forms.add(encoded.decode("ascii").rstrip("="))
    return {f for f in forms if len(f) >= 4 and f not in REDACTED}


def literal_span(text: str, start: int, length: int) -> tuple[int, int]:
    """The span of a literal found at ``start``, with base64 padding after it."""
    end = start + length
    if text.startswith("=", end):
        end += 2 if text.startswith("==", end) else 1
    return start, end


def finditer_sparse(regex: re.Pattern[AnyStr], subject: AnyStr, anchor: AnyStr) -> Iterator[re.Match[AnyStr]]:
    """``regex.finditer(subject)`` for a regex whose every match starts with the one character
    ``anchor``, rare in ``subject``: jumps from anchor to anchor with ``find`` (``memchr``, about
    ten times faster than the scan loop of ``re``). Where anchors turn out to be dense (more
    than about one per KiB), ``re`` scans the rest."""
    find, match = subject.find, regex.match
    budget = 32 + (len(subject) >> 10)
    pos = find(anchor)
    while pos >= 0:
        budget -= 1
        if budget < 0:
            yield from regex.finditer(subject, pos)  # lookbehinds still see the text before pos
            return
        m = match(subject, pos)
        if m is None:
            pos = find(anchor, pos + 1)
        else:
            yield m
            pos = find(anchor, m.end())


def finditer_near(
    regex: re.Pattern[AnyStr], subject: AnyStr, anchor: AnyStr, ends: list[int], reach: int
) -> Iterator[re.Match[AnyStr]]:
    """``regex.finditer(subject)`` for a regex whose every match starts with ``anchor``, whole
    before one of ``ends`` and at most ``reach`` characters before it (``ends``: where a
    prefilter's matches end): ``regex`` is tried at the anchors of those windows only."""
    find, match = subject.find, regex.match
    lo = 0  # anchors before this were tried already, or lie inside a match
    for end in sorted(ends):
        pos = find(anchor, max(lo, end - reach), end)
        while pos >= 0:
            m = match(subject, pos)
            if m is None:
                pos = find(anchor, pos + 1, end)
                continue
            yield m
            lo = m.end()
            pos = find(anchor, lo, end) if lo < end else -1
        lo = max(lo, end - len(anchor) + 1)
    return


def branch(lit: str, i: int) -> str:
    """Regex text after the anchor ``lit[i]``: ``lit`` around it, checked without consuming."""
    behind = f"(?<={re.escape(lit[: i + 1])})" if i else ""
    ahead = f"(?={re.escape(lit[i + 1 :])})" if i + 1 < len(lit) else ""
    return behind + ahead


class Literal(NamedTuple):
    """A literal placed in a pass: found where its anchor ``text[i]`` is."""

    text: str
    i: int
    #: Matched on the lowercased text: compare with the original before reporting.
    verify: bool


def place_literals(
    literals: Iterable[str], specs: Sequence[PassSpec]
) -> tuple[dict[int, list[tuple[int, str, int]]], list[Literal], list[str]]:
    """Put each literal into a rule pass that can carry it, at an anchor no rule can claim.

    Returns the branches per spec index (action code, text as matched, anchor index), the table
    of placed literals (``LITERAL - k`` is ``table[k]``), and the literals no pass could take.
    """
    hosts = sorted((i for i, s in enumerate(specs) if s.blocks), key=lambda i: specs[i].host_rank)
    per_spec: dict[int, list[tuple[int, str, int]]] = {}
    table: list[Literal] = []
    rest: list[str] = []
    for lit in sorted(set(literals), key=lambda s: (-len(s), s)):  # longest first
        for index in hosts:
            spec = specs[index]
            seen = ascii_lower(lit) if spec.lowered else lit
            blocks = spec.blocks
            assert blocks is not None
            at = [i for i, c in enumerate(seen) if c == spec.anchor and not blocks(seen, i)]
            if at:
                per_spec.setdefault(index, []).append((LITERAL - len(table), seen, at[0]))
                table.append(Literal(lit, at[0], spec.lowered))
                break
        else:
            rest.append(lit)
    return per_spec, table, rest


#: Rough character frequency in logs, most common first; anything absent counts as rarest.
_COMMON = " e.t_a-o/i:n\"s,r=h'l(d)c\num0f1p2g3w4y5b6v7k8x9jqz>[]{}<*#+TSAEIRNOLCDPMUBFGHWYKVJXQZ"
_RANK = {c: i for i, c in enumerate(_COMMON)}
_RARE_FROM = _RANK["k"]


def _rarity(char: str) -> int:
    return _RANK.get(char, len(_COMMON))


class LiteralMatcher:
    """Finds literals in passes of their own: grouped by an anchor character they contain,
    chosen greedily to be rare in logs and to cover many literals (each pass costs a scan)."""

    def __init__(self, literals: Iterable[str]) -> None:
        todo = sorted(set(literals), key=lambda s: (-len(s), s))
        self._passes: list[tuple[re.Pattern[str], str, list[tuple[int, int]]]] = []
        while todo:
            counts: dict[str, int] = {}
            for lit in todo:
                for ch in set(lit):
                    counts[ch] = counts.get(ch, 0) + 1
            rare = {c: n for c, n in counts.items() if _rarity(c) >= _RARE_FROM}
            if rare:
                anchor = max(rare, key=lambda c: (rare[c], _rarity(c), c))
            else:  # a literal of common characters only: its rarest one
                anchor = max(counts, key=lambda c: (_rarity(c), c))
            group = [lit for lit in todo if anchor in lit]
            todo = [lit for lit in todo if anchor not in lit]
            branches, spans = [], [(0, 0)]
            for lit in group:  # still longest first
                i = lit.index(anchor)
                branches.append(branch(lit, i) + "()")
                spans.append((i, len(lit)))
            pattern = re.escape(anchor) + "(?:" + "|".join(branches) + ")"
            self._passes.append((re.compile(pattern), anchor, spans))

    def scan(self, text: str, add: list[tuple[int, int]]) -> None:
        """Append the span of every literal occurrence in ``text`` to ``add``."""
        for regex, anchor, spans in self._passes:
            for m in finditer_sparse(regex, text, anchor):
                back, length = spans[m.lastindex or 0]
                add.append(literal_span(text, m.start() - back, length))

