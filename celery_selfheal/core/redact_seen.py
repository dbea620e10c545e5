"""Once seen, always redacted: secret values found earlier in a stream, found again later.

A rule finds a secret where its context says so (``token = '<secret>'``); the same value printed
again without that context (``| '<secret>'``, an ``echo`` of it, its base64) would survive. The
span finder hands every value it redacts to a :class:`SeenSecrets`; every later occurrence of
the value, or of one of its encoded forms (:func:`literal_forms`), is redacted too. "Later" is
what keeps streaming equal to whole-text redaction: an occurrence before the first detection is
already emitted in a stream, so whole-text redaction leaves it too.

Bounded: the first :data:`LIMIT` distinct values of a stream (by where they are first found: the
same ones whatever the chunking, so streaming still equals whole-text redaction; forgetting the
oldest would not be), each at most :data:`MAX_VALUE_LEN` characters; later new values are only
redacted where their rule finds them. Values shorter than :data:`MIN_VALUE_LEN` are not hunted for
(``password=1234`` must not turn every later ``1234`` into ``[REDACTED]``).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence

from celery_selfheal.core.redact_engine import ascii_bytes, hyperscan
from celery_selfheal.core.redact_literals import literal_forms, literal_span
from celery_selfheal.core.redact_rules import REDACTED

LIMIT = 256
MIN_VALUE_LEN = 8
MAX_VALUE_LEN = 512
#: Below this many characters scanned (text length x forms), ``str.find`` beats compiling.
_FIND_BUDGET = 4_000_000
#: About what one rebuild of the Hyperscan database costs, in the same units (measured: a
#: rebuild ~1 ms, ``str.find`` of one form in 256 Ki characters ~60 us).
_REBUILD_COST = 4_000_000

Span = tuple[int, int]


def rememberable(value: str) -> bool:
    """A redacted value worth finding again: long enough, one line, not a marker."""
    return MIN_VALUE_LEN <= len(value) <= MAX_VALUE_LEN and "\n" not in value and REDACTED not in value


class SeenSecrets:
    """The values one stream has redacted so far (at most ``limit``)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._values: dict[str, None] = {}
        self._forms: dict[str, frozenset[str]] = {}
        self._db_key: tuple[str, ...] = ()
        self._db: object = None
        self._db_forms: list[str] = []
        self._db_set: frozenset[str] = frozenset()
        #: ``str.find`` work (characters x forms) on forms not in the database since its build
        self._find_spent = 0
        #: (how many values were remembered, their forms) from the last call without new values
        self._cached: tuple[int, dict[str, int]] | None = None
        #: (forms, the ASCII ones, the others) of the last Hyperscan pass
        self._split: tuple[Mapping[str, int], dict[str, int], dict[str, int]] | None = None

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def __len__(self) -> int:
        return len(self._values)

    @property
    def room(self) -> int:
        """How many more values can be remembered."""
        return self._limit - len(self._values)

    def commit(self, values: Iterable[str]) -> None:
        """Remember ``values`` (checked with :func:`rememberable`, in stream order) while there
        is room."""
        for value in values:
            if len(self._values) >= self._limit:
                return
            self._values[value] = None

    def first_found(self, text: str, found: Iterable[Span], new_from: int, known: Container[str]) -> dict[str, int]:
        """The values of the ``found`` spans from ``new_from`` on worth remembering and neither
        remembered nor ``known`` -> where each is first found; at most :attr:`room` of them, the
        first ones in stream order (the same at any split)."""
        new: dict[str, int] = {}
        for start, end in found:
            value = text[start:end]
            if start < new_from or value in self._values or value in known:
                continue
            if rememberable(value) and start < new.get(value, start + 1):
                new[value] = start
        if len(new) > self.room:
            new = dict(sorted(new.items(), key=lambda kv: kv[1])[: self.room])
        return new

    def _forms_of(self, value: str) -> frozenset[str]:
        forms = self._forms.get(value)
        if forms is None:
            if len(self._forms) > 4 * self._limit:
                self._forms.clear()
            forms = self._forms[value] = frozenset(f for f in literal_forms(value) if len(f) >= MIN_VALUE_LEN)
        return forms

    def occurrences(
        self, text: str, new: Mapping[str, int], data: bytes | None = None, covered: Sequence[Span] = ()
    ) -> list[Span]:
        """Spans of every remembered value (and form) in ``text``, and of each ``new`` value
        (value -> where it was first found in ``text``) after that first place. ``covered``:
        sorted, merged spans redacted anyway; an occurrence inside one may be left out."""
        values = list(self._values) + [v for v in new if v not in self._values]
        if not values:
            return []
        forms = self._all_forms(values, new)
        out: list[Span] = []
        segments = _outside(covered, len(text), max(map(len, forms), default=0) + 2)
        if hyperscan is None or len(text) * len(forms) <= _FIND_BUDGET:
            for lo, hi in segments:
                self._find(text, forms, out, lo, hi)
        else:
            data = ascii_bytes(text) if data is None else data
            for lo, hi in segments:
                self._scan(text, tuple(values), forms, out, data, lo, hi)
        return out

    def _all_forms(self, values: list[str], new: Mapping[str, int]) -> dict[str, int]:
        """Form -> occurrences must start after this position, for ``values``; the same dict
        for the same remembered values and no new ones (most batches of a long stream)."""
        if not new and self._cached is not None and self._cached[0] == len(self._values):
            return self._cached[1]
        forms: dict[str, int] = {}
        for value in values:
            first = new.get(value, -1) if value not in self._values else -1
            for form in self._forms_of(value):
                forms[form] = min(forms.get(form, first), first)
        if not new:
            self._cached = (len(self._values), forms)
        return forms

    @staticmethod
    def _find(text: str, forms: Mapping[str, int], out: list[Span], lo: int = 0, hi: int | None = None) -> None:
        find, hi = text.find, len(text) if hi is None else hi
        for form, after in forms.items():
            pos = find(form, max(after + 1, lo), hi)
            while pos >= 0:
                out.append(literal_span(text, pos, len(form)))
                pos = find(form, pos + 1, hi)

    def _scan(
        self, text: str, key: tuple[str, ...], forms: Mapping[str, int], out: list[Span], data: bytes, lo: int, hi: int
    ) -> None:
        """One Hyperscan literal pass; forms not in its database yet are found with ``str.find``
        until they would cost more than a rebuild."""
        if self._split is None or self._split[0] is not forms:  # same dict: same split
            self._split = (
                forms,
                {f: a for f, a in forms.items() if f.isascii()},
                {f: a for f, a in forms.items() if not f.isascii()},
            )
        ascii_forms = self._split[1]
        self._find(text, self._split[2], out, lo, hi)
        # Values arrive a few per batch early in a stream, and a rebuild costs about as much as
        # ``str.find`` of a dozen forms in a batch: the forms not in the database yet are found
        # with ``str.find`` until that has cost about one rebuild (at most twice the best).
        extra = {f: a for f, a in ascii_forms.items() if f not in self._db_set}
        cost = len(extra) * (hi - lo)
        if extra and self._find_spent + cost > _REBUILD_COST:
            self._find_spent = 0
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self._db_forms = list(ascii_forms)
            pats = [f.encode("ascii") for f in self._db_forms]
            db.compile(expressions=pats, ids=list(range(len(pats))), elements=len(pats), flags=0, literal=True)
            self._db, self._db_key, self._db_set, extra = db, key, frozenset(self._db_forms), {}
        self._find_spent += cost if extra else 0
        self._find(text, extra, out, lo, hi)
        if self._db is None:
            return
        hits: list[tuple[int, int]] = []

        def on_match(index: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            hits.append((index, to))

        self._db.scan(data if hi - lo == len(data) else data[lo:hi], match_event_handler=on_match)  # type: ignore[attr-defined]
        for index, end in hits:
            form = self._db_forms[index]
            after = ascii_forms.get(form)  # None: a value in the database but not remembered
            start = lo + end - len(form)
            if after is not None and start > after:
                out.append(literal_span(text, start, len(form)))


def _outside(covered: Sequence[Span], size: int, margin: int) -> list[Span]:
    """The parts of ``[0, size)`` to search for occurrences at most ``margin`` long (with their
    padding): all of it, unless ``covered`` takes more than half (a chain of overlapping
    secrets); then only ``margin`` around what lies outside the covered spans (each less its
    last two characters, where padding after an occurrence inside could reach past it)."""
    if sum(end - start for start, end in covered) <= size // 2:
        return [(0, size)]
    segments: list[Span] = []
    pos = 0
    for start, end in [*covered, (size + 2, size + 2)]:
        if start > pos:  # a gap [pos, start)
            lo, hi = max(0, pos - margin), min(size, start + margin)
            if segments and lo <= segments[-1][1]:
                segments[-1] = (segments[-1][0], hi)
            else:
                segments.append((lo, hi))
        pos = max(pos, end - 2)
    return segments
