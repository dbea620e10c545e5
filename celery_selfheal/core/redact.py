"""The redactor: scrubs secrets from text, bytes, structured payloads and output streams (REQ-12).

One :class:`Redactor` is built from an environment mapping and a :class:`RedactionConfig`; every
sink uses it before anything is persisted, logged, emitted or put in a prompt. What it removes:

- the values of secret-named env vars (:func:`is_secret_env_name`) and their base64 / URL-encoded /
  JSON-escaped forms, longest first;
- well-known token shapes (GitHub, AWS key ids, Slack, OpenAI/Anthropic ``sk-``, Google ``AIza``,
  GitLab, npm, Hugging Face, Stripe, JWT), PEM private keys (an unterminated block is redacted to
  the end of the text), ``Bearer`` tokens, passwords in ``scheme://user:pass@host``, and values of
  ``name=value`` / ``name: value`` / ``"name": "value"`` with a secret-like name;
- in :meth:`Redactor.redact_obj`, every value under a secret-like key.

Each secret becomes :data:`REDACTED`; the text around it is kept. Redaction is idempotent, and
:class:`StreamRedactor` gives the same result as redacting the whole text at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery_selfheal.core import redact_rules as rules
from celery_selfheal.core.redact_rules import REDACTED
from celery_selfheal.core.redact_rules import is_secret_name as is_secret_env_name

__all__ = [
    "REDACTED",
    "RedactionConfig",
    "Redactor",
    "StreamRedactor",
    "default_redactor",
    "is_secret_env_name",
    "reset_default_redactor",
]

#: Characters held back at chunk edges when no configured literal is longer.
DEFAULT_WINDOW = 8 * 1024
#: Lookbehind context kept from already emitted text (names before ``=``, token boundaries).
_CONTEXT = 256
Span = tuple[int, int]


@dataclass(frozen=True)
class RedactionConfig:
    """Extra rules on top of the built-in ones."""

    #: Regexes; the whole match is replaced. Keep matches shorter than :attr:`Redactor.window`.
    extra_patterns: tuple[str, ...] = ()
    #: Env var names whose values are secret whatever their name says.
    extra_env_names: tuple[str, ...] = ()
    #: Exact strings never redacted (e.g. a public test token).
    allowlist: tuple[str, ...] = ()
    #: Extra key names (case-insensitive) whose values are redacted in structured payloads.
    extra_keys: tuple[str, ...] = ()


class Redactor:
    """Scrubs secrets from text. Pure: reads only the env mapping it is given (or ``os.environ``
    once, at construction, when ``env`` is None)."""

    def __init__(self, env: Mapping[str, str] | None = None, config: RedactionConfig | None = None) -> None:
        self._config = config = config or RedactionConfig()
        env = dict(os.environ) if env is None else env
        self._allow = frozenset(config.allowlist)
        self._extra_keys = frozenset(k.lower() for k in config.extra_keys)
        secret_names = frozenset(config.extra_env_names)
        literals: set[str] = set()
        for name, value in env.items():
            secret = name in secret_names or is_secret_env_name(name)
            if secret and rules.usable_secret_value(value) and value.strip() not in self._allow:
                literals |= rules.literal_forms(value)
        self._literals = rules.LiteralMatcher(literals - self._allow)
        self._extra = tuple(re.compile(p) for p in config.extra_patterns)
        self._window = max(DEFAULT_WINDOW, rules.MAX_RULE_SPAN, self._literals.max_len + 64)

    @property
    def window(self) -> int:
        """How many characters a :class:`StreamRedactor` holds back at a chunk edge."""
        return self._window

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by :data:`REDACTED`."""
        spans, _ = self.find_spans(text)
        return _apply(text, spans, 0, len(text)) if spans else text

    def redact_bytes(self, data: bytes) -> bytes:
        """Like :meth:`redact` for UTF-8 bytes; undecodable bytes pass through unchanged."""
        text = data.decode("utf-8", "surrogateescape")
        spans, _ = self.find_spans(text)
        return _apply(text, spans, 0, len(text)).encode("utf-8", "surrogateescape") if spans else data

    def redact_obj(self, obj: Any) -> Any:
        """A redacted copy of a JSON-like payload: values under secret-like keys become
        :data:`REDACTED` (``None`` and booleans are kept), every string (keys too) is
        :meth:`redact`-ed, lists/tuples keep their type, other scalars are returned as they are."""
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, Mapping):
            out = {}
            for key, value in obj.items():
                if not isinstance(key, str):
                    out[key] = self.redact_obj(value)
                elif value is not None and not isinstance(value, bool) and self.is_secret_key(key):
                    out[self.redact(key)] = REDACTED
                else:
                    out[self.redact(key)] = self.redact_obj(value)
            return out
        if isinstance(obj, list):
            return [self.redact_obj(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.redact_obj(v) for v in obj)
        if isinstance(obj, bytes):
            return self.redact_bytes(obj)
        return obj

    def is_secret_key(self, key: str) -> bool:
        """True if values under ``key`` in a structured payload are redacted."""
        return key.lower() in self._extra_keys or rules.is_secret_name_cached(key)

    def stream(self) -> StreamRedactor:
        """A new stateful redactor for one output stream."""
        return StreamRedactor(self)

    def find_spans(self, text: str) -> tuple[list[Span], int]:
        """Sorted, merged ``(start, end)`` spans to replace, and the start of an unterminated PEM
        block (its span runs to the end of ``text``) or -1."""
        found: list[Span] = []
        add = found.append
        low = rules.ascii_lower(text)
        pem_headers: list[int] = []
        for text_regex, actions in rules.TEXT_PASSES:
            for tm in text_regex.finditer(text):
                action = actions[tm.lastindex or 0]
                if action == rules.PEM:
                    pem_headers.append(tm.end())
                elif not rules.follows_alnum(low, tm.start() - action):
                    add((tm.start() - action, tm.end()))
        self._lower_passes(text, low, add)
        for um in rules.URL_PASSWORD.finditer(text):
            add(um.span(1))
        self._literals.scan(text, found)
        for regex in self._extra:
            found.extend(em.span() for em in regex.finditer(text) if em.end() > em.start())
        open_pem = _pem_blocks(text, pem_headers, add) if pem_headers else -1
        if self._allow:
            found = [s for s in found if text[s[0] : s[1]] not in self._allow]
        keep = [s for s in found if not text.startswith(REDACTED, s[0])]
        return _merge(keep), open_pem

    def _lower_passes(self, text: str, low: bytes, add: Any) -> None:
        """Run the case-insensitive passes (on the lowercased bytes ``low``)."""
        reversed_low = b""  # made on first use
        is_secret = rules.is_secret_name_cached
        for regex, actions in rules.LOWER_PASSES:
            for m in regex.finditer(low):
                marker = m.lastindex or 0
                action = actions[marker]
                if action >= 0:
                    if not rules.follows_alnum(low, m.start() - action):
                        add((m.start() - action, m.end()))
                elif action == rules.NAME:
                    reversed_low = reversed_low or low[::-1]
                    name = text[rules.name_start(reversed_low, m.start()) : m.end(marker - 1)]
                    if is_secret(name):
                        self._name_value(name, low, m.end(), add)
                elif rules.bearer_like(m.group(marker - 1)):
                    add(m.span(marker - 1))

    def _name_value(self, name: str, low: bytes, value: int, add: Any) -> None:
        """Redact the value of the secret-like ``name`` that starts at ``value``."""
        v = rules.VALUE.match(low, value)
        if v is None:
            return
        group = v.lastindex or 0
        vstart, vend = v.span(group)
        if low[vstart:vend] in rules.NOT_VALUES:
            return
        if group == 4 and "cookie" in name.lower():  # a Cookie header: all of its pairs
            vend = vstart + len(rules.TO_EOL.match(low, vstart).group())  # type: ignore[union-attr]
        add((vstart, vend))


def _pem_blocks(text: str, header_ends: list[int], add: Any) -> int:
    """Add PEM private-key blocks (BEGIN through END); return the start of an unterminated one."""
    done = 0
    for header_end in header_ends:
        begin = text.rfind("-----BEGIN", max(0, header_end - rules.PEM_MARKER_MAX), header_end)
        header = rules.PEM_BEGIN.match(text, begin) if begin >= done else None
        if header is None or header.end() != header_end:
            continue
        end = rules.PEM_END.search(text, header_end)
        if end is None:
            add((begin, len(text)))
            return begin
        add((begin, end.end()))
        done = end.end()
    return -1


def _merge(spans: list[Span]) -> list[Span]:
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


def _apply(text: str, spans: list[Span], lo: int, hi: int) -> str:
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


class StreamRedactor:
    """Redacts a stream of text chunks with bounded memory; the output equals redacting the whole.

    ``feed`` holds back up to :attr:`Redactor.window` characters (plus a batch, so small chunks
    are scanned in larger pieces) because a secret may continue in the next chunk. Inside a PEM
    private-key block nothing is kept but the last few characters (to find the END line): the
    block becomes one :data:`REDACTED`, emitted when END arrives or at :meth:`flush`, so an
    unterminated block redacts everything to the end of the stream, as :meth:`Redactor.redact`
    does with an unterminated block in a whole text.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._r = redactor
        # Scan at least this much new text per pass, so the window is rescanned rarely.
        self._batch = max(redactor.window, 64 * 1024)
        self._hard_limit = 4 * (redactor.window + self._batch)
        self._reset()

    def _reset(self) -> None:
        self._ctx = ""  # emitted text kept as lookbehind context
        self._pending: list[str] = []
        self._pending_len = 0
        self._pem_tail: str | None = None  # not None while inside a PEM block

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the redacted text that is safe to emit now."""
        out = ""
        if self._pem_tail is not None:
            text = self._pem_tail + chunk
            end = rules.PEM_END.search(text)
            if end is None:
                self._pem_tail = text[-rules.PEM_MARKER_MAX :]
                return ""
            self._pem_tail = None
            self._ctx = text[: end.end()][-_CONTEXT:]
            chunk, out = text[end.end() :], REDACTED
        if chunk:
            self._pending.append(chunk)
            self._pending_len += len(chunk)
        if self._pending_len < self._r.window + self._batch:
            return out
        return out + self._process(final=False)

    def flush(self) -> str:
        """Return everything still held, redacted; the stream can then be reused."""
        out = REDACTED if self._pem_tail is not None else self._process(final=True)
        self._reset()
        return out

    def _process(self, final: bool) -> str:
        buf = "".join(self._pending)
        scan, off = self._ctx + buf, len(self._ctx)
        spans, open_pem = self._r.find_spans(scan)
        cut = len(scan) if final else len(scan) - self._r.window
        enter_pem = False
        for start, end in spans:  # never cut through a span: hold it back whole
            if start < cut < end:
                # An unterminated PEM block from here on: emit up to it and drop its content.
                enter_pem = off <= open_pem and start <= open_pem and end == len(scan)
                # Only an endless chain of overlapping spans may be cut (memory bound).
                if enter_pem or len(buf) < self._hard_limit:
                    cut = max(start, off)
                break
        out = _apply(scan, spans, off, cut)
        if enter_pem:
            begin = rules.PEM_BEGIN.search(scan, open_pem)
            hdr_end = begin.end() if begin else open_pem
            self._pem_tail = scan[max(hdr_end, len(scan) - rules.PEM_MARKER_MAX) :]
            self._pending, self._pending_len = [], 0
            return out
        self._ctx = scan[max(0, cut - _CONTEXT) : cut]
        rest = scan[cut:]
        self._pending, self._pending_len = ([rest] if rest else []), len(rest)
        return out


_DEFAULT: Redactor | None = None


def default_redactor() -> Redactor:
    """The process-wide redactor built from ``os.environ`` (cached; see :func:`reset_default_redactor`)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Redactor()
    return _DEFAULT


def reset_default_redactor() -> None:
    """Forget the cached default redactor (tests, or after the environment changed)."""
    global _DEFAULT
    _DEFAULT = None
