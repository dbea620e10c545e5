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
keyword, ~8 MB/s) is the fallback where the ``hyperscan`` wheel cannot load (both engines are in
:mod:`redact_engine`).

The same Hyperscan scan also runs the context rules' prefilters (a cheaper ``loose`` pattern,
checked with ``re``, where the exact one is slow to scan for) and the prefilters of the rule
passes that have them (:attr:`redact_rules.PassSpec.prefilter`, and the URL password rule): the
span finder then runs those passes with ``re`` only near their hits. One scan of the text for
all of them is what keeps the full rule set above 100 MB/s.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from celery_selfheal.core.redact_context import CONTEXT_RULES, MAX_VALUE, ContextRule
from celery_selfheal.core.redact_engine import (
    HyperscanPrefilter,
    PythonPrefilter,
    ctx_flags,
    hyperscan,
    prefilter_problem,
    width,
)
from celery_selfheal.core.redact_rules import PASSES, URL_KEY, is_secret_name_cached
from celery_selfheal.core.redact_values import NOT_VALUES, URL_PREFILTER

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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
        max_len=width(source)[1],
    )


def make_config_rule(entry: Mapping[str, Any], where: str = "rule") -> Rule:
    """`make_rule` for a user's ``[[redaction.rules]]`` table, whose ``prefilter`` is also checked
    the way the scanner will use it (the built-in file's are checked by its tests, not at every
    start-up)."""
    rule = make_rule(entry, where)
    if "prefilter" in entry and (problem := prefilter_problem(rule.prefilter)):
        raise CatalogError(f"{where} {rule.id!r}: prefilter {problem}")
    return rule


@functools.cache
def builtin_rules() -> tuple[Rule, ...]:
    """The rules of ``rules/secrets.toml`` (parsed once per process)."""
    text = resources.files("celery_selfheal.core").joinpath("rules/secrets.toml").read_text("utf-8")
    table = tomllib.loads(text)
    return tuple(make_rule(e, "secrets.toml rule") for e in table["rule"])


