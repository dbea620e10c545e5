"""The multi-pattern engines of the redactor's token catalog (:mod:`redact_catalog`).

:class:`HyperscanPrefilter` runs every prefilter (catalog rules, context rules, prefiltered rule
passes) in one Hyperscan scan; :class:`PythonPrefilter` is the pure-Python fallback where the
``hyperscan`` wheel cannot load. Both report (pattern index, position) hits.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

from celery_selfheal.core.redact_context import ContextRule

if TYPE_CHECKING:
    from celery_selfheal.core.redact_catalog import Rule

hyperscan: Any
try:  # the wheel ships its own library; a platform without one falls back to pure Python
    import hyperscan
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    hyperscan = None


def ascii_bytes(text: str) -> bytes:
    """``text`` as ASCII bytes at the same positions (non-ASCII becomes ``?``): what the
    Hyperscan databases scan. One copy per scanned batch, shared by all of them."""
    return text.encode("ascii", "replace")


def width(pattern: str) -> tuple[int, int]:
    """Shortest and longest match of a regex (the longest capped at 1 Mi)."""
    low, high = sre_parse.parse(pattern).getwidth()
    return int(low), int(min(high, 1 << 20))


def prefilter_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a rule's prefilter here, or None: it must be ASCII, parse as a
    regex (its width is taken) and, where Hyperscan is used, compile there (a user's rule is
    checked with this when the configuration is read, not at the first redaction)."""
    if not pattern.isascii():
        return "must be ASCII"
    try:
        width(pattern)
    except re.error as exc:
        return f"does not parse: {exc}"
    if hyperscan is not None:
        try:
            hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK).compile(expressions=[pattern.encode("ascii")])
        except hyperscan.error as exc:
            return f"Hyperscan cannot compile it: {exc}"
    return None


def ctx_flags(rule: ContextRule) -> int:
    """The ``re`` flags of a context prefilter."""
    return (re.I if rule.caseless else 0) | (re.M if rule.multiline else 0)


class HyperscanPrefilter:
    """All prefilters in one Hyperscan block-mode database; one scratch per thread."""

    def __init__(
        self, rules: Sequence[Rule], contexts: Sequence[ContextRule], passes: Sequence[tuple[str, bool]] = ()
    ) -> None:
        """``passes``: (pattern, caseless) of each pass prefilter."""
        assert hyperscan is not None
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        sources = [r.prefilter for r in rules] + [c.loose or c.prefilter for c in contexts] + [p for p, _ in passes]
        caseless, multiline = hyperscan.HS_FLAG_CASELESS, hyperscan.HS_FLAG_MULTILINE
        flags = (
            [0] * len(rules)
            + [(caseless if c.caseless else 0) | (multiline if c.multiline else 0) for c in contexts]
            + [caseless if lowered else 0 for _, lowered in passes]
        )
        pats = [p.encode("ascii") for p in sources]
        self._db.compile(expressions=pats, ids=list(range(len(pats))), elements=len(pats), flags=flags)
        # Hyperscan reports only where a match ends (a leftmost start is too costly for these
        # patterns): a catalog prefilter's width gives its start.
        self._width = [width(r.prefilter) for r in rules]
        self._local = threading.local()

    def hits(self, text: str, data: bytes | None = None) -> list[tuple[int, int]]:
        """(rule index, keyword start) per catalog prefilter match, (index, match end) per
        context or pass prefilter match (numbered after the catalog's rules). ``data``:
        :func:`ascii_bytes` of the text, if the caller has it."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        found: list[tuple[int, int]] = []
        add = found.append
        data = ascii_bytes(text) if data is None else data

        def on_match(rule: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            add((rule, to))

        self._db.scan(data, match_event_handler=on_match, scratch=scratch)
        width, n = self._width, len(self._width)
        out = []
        for rule, end in found:
            if rule >= n:
                out.append((rule, end))
                continue
            low, high = width[rule]
            if low == high:
                out.append((rule, end - low))
            else:  # a variable-width prefilter (config rules): any start is possible
                out.extend((rule, end - w) for w in range(low, high + 1) if end - w >= 0)
        return out


class PythonPrefilter:
    """``str.find`` per keyword (the fastest pure-Python prefilter measured: ~8 MB/s with the
    built-in rules; a lookahead alternation of the keywords ran at ~2 MB/s), ``re`` per context."""

    def __init__(
        self, rules: Sequence[Rule], contexts: Sequence[ContextRule], passes: Sequence[tuple[str, bool]] = ()
    ) -> None:
        assert not passes, "the pure-Python engine runs the passes whole"
        self._by_kw: dict[str, list[int]] = {}
        for i, r in enumerate(rules):
            self._by_kw.setdefault(r.keyword, []).append(i)
        self._contexts = [(len(rules) + j, re.compile(c.prefilter, ctx_flags(c))) for j, c in enumerate(contexts)]

    def hits(self, text: str, data: bytes | None = None) -> list[tuple[int, int]]:
        """Like :meth:`HyperscanPrefilter.hits`."""
        out: list[tuple[int, int]] = []
        find = text.find
        for kw, ids in self._by_kw.items():
            pos = find(kw)
            while pos >= 0:
                out.extend((i, pos) for i in ids)
                pos = find(kw, pos + 1)
        for index, regex in self._contexts:
            out.extend((index, m.end()) for m in regex.finditer(text))
        return out
