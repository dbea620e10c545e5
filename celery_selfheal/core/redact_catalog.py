"""The token catalog: provider secret formats recognised on their own, kept as data.

The rules live in ``rules/secrets.toml`` (one ``[[rule]]`` per format: id, family, description,
keyword, regex, examples; see the file's header), loaded once. Extra rules come from
``config.toml [redaction] rules`` in the same shape. Pure: no I/O beyond reading the package file.

Finding them is two steps. A multi-pattern *prefilter* finds every place where a rule's keyword
(or its ``prefilter`` regex: the keyword plus the first run of the token) occurs, all rules at
once; then the rule's own Python regex is matched there. With hundreds of rules a scan per rule,
or one ``re`` alternation, is far too slow (``re`` tries an alternation at every position, ~40
MB/s); Hyperscan scans for all prefilters in one pass at GB/s, so it is the engine
(``bench/bench_redact.py --engines`` measures both). A pure-Python prefilter (``str.find`` per
keyword, ~8 MB/s) is the fallback where the ``hyperscan`` wheel cannot load.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

try:  # the wheel ships its own library; a platform without one falls back to pure Python
    import hyperscan
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    hyperscan = None

Span = tuple[int, int]


@dataclass(frozen=True)
class Rule:
    """One token format."""

    id: str
    family: str
    description: str
    #: Literal text every match contains.
    keyword: str
    #: Python regex of the whole token, matched where the keyword is found.
    regex: re.Pattern[str]
    #: The prefilter pattern (Hyperscan syntax; a plain escaped keyword by default).
    prefilter: str
    #: Characters a match may start before the keyword.
    before: int
    #: Fake tokens of this shape.
    examples: tuple[str, ...]
    #: Longest possible match.
    max_len: int


class CatalogError(ValueError):
    """A rule entry is malformed (message names the rule and the field)."""


def _width(pattern: str) -> tuple[int, int]:
    low, high = sre_parse.parse(pattern).getwidth()
    return int(low), int(min(high, 1 << 20))


def make_rule(entry: Mapping[str, Any], where: str = "rule") -> Rule:
    """A :class:`Rule` from one table (built-in file or ``[redaction] rules``); checks that the
    regex compiles, contains the keyword where ``before`` says, and matches each example."""
    try:
        rid, keyword, source = str(entry["id"]), str(entry["keyword"]), str(entry["regex"])
    except KeyError as exc:
        raise CatalogError(f"{where}: missing key {exc.args[0]!r}") from None
    unknown = set(entry) - {"id", "family", "description", "keyword", "regex", "prefilter", "before", "examples"}
    if unknown:
        raise CatalogError(f"{where} {rid!r}: unknown key {sorted(unknown)[0]!r}")
    if len(keyword) < 2:
        raise CatalogError(f"{where} {rid!r}: keyword must be at least 2 characters")
    try:
        regex = re.compile(source)
    except re.error as exc:
        raise CatalogError(f"{where} {rid!r}: regex does not compile: {exc}") from None
    before = int(entry.get("before", 0))
    examples = tuple(str(e) for e in entry.get("examples", ()))
    for example in examples:
        m = regex.match(example)
        if m is None or m.end() != len(example) or example.find(keyword) > before:
            raise CatalogError(f"{where} {rid!r}: example {example[:12]!r}... does not match the rule")
    return Rule(
        id=rid,
        family=str(entry.get("family", rid.split("-")[0])),
        description=str(entry.get("description", "")),
        keyword=keyword,
        regex=regex,
        prefilter=str(entry.get("prefilter", re.escape(keyword))),
        before=before,
        examples=examples,
        max_len=_width(source)[1],
    )


@functools.cache
def builtin_rules() -> tuple[Rule, ...]:
    """The rules of ``rules/secrets.toml`` (parsed once per process)."""
    text = resources.files("celery_selfheal.core").joinpath("rules/secrets.toml").read_text("utf-8")
    table = tomllib.loads(text)
    return tuple(make_rule(e, "secrets.toml rule") for e in table["rule"])


class _HyperscanPrefilter:
    """All prefilters in one Hyperscan block-mode database; one scratch per thread."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        assert hyperscan is not None
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        pats = [r.prefilter.encode("ascii") for r in rules]
        self._db.compile(expressions=pats, ids=list(range(len(rules))), elements=len(pats), flags=0)
        # Hyperscan reports only where a match ends: the prefilter's length gives its start.
        self._width = [_width(r.prefilter) for r in rules]
        self._local = threading.local()

    def hits(self, text: str) -> list[tuple[int, int]]:
        """(rule index, start of the keyword) for each prefilter match."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        found: list[tuple[int, int]] = []
        add = found.append
        data = text.encode("ascii", "replace")  # same positions as the text

        def on_match(rule: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            add((rule, to))

        self._db.scan(data, match_event_handler=on_match, scratch=scratch)
        width = self._width
        out = []
        for rule, end in found:
            low, high = width[rule]
            if low == high:
                out.append((rule, end - low))
            else:  # a variable-width prefilter (config rules): any start is possible
                out.extend((rule, end - w) for w in range(low, high + 1) if end - w >= 0)
        return out


class _PythonPrefilter:
    """``str.find`` per keyword (the fastest pure-Python prefilter measured: ~8 MB/s with the
    built-in rules; a lookahead alternation of the keywords ran at ~2 MB/s)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._by_kw: dict[str, list[int]] = {}
        for i, r in enumerate(rules):
            self._by_kw.setdefault(r.keyword, []).append(i)

    def hits(self, text: str) -> list[tuple[int, int]]:
        """(rule index, start of the keyword) for each keyword occurrence."""
        out = []
        find = text.find
        for kw, ids in self._by_kw.items():
            pos = find(kw)
            while pos >= 0:
                out.extend((i, pos) for i in ids)
                pos = find(kw, pos + 1)
        return out