class Catalog:
    """Finds the catalog's tokens and the context rules' values in a text."""

    def __init__(
        self, rules: Iterable[Rule], engine: str = "auto", contexts: Sequence[ContextRule] = CONTEXT_RULES
    ) -> None:
        self.rules = tuple(rules)
        self.contexts = tuple(contexts)
        #: Longest possible match (a context match: its name, value and the text between).
        self.max_len = max([r.max_len for r in self.rules] + [MAX_VALUE + 512])
        if engine == "auto":
            engine = "hyperscan" if hyperscan is not None else "python"
        self.engine = engine
        #: Pass index -> (prefilter patterns (:attr:`PassSpec.prefilter`), caseless), found in
        #: the same scan as the catalog's (Hyperscan only: the Python engine runs passes whole).
        #: The URL password rule too (key :data:`URL_KEY`).
        self.pass_prefilters: dict[int, tuple[tuple[str, ...], bool]] = {}
        if engine == "hyperscan":
            self.pass_prefilters = {i: (p.prefilter, p.lowered) for i, p in enumerate(PASSES) if p.prefilter}
            self.pass_prefilters[URL_KEY] = ((URL_PREFILTER,), False)
        self._pass_of = [i for i, (pats, _) in self.pass_prefilters.items() for _ in pats]
        pats = [(p, caseless) for pats, caseless in self.pass_prefilters.values() for p in pats]
        if engine == "hyperscan":
            self._pre: HyperscanPrefilter | PythonPrefilter = HyperscanPrefilter(self.rules, self.contexts, pats)
        else:
            self._pre = PythonPrefilter(self.rules, self.contexts)
        self._ctx_width = [width(c.prefilter)[1] for c in self.contexts]
        #: Per context: its prefilter, to check a hit of its ``loose`` pattern (Hyperscan only).
        self._ctx_verify = [
            # ASCII semantics, like Hyperscan's on the scanned copy (non-ASCII is "?" there)
            re.compile(f"(?:{c.prefilter})\\Z", ctx_flags(c) | re.ASCII) if c.loose and engine == "hyperscan" else None
            for c in self.contexts
        ]

    def prefilter(self, text: str, data: bytes | None = None) -> tuple[list[tuple[int, int]], dict[int, list[int]]]:
        """The prefilter hits in ``text``: those of the rules and contexts (for :meth:`scan`),
        and pass index -> where its prefilters' matches end (for each of :attr:`pass_prefilters`)."""
        hits = self._pre.hits(text, data)
        ends: dict[int, list[int]] = {i: [] for i in self.pass_prefilters}
        first = len(self.rules) + len(self.contexts)
        if self._pass_of and any(index >= first for index, _ in hits):
            pass_of = self._pass_of
            for index, end in hits:
                if index >= first:
                    ends[pass_of[index - first]].append(end)
            hits = [hit for hit in hits if hit[0] < first]
        return hits, ends

    def scan(
        self,
        text: str,
        low: str,
        found: list[Span],
        glued: dict[int, int],
        data: bytes | None = None,
        hits: list[tuple[int, int]] | None = None,
    ) -> None:
        """Append each secret's span to ``found``; a token right after a letter or digit goes to
        ``glued`` (start -> end) instead, to be taken if another secret ends there. ``hits``:
        the first part of :meth:`prefilter`, if the caller has it."""
        rules, n = self.rules, len(self.rules)
        seen: set[tuple[int, int]] = set()
        for index, at in self.prefilter(text, data)[0] if hits is None else hits:
            if index >= n:
                self._context(index - n, text, at, found, seen)
                continue
            rule = rules[index]
            if rule.keyword != text[at : at + len(rule.keyword)]:
                continue  # a non-ASCII character became "?" in the prefilter's copy
            m = None
            for start in range(max(0, at - rule.before), at + 1):
                m = rule.regex.match(text, start)
                if m is not None and m.end() > at:
                    break
                m = None
            if m is None or m.span() in seen:
                continue
            seen.add(m.span())
            start = m.start()
            if "secret" in rule.regex.groupindex:  # a rule with a context word: only the value
                found.append(m.span("secret"))
            elif start > 0 and low[start - 1].isalnum() and low[start - 1].isascii():
                glued[start] = max(glued.get(start, 0), m.end())
            else:
                found.append(m.span())

    def _context(self, index: int, text: str, end: int, found: list[Span], seen: set[Span]) -> None:
        """The value of context rule ``index`` whose prefilter matched up to ``end``."""
        rule = self.contexts[index]
        pos, stop = max(0, end - self._ctx_width[index]), min(len(text), end + MAX_VALUE + 256)
        verify = self._ctx_verify[index]
        if verify is not None:
            line = text.rfind("\n", pos, end) + 1 if rule.one_line else 0
            if verify.search(text, max(pos, line), end) is None:
                return  # a hit of the loose pattern only
        named = "name" in rule.regex.groupindex
        while True:  # the window may hold other matches first (<username>ci</username><password>)
            m = rule.regex.search(text, pos, stop)
            if m is None or m.start() >= end:
                return
            pos = m.start() + 1
            if m.span() in seen:
                continue
            seen.add(m.span())
            if named and not is_secret_name_cached(m.group("name")):
                continue
            value = m.group("secret").strip()
            if value and value.lower() not in NOT_VALUES and (rule.check is None or rule.check(value)):
                found.append(m.span("secret"))


@functools.lru_cache(maxsize=16)
def catalog_for(extra: tuple[tuple[tuple[str, Any], ...], ...] = (), engine: str = "auto") -> Catalog:
    """The built-in rules plus ``extra`` (config rules as sorted item tuples), cached."""
    rules = list(builtin_rules())
    rules += [make_rule(dict(e), "[redaction] rules entry") for e in extra]
    return Catalog(rules, engine)
