"""Line-wrapped base64 of env secrets (issue 11): ``echo $TOKEN | base64`` wraps at 76 columns,
``base64 -w N`` at any width, and the unwrapped literal no longer occurs in the output.

Each base64 form of each secret env value (standard and URL-safe, of the value and of the value
plus a newline) becomes one pattern that allows a line break (``\\n`` or ``\\r\\n``) between any
two characters; Hyperscan runs them all in one pass and reports where a match ends, and the start
is found by walking the form backwards. Padding (``=``, ``==``, possibly on the next line) is
taken along. The same Hyperscan database finds the plain ASCII literals of the env values (one
scan for both). Pure: built from the values it is given.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable

from celery_selfheal.core.redact_engine import ascii_bytes, hyperscan
from celery_selfheal.core.redact_literals import literal_span

Span = tuple[int, int]
#: Base64 forms shorter than this are left to the plain literals (a wrapped line is longer).
MIN_FORM = 16
#: Longer forms are not looked for wrapped (the stream window must hold a whole match).
MAX_FORM = 4096
#: Characters of a form the multi-pattern pass looks for (line breaks allowed between them).
PREFIX = 12


def wrapped_forms(values: Iterable[str]) -> list[str]:
    """The unpadded base64 forms worth finding wrapped, longest first."""
    forms: set[str] = set()
    for value in values:
        raw = value.strip().encode("utf-8", "surrogateescape")
        for data in (raw, raw + b"\n"):
            for enc in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
                form = enc.decode("ascii").rstrip("=")
                if MIN_FORM <= len(form) <= MAX_FORM:
                    forms.add(form)
    return sorted(forms, key=lambda f: (-len(f), f))


class WrappedBase64:
    """Finds the forms of :func:`wrapped_forms` with line breaks anywhere inside, and (with
    Hyperscan) ``literals``, all of them ASCII, wherever they occur (overlapping ones too)."""

    def __init__(self, values: Iterable[str], literals: Iterable[str] = ()) -> None:
        self.forms = wrapped_forms(values)
        self._literals = sorted(set(literals))
        assert not self._literals or hyperscan is not None
        assert all(lit.isascii() for lit in self._literals)
        #: Longest possible match (every character on a line of its own, CRLF, padding).
        self.max_len = 3 * max(map(len, self.forms), default=0) + 8
        # Only the first PREFIX characters go into the database (a pattern of the whole form
        # with a break allowed everywhere takes Hyperscan a quarter second to compile); a hit
        # is then walked over the whole form.
        patterns = ["(?:\\r?\\n)?".join(re.escape(c) for c in form[:PREFIX]) for form in self.forms]
        literal_patterns = ["".join(f"\\x{ord(c):02x}" for c in lit) for lit in self._literals]
        self._db: object = None
        self._local = threading.local()  # a Hyperscan scratch is per thread
        self._regexes: list[re.Pattern[str]] = []
        if literal_patterns or (patterns and hyperscan is not None):
            patterns += literal_patterns
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            pats = [p.encode("ascii") for p in patterns]
            db.compile(expressions=pats, ids=list(range(len(pats))), elements=len(pats), flags=0)
            self._db = db
        elif patterns:  # pragma: no cover - only where the wheel is missing
            self._regexes = [re.compile(p) for p in patterns]

    def scan(self, text: str, found: list[Span], data: bytes | None = None) -> None:
        """Append the span of each wrapped occurrence (one with a line break inside)."""
        ends: list[tuple[int, int]] = []
        if self._db is not None:

            def on_match(index: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
                ends.append((index, to))

            scratch = getattr(self._local, "scratch", None)
            if scratch is None:
                scratch = self._local.scratch = hyperscan.Scratch(self._db)
            data = ascii_bytes(text) if data is None else data
            self._db.scan(data, match_event_handler=on_match, scratch=scratch)  # type: ignore[attr-defined]
        for index, regex in enumerate(self._regexes):  # pragma: no cover - no wheel
            ends.extend((index, m.end()) for m in regex.finditer(text))
        forms, literals = len(self.forms), self._literals
        for index, prefix_end in ends:
            if index >= forms:
                lit = literals[index - forms]
                start = prefix_end - len(lit)
                # "?" in a literal also matches where the text has a non-ASCII character
                if "?" not in lit or text.startswith(lit, start):
                    found.append(literal_span(text, start, len(lit)))
                continue
            form = self.forms[index]
            start = self._start(text, prefix_end, form[:PREFIX])
            end = self._end(text, start, form) if start >= 0 else -1
            if end >= 0 and "\n" in text[start:end]:
                found.append((start, _padding_end(text, end)))

    @staticmethod
    def _end(text: str, start: int, form: str) -> int:
        """Where ``form`` (with line breaks) that starts at ``start`` ends, or -1."""
        j, k, n = start, 0, len(text)
        while k < len(form):
            if j >= n:
                return -1
            c = text[j]
            if c == form[k]:
                k += 1
            elif c not in "\r\n" or k == 0:
                return -1
            j += 1
        return j

    @staticmethod
    def _start(text: str, end: int, form: str) -> int:
        """Where ``form`` (with line breaks) ends at ``end`` starts, or -1."""
        k, j = len(form), end
        while k > 0:
            j -= 1
            if j < 0:
                return -1
            c = text[j]
            if c == form[k - 1]:
                k -= 1
            elif c not in "\r\n" or k == len(form):
                return -1
        return j


def _padding_end(text: str, end: int) -> int:
    """``end`` moved past up to two ``=`` of padding, each possibly after a line break."""
    pads, pos = 0, end
    while pads < 2:
        probe = pos
        while probe < len(text) and probe - pos < 2 and text[probe] in "\r\n":
            probe += 1
        if probe < len(text) and text[probe] == "=":
            pos, pads = probe + 1, pads + 1
        else:
            break
    return pos