class Catalog:
    """Finds the catalog's tokens in a text."""

    def __init__(self, rules: Iterable[Rule], engine: str = "auto") -> None:
        self.rules = tuple(rules)
        self.max_len = max((r.max_len for r in self.rules), default=0)
        if engine == "auto":
            engine = "hyperscan" if hyperscan is not None else "python"
        self.engine = engine
        self._pre = _HyperscanPrefilter(self.rules) if engine == "hyperscan" else _PythonPrefilter(self.rules)

    def scan(self, text: str, low: str, found: list[Span], glued: dict[int, int]) -> None:
        """Append each token's span to ``found``; a token right after a letter or digit goes to
        ``glued`` (start -> end) instead, to be taken if another secret ends there."""
        if not self.rules:
            return
        rules = self.rules
        seen: set[tuple[int, int]] = set()
        for index, kw_start in self._pre.hits(text):
            rule = rules[index]
            if rule.keyword != text[kw_start : kw_start + len(rule.keyword)]:
                continue  # a non-ASCII character became "?" in the prefilter's copy
            m = None
            for start in range(max(0, kw_start - rule.before), kw_start + 1):
                m = rule.regex.match(text, start)
                if m is not None and m.end() > kw_start:
                    break
                m = None
            if m is None or m.span() in seen:
                continue
            seen.add(m.span())
            start = m.start()
            if "secret" in rule.regex.groupindex:  # a context rule: only the value is secret
                found.append(m.span("secret"))
            elif start > 0 and low[start - 1].isalnum() and low[start - 1].isascii():
                glued[start] = max(glued.get(start, 0), m.end())
            else:
                found.append(m.span())


@functools.lru_cache(maxsize=16)
def catalog_for(extra: tuple[tuple[tuple[str, Any], ...], ...] = (), engine: str = "auto") -> Catalog:
    """The built-in rules plus ``extra`` (config rules as sorted item tuples), cached."""
    rules = list(builtin_rules())
    rules += [make_rule(dict(e), "[redaction] rules entry") for e in extra]
    return Catalog(rules, engine)
