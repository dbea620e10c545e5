"""The span finder of the redactor: runs every rule over a text and returns what to replace.

Rules run independently (one regex pass each, see :mod:`redact_rules`); their spans are merged.
Two rules look at the text *next to* a match: a token must not follow a letter or digit, and a
``name=value`` name is judged by the whole identifier before the ``=``. When another secret ends
right there (``<env secret>ghp_...``, ``<env secret>pass=...``), the match is judged again with
that secret cut off, as if it were already ``[REDACTED]``. That keeps redaction idempotent and
catches secrets glued to other secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from celery_selfheal.core import redact_rules as rules
from celery_selfheal.core import redact_values as values
from celery_selfheal.core.redact_catalog import Catalog
from celery_selfheal.core.redact_engine import ascii_bytes, hyperscan
from celery_selfheal.core.redact_literals import (
    Literal,
    LiteralMatcher,
    finditer_near,
    finditer_sparse,
    literal_span,
    place_literals,
)
from celery_selfheal.core.redact_rules import LITERAL, NAME, REDACTED, SECRET_SUFFIX
from celery_selfheal.core.redact_seen import SeenSecrets
from celery_selfheal.core.redact_spans import merge
from celery_selfheal.core.redact_wrapped import WrappedBase64

Span = tuple[int, int]


class Found(NamedTuple):
    """What :meth:`SpanFinder.find` found in a text."""

    #: Sorted, merged ``(start, end)`` spans to replace.
    spans: list[Span]
    #: Start of an unterminated PEM block (its span runs to the end of the text), or -1.
    open_pem: int
    #: Starts of all PEM blocks.
    pem_starts: list[int]
    #: Values redacted here for the first time -> where first (see :mod:`redact_seen`).
    new: dict[str, int]


#: Characters up to a name's end that key :data:`_NAMES`: they decide a shorter name.
_KEY = 24
#: The text up to a ``name=value`` name's end -> its :func:`rules.name_kind`. Most names in
#: logs are not secret and recur (log keys): this spares finding and judging them again.
_NAMES: dict[str, int] = {}


class SpanFinder:
    """Finds the spans to redact in a text, for a fixed set of literals, patterns and allowlist."""

    def __init__(
        self,
        literals: Iterable[str],
        extra: Iterable[str],
        allow: frozenset[str],
        catalog: Catalog | None = None,
        raw_values: Iterable[str] = (),
    ) -> None:
        literals = set(literals)
        self._literal_set = frozenset(literals)
        self._catalog = catalog
        self.max_literal = max(map(len, literals), default=0)
        prefiltered = catalog.pass_prefilters if catalog is not None else {}
        # With Hyperscan, ASCII literals are found in the scan for wrapped base64; the rest ride
        # in rule passes where they can (not in prefiltered ones: those scan only near hits).
        in_db = {lit for lit in literals if lit.isascii()} if hyperscan is not None else set()
        self._wrapped = WrappedBase64(raw_values, in_db)
        self.max_wrapped = self._wrapped.max_len + 64
        hosts = [spec._replace(blocks=None) if i in prefiltered else spec for i, spec in enumerate(rules.PASSES)]
        placed, self._table, rest = place_literals(literals - in_db, hosts)
        self._passes = [
            _Pass(
                spec.lowered,
                *rules.compile_pass(spec, placed.get(i, ())),
                spec.anchor if spec.sparse or i in prefiltered else "",
                rules.prefilter_reach(spec) if i in prefiltered else 0,
            )
            for i, spec in enumerate(rules.PASSES)
        ]
        #: pass regex -> {marker group: the alternative's first group} (for glued names)
        self._first = {p.regex: {k: v[1] for k, v in p.actions.items()} for p in self._passes}
        self._literals = LiteralMatcher(rest)
        self._extra = tuple(re.compile(p) for p in extra)
        self._allow = allow

    def find(self, text: str, seen: SeenSecrets | None = None, new_from: int = 0) -> Found:
        """The spans to replace in ``text``; with ``seen``, also every later occurrence of a
        value redacted from ``new_from`` on (before it is context only: a name cut short there
        is no proof) or remembered in ``seen`` (the caller commits :attr:`Found.new`)."""
        scan = _Scan(text, self._table, self._first)
        data = ascii_bytes(text)  # one copy for the Hyperscan databases
        catalog = self._catalog
        hits, ends = catalog.prefilter(text, data) if catalog is not None else ([], {})
        for i, spec in enumerate(self._passes):
            scan.run(spec, ends.get(i) if spec.reach else None)
        if catalog is not None:
            catalog.scan(text, scan.low, scan.found, scan.glued_tokens, data, hits)
        url_ends = ends.get(rules.URL_KEY)
        urls = values.URL_PASSWORD.finditer(text) if url_ends is None else (
            finditer_near(values.URL_PASSWORD, text, "://", url_ends, values.URL_REACH)
        )
        scan.found.extend(um.span(1) for um in urls)
        self._literals.scan(text, scan.found)
        self._wrapped.scan(text, scan.found, data)
        for regex in self._extra:
            scan.found.extend(em.span() for em in regex.finditer(text) if em.end() > em.start())
        open_pem = scan.pem_blocks()
        scan.glued()
        found = scan.found
        if self._allow:
            found = [s for s in found if text[s[0] : s[1]] not in self._allow]
        found = [s for s in found if not text.startswith(REDACTED, s[0])]
        new: dict[str, int] = {}
        if seen is not None:
            new = seen.first_found(text, found, new_from, self._literal_set)
            found += seen.occurrences(text, new, data, merge(found[:]))
        return Found(merge(found), open_pem, scan.pem_starts, new)


class _Pass(NamedTuple):
    """One compiled rule pass (see :class:`rules.PassSpec`)."""

    lowered: bool
    regex: re.Pattern[Any]
    actions: rules.Actions
    #: The anchor when the pass is sparse or prefiltered, else "".
    anchor: str
    #: :func:`rules.prefilter_reach` when the catalog runs its prefilters, else 0.
    reach: int


class _Scan:
    """The state of one :meth:`SpanFinder.find` call."""

    def __init__(self, text: str, table: list[Literal], first: dict[Any, dict[int, int]]) -> None:
        self.text = text
        self.first = first
        self.low = rules.ascii_lower(text)
        self.table = table
        self.found: list[Span] = []
        self.pem_headers: list[int] = []
        self.pem_starts: list[int] = []
        #: Tokens refused because a letter/digit precedes them: start -> end.
        self.glued_tokens: dict[int, int] = {}
        #: Matches of names that are not secret but end with a secret word.
        self.glued_names: list[re.Match[str]] = []
        #: The last run of bare value characters looked at (see :meth:`bare_end`).
        self._bare_run = (0, 0)

    def run(self, spec: _Pass, ends: list[int] | None) -> None:
        """Run one pass (``ends``: where its prefilters matched, if the catalog ran them). A hot
        loop: what it calls is bound to local names first."""
        text, low, add = self.text, self.low, self.found.append
        glued_tokens, glued_name = self.glued_tokens, self.glued_names.append
        follows_alnum, names = rules.follows_alnum, _NAMES
        regex, actions, anchor = spec.regex, spec.actions, spec.anchor
        subject = low if spec.lowered else text
        if ends is not None:
            matches: Iterable[re.Match[str]] = finditer_near(regex, subject, anchor, ends, spec.reach)
        else:
            matches = finditer_sparse(regex, subject, anchor) if anchor else regex.finditer(subject)
        for m in matches:
            action, first = actions[m.lastindex or 0]
            if action == NAME:  # the most frequent match: kept short
                end = m.end(first)
                key = text[end - _KEY : end] if end >= _KEY else ""
                kind = names.get(key)
                if kind is None:
                    kind = self.judge(m.start(), end, key)
                if kind == SECRET_SUFFIX:
                    glued_name(m)
                elif kind:
                    self.secret_name(m.start(), end, m.end())
            elif action >= 0:
                start = m.start() - action
                if follows_alnum(low, start):
                    glued_tokens[start] = m.end()
                else:
                    add((start, m.end()))
            elif action <= LITERAL:
                lit = self.table[LITERAL - action]
                start = m.start() - lit.i
                if not lit.verify or text.startswith(lit.text, start):
                    add(literal_span(text, start, len(lit.text)))
            else:  # PEM header
                self.pem_headers.append(m.end())

    def judge(self, at: int, end: int, key: str) -> int:
        """:func:`rules.name_kind` of the name with a secret word at ``at`` and ending at ``end``
        (remembered for ``key`` if that decides it)."""
        start = name_start(self.low, at)
        kind = rules.name_kind(self.text[start:end])
        if key and end - start < _KEY:  # the name and the character before it are in the key
            if len(_NAMES) >= 8192:
                _NAMES.clear()
            _NAMES[key] = kind
        return kind

    def secret_name(self, at: int, end: int, pos: int) -> None:
        """Redact the value at ``pos`` of the secret name with a secret word at ``at``."""
        start = name_start(self.low, at)
        # "scheme://token:pw@host" is userinfo: the URL rule keeps the host.
        if not (start >= 3 and self.low.startswith("://", start - 3)):
            self.value(self.text[start:end], pos)

    def value(self, name: str, pos: int) -> None:
        """Redact the value of the secret-like ``name`` that starts at ``pos``."""
        low = self.low
        v = values.VALUE_HEAD.match(low, pos)
        if v is None:
            return
        group = v.lastindex or 0
        start, end = v.span(group)
        if group == 4:
            end = self.bare_end(start)
        if end - start <= values.NOT_VALUE_MAX and low[start:end] in values.NOT_VALUES:
            return
        if group == 4 and start == pos and values.prose_value(self.text, low, start, end):
            return
        if name.lower().endswith(values.PLURALS) and low[start:end].isdigit():  # keys=12: a count
            return
        if group < 4 and values.ATTR_VALUE.match(low, end + 1):  # key="Name" value="...": a name
            return
        if group == 4 and "cookie" in name.lower():  # a Cookie header: all of its pairs
            end = start + len(values.TO_EOL.match(low, start).group())  # type: ignore[union-attr]
        self.found.append((start, end))

    def bare_end(self, start: int) -> int:
        """Where the bare value (:data:`values.VALUE` group 4) that starts at ``start`` ends."""
        run_start, run_end = self._bare_run
        if not run_start <= start < run_end:  # not in the run of the last bare value
            stop = values.BARE_STOP.search(self.low, start)
            run_end = stop.start() if stop else len(self.low)
            self._bare_run = (start, run_end)
        return min(run_end, start + values.MAX_BARE)

    def pem_blocks(self) -> int:
        """Add PEM private-key blocks (BEGIN through END); return the start of an unterminated one."""
        text, done = self.text, 0
        for header_end in self.pem_headers:
            begin = text.rfind("-----BEGIN", max(0, header_end - rules.PEM_MARKER_MAX), header_end)
            header = rules.PEM_BEGIN.match(text, begin) if begin >= done else None
            if header is None or header.end() != header_end:
                continue
            self.pem_starts.append(begin)
            end = rules.PEM_END.search(text, header_end)
            if end is None:
                self.found.append((begin, len(text)))
                return begin
            self.found.append((begin, end.end()))
            done = end.end()
        return -1

    def glued(self) -> None:
        """Judge again the tokens and names that a found secret ends inside or right before."""
        if not (self.glued_tokens or self.glued_names):
            return
        text, low, ident_run = self.text, self.low, rules.IDENT_RUN.match
        ends = [end for _, end in self.found]
        while ends:
            size = len(self.found)
            cut_names: dict[int, list[int]] = {}  # name end -> where a found secret cuts the name
            for end in ends:
                token_end = self.glued_tokens.pop(end, None)
                if token_end is not None:
                    self.found.append((end, token_end))
                if self.glued_names:
                    name_end = ident_run(low, end).end()  # type: ignore[union-attr]
                    if name_end > end:
                        cut_names.setdefault(name_end, []).append(end)
            if cut_names:
                for m in self.glued_names:
                    name_end = m.end(self.first[m.re][m.lastindex or 0])
                    start = name_start(low, m.start())
                    for end in cut_names.get(name_end, ()):
                        name = text[end:name_end]
                        if start < end and rules.is_secret_name_cached(name):
                            self.value(name, m.end())
            ends = [end for _, end in self.found[size:]]


def name_start(low: str, at: int) -> int:
    """Start of the identifier (at most 64 characters) that ends at ``at`` in the lowered text."""
    before = low[max(0, at - 64) : at]
    return at - len(before) + len(before.rstrip(rules.IDENT_CHARS))
