"""The redactor: scrubs secrets from text, bytes, structured payloads and output streams (REQ-12).

One :class:`Redactor` is built from an environment mapping and a :class:`RedactionConfig`; every
sink uses it before anything is persisted, logged, emitted or put in a prompt. What it removes:

- the values of secret-named env vars (:func:`is_secret_env_name`) and their base64 / URL-encoded /
  JSON-escaped forms, longest first, and their base64 wrapped at any line width
  (:mod:`redact_wrapped`);
- the provider token formats of the catalog (:mod:`redact_catalog`, data in
  ``rules/secrets.toml``: GitHub, GitLab, AWS, Slack, OpenAI, Stripe, ... 250+ formats), found on
  their own; PEM private keys (an unterminated block is redacted to the end of the text), JWTs,
  ``Bearer`` tokens, passwords in ``scheme://user:pass@host``;
- values by context: ``name=value`` / ``name: value`` / ``"name": "value"`` (also make's ``?=``
  ``::=`` ``+=``) with a secret-like name unless the value reads as prose or code, and the
  contexts of :mod:`redact_context` (XML settings, ``curl -u``, ``mysql -p``, ``.netrc``, ...);
- once seen, always redacted: a value redacted once is redacted wherever it recurs later in the
  same text or stream (:mod:`redact_seen`);
- in :meth:`Redactor.redact_obj`, every value under a secret-like key.

Each secret becomes :data:`REDACTED`; the text around it is kept. Redaction is idempotent, and
:class:`StreamRedactor` gives the same result as redacting the whole text at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery_selfheal.core import redact_rules as rules
from celery_selfheal.core.redact_catalog import catalog_for
from celery_selfheal.core.redact_literals import literal_forms, usable_secret_value
from celery_selfheal.core.redact_rules import REDACTED
from celery_selfheal.core.redact_rules import is_secret_name as is_secret_env_name
from celery_selfheal.core.redact_scan import Found, SpanFinder
from celery_selfheal.core.redact_seen import SeenSecrets
from celery_selfheal.core.redact_spans import apply

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
#: Characters a :class:`StreamRedactor` scans at a time (beyond its window).
DEFAULT_BATCH = 256 * 1024
#: Strings up to this long are memoized by :meth:`Redactor.redact`.
_SMALL = 256
#: scalars `Redactor.redact_obj` returns as they are (exact types: a subclass takes the general path)
_AS_IS = frozenset({int, float, bool, type(None)})
#: Lookbehind context kept from already emitted text (names before ``=``, token boundaries).
_CONTEXT = 256


@dataclass(frozen=True)
class RedactionConfig:
    """Extra rules on top of the built-in ones."""

    #: Regexes; the whole match is replaced. A match must stay shorter than
    #: :attr:`Redactor.window` (for streaming) and must not take in text around a
    #: ``[REDACTED]`` (for idempotency).
    extra_patterns: tuple[str, ...] = ()
    #: Env var names whose values are secret whatever their name says.
    extra_env_names: tuple[str, ...] = ()
    #: Exact strings never redacted (e.g. a public test token).
    allowlist: tuple[str, ...] = ()
    #: Extra key names (case-insensitive) whose values are redacted in structured payloads.
    extra_keys: tuple[str, ...] = ()
    #: Extra token formats, each a table like a ``rules/secrets.toml`` entry (id, keyword,
    #: regex; optional prefilter, before, examples, family, description).
    rules: tuple[Mapping[str, Any], ...] = ()


def _hashable(rule: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A config rule as sorted items, lists as tuples (the catalog is cached by its rules)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in rule.items()))


class Redactor:
    """Scrubs secrets from text. Pure: reads only the env mapping it is given (or ``os.environ``
    once, at construction, when ``env`` is None).

    The scanner (the token catalog, compiled for hyperscan, and the env values' literal forms) is
    built on first use, once, under a lock: a CLI command that never redacts anything (``selfheal
    jobs``) does not pay its ~0.3 s."""

    def __init__(self, env: Mapping[str, str] | None = None, config: RedactionConfig | None = None) -> None:
        self._config = config = config or RedactionConfig()
        self._env: dict[str, str] | None = dict(os.environ if env is None else env)
        self._allow = frozenset(config.allowlist)
        self._extra_keys = frozenset(k.lower() for k in config.extra_keys)
        self._built: tuple[SpanFinder, int] | None = None
        self._lock = threading.Lock()
        self._small: dict[str, str] = {}

    def _scanner(self) -> tuple[SpanFinder, int]:
        """(the span finder, the stream window), built from the env snapshot on first use."""
        built = self._built
        if built is None:
            with self._lock:
                if self._built is None:
                    self._built = self._build(self._env or {})
                    self._env = None  # the values live on only in the finder's literals
                built = self._built
        return built

    def _build(self, env: Mapping[str, str]) -> tuple[SpanFinder, int]:
        config = self._config
        secret_names = frozenset(config.extra_env_names)
        literals: set[str] = set()
        values: list[str] = []
        for name, value in env.items():
            secret = name in secret_names or is_secret_env_name(name)
            if secret and usable_secret_value(value) and value.strip() not in self._allow:
                literals |= literal_forms(value)
                values.append(value)
        catalog = catalog_for(tuple(_hashable(rule) for rule in config.rules))
        finder = SpanFinder(literals - self._allow, config.extra_patterns, self._allow, catalog, values)
        window = max(
            DEFAULT_WINDOW, rules.MAX_RULE_SPAN, catalog.max_len + 64, finder.max_literal + 64, finder.max_wrapped
        )
        return finder, window

    def prepare(self) -> None:
        """Build the scanner now (a worker does it before forking, so its pool children inherit the
        compiled catalog instead of each compiling it at its first step)."""
        self._scanner()

    @property
    def window(self) -> int:
        """How many characters a :class:`StreamRedactor` holds back at a chunk edge."""
        return self._scanner()[1]

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by :data:`REDACTED`."""
        if len(text) <= _SMALL:  # payload keys and values repeat: remember them
            done = self._small.get(text)
            if done is None:
                if len(self._small) >= 8192:
                    self._small.clear()
                spans = self.find_spans(text, SeenSecrets()).spans
                done = self._small[text] = apply(text, spans, 0, len(text)) if spans else text
            return done
        if len(text) > 4 * DEFAULT_BATCH:  # same result, cache-sized pieces and less memory
            stream = StreamRedactor(self)
            stream._hard_limit = len(text) + 1  # never cut a span: exact whole-text semantics
            step = DEFAULT_BATCH
            # Pieces, then one join: growing one string with += is only linear while the
            # allocator can extend it in place, which the scan's own allocations prevent.
            pieces = [stream.feed(text[i : i + step]) for i in range(0, len(text), step)]
            pieces.append(stream.flush())
            return "".join(pieces)
        spans = self.find_spans(text, SeenSecrets()).spans
        return apply(text, spans, 0, len(text)) if spans else text

    def redact_bytes(self, data: bytes) -> bytes:
        """Like :meth:`redact` for UTF-8 bytes; undecodable bytes pass through unchanged."""
        text = data.decode("utf-8", "surrogateescape")
        out = self.redact(text)
        return data if out == text else out.encode("utf-8", "surrogateescape")

    def redact_obj(self, obj: Any) -> Any:
        """A redacted copy of a JSON-like payload: values under secret-like keys become
        :data:`REDACTED` (``None`` and booleans are kept), every string (keys too) is
        :meth:`redact`-ed, lists/tuples keep their type, other scalars are returned as they are."""
        cls = type(obj)  # exact types first: the usual leaves and dicts skip the ABC checks below
        if cls is str:
            return self.redact(obj)
        if cls in _AS_IS:
            return obj
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

    def find_spans(self, text: str, seen: SeenSecrets | None = None, new_from: int = 0) -> Found:
        """The spans to replace in ``text`` (sorted, merged) and where PEM blocks start; with
        ``seen``, later occurrences of values redacted earlier too (see :mod:`redact_seen`)."""
        return self._scanner()[0].find(text, seen, new_from)


class StreamRedactor:
    """Redacts a stream of text chunks with bounded memory; the output equals redacting the whole.

    ``feed`` holds back :attr:`Redactor.window` characters, because a secret may continue in the
    next chunk, and scans only once ``batch`` (default 256 Ki) new characters are in: small
    chunks are scanned in large pieces, and output comes in bursts (pass a small ``batch`` for
    less delay, at some cost in speed). Never cut through a secret: a span that reaches past the
    edge is held back whole.

    PEM private keys: inside a block nothing is kept but the last few characters (to find the
    END line). The block becomes one :data:`REDACTED`, emitted when END arrives or at
    :meth:`flush`, so an unterminated block redacts everything to the end of the stream, as
    :meth:`Redactor.redact` does with an unterminated block in a whole text.

    The one exception to "same as whole": an endless chain of overlapping secrets (each span
    overlapping the next for more than ``max(4 * (window + batch), 1 MiB)`` characters) is cut
    to keep memory bounded; both parts are still redacted.
    """

    def __init__(self, redactor: Redactor, *, batch: int | None = None) -> None:
        self._r = redactor
        # Scan at least this much new text at a time, so the window is rescanned rarely (a
        # bigger batch is faster, up to what the CPU caches hold).
        self._batch = max(1, batch) if batch is not None else max(redactor.window, DEFAULT_BATCH)
        self._hard_limit = max(4 * (redactor.window + self._batch), 1 << 20)
        self._reset()

    def _reset(self) -> None:
        self._ctx = ""  # emitted text kept as lookbehind context
        self._pending: list[str] = []
        self._pending_len = 0
        self._pem_tail: str | None = None  # not None while inside a PEM block
        self._seen = SeenSecrets()  # values redacted so far: redacted wherever they recur

    @property
    def pending_chars(self) -> int:
        """Characters held right now: at most window + batch + the last chunk; up to
        ``max(4 * (window + batch), 1 MiB)`` for an endless chain of overlapping secrets, or a
        whole PEM block if it came in one chunk; a few dozen inside an unterminated PEM block."""
        return len(self._ctx) + self._pending_len + len(self._pem_tail or "")

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
        scan, off = "".join([self._ctx, *self._pending]), len(self._ctx)
        buf_len = len(scan) - off
        found = self._r.find_spans(scan, self._seen, off)
        spans, open_pem = found.spans, found.open_pem
        cut = len(scan) if final else len(scan) - self._r.window
        enter_pem = forced = False
        for start, end in spans:  # never cut through a span: hold it back whole
            if start < cut < end:
                # An unterminated PEM block from here on: emit up to it and drop its content.
                enter_pem = off <= open_pem and start <= open_pem and end == len(scan)
                pem = any(start <= p < end for p in found.pem_starts)  # in memory already
                # Only an endless chain of overlapping spans is cut (memory bound), and once
                # cut, it is cut at once the next time (it then starts before ``off``).
                if enter_pem or pem or (start >= off and buf_len < self._hard_limit):
                    cut = max(start, off)
                else:
                    forced = True
                break
        out = apply(scan, spans, off, cut)
        # Only values first seen in what is emitted now: one held back is found again next time.
        self._seen.commit(v for v, at in sorted(found.new.items(), key=lambda kv: kv[1]) if at < cut)
        if enter_pem:
            begin = rules.PEM_BEGIN.search(scan, open_pem)
            hdr_end = begin.end() if begin else open_pem
            self._pem_tail = scan[max(hdr_end, len(scan) - rules.PEM_MARKER_MAX) :]
            self._pending, self._pending_len = [], 0
            return out
        # After a forced cut, keep a whole window of context: a secret cut in two is found there.
        self._ctx = scan[max(0, cut - (self._r.window if forced else _CONTEXT)) : cut]
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
