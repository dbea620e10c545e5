"""Rule tables of the redactor: secret-name classification, token shapes, literal-value matchers.

Pure data and small functions; the scanning loop lives in :mod:`celery_selfheal.core.redact`.

Speed notes (why the regexes look the way they do): CPython's ``re`` only skips quickly through
text when a pattern starts with one literal string; an alternation of prefixes (``ghp_|AKIA|...``)
is tried at nearly every position and runs at ~40 MB/s. So every rule here starts with a literal
*anchor*, chosen to be a rare character where possible (``_``, ``A``, ``J``, ``k-``), and the rest
of the prefix is checked with a fixed-width lookbehind. Case-insensitive rules run on an
ASCII-lowercased bytes copy of the text (same positions), for the same reason.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"

#: Longest match any built-in rule can produce (+ the context it looks at). The stream redactor
#: holds back at least this much; JWTs are the longest bounded shape.
MAX_RULE_SPAN = 7 * 1024

#: Byte values (of the lowercased text) of letters/digits and of identifier characters.
_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")

# ---------------------------------------------------------------------------------------------
# Secret-like names (env vars, payload keys, ``name=value`` names)

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_NAME_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
#: A name part equal to one of these makes the name secret.
_SECRET_PARTS = _words(
    "token secret secrets password passwords passwd passphrase pass pat key keys credential credentials"
    " creds cred auth oauth authorization apikey cookie cookies jwt dsn"
)
#: A part ending with one of these is secret too (``DBPASSWORD``, ``ghtoken``, ``clientsecret``).
_SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "credential", "credentials", "auth")
#: ``...key`` is only secret after a known qualifier: ``apikey`` yes, ``monkey``/``hotkey`` no.
_KEY_QUALIFIERS = _words(
    "api private secret access ssh master signing encryption client app license admin service"
    " account subscription webhook deploy gpg pgp session"
)
#: A part equal to one of these means the value is *about* a secret, not the secret: counts,
#: limits, types, paths, names, ids, error classes, public keys (``max_tokens``, ``TOKEN_TYPE``,
#: ``SSH_KEY_PATH``, ``KeyError``, ``PUBLIC_KEY``). Plural ``tokens`` is a count in LLM tooling.
_NOT_SECRET_PARTS = _words(
    "tokens count counts length len limit limits size type types usage max min total num number"
    " expires expiry expiration expire expired ttl timeout file files path paths dir name names id"
    " ids url uri urls endpoint version error errors exception warning format field fields hint"
    " prompt policy public pub cache sort primary foreign partition routing index label mode rate"
    " enabled disabled required"
)


def is_secret_name(name: str) -> bool:
    """True if ``name`` (env var, payload key, ``name=value`` name) names a secret.

    The name is split into words at ``_ - .``, digits and CamelCase humps; it is secret when a word
    is (or ends with) token/secret/password/passwd/credential/auth, is key/pass/cookie/pat/...,
    or is a qualified key (``apikey``, ``privatekey``), and no word says the value is only about
    a secret (``count``, ``type``, ``path``, ``id``, ``error``, ``public``...). So ``GITHUB_TOKEN``,
    ``AwsSecretAccessKey``, ``DB_PASSWORD`` and ``API_KEY`` are secret; ``KEYBOARD``, ``MONKEY``,
    ``GIT_AUTHOR_NAME``, ``max_tokens`` and ``KeyError`` are not.
    """
    parts = [p.lower() for p in _NAME_PARTS.findall(name)]
    if not parts or any(p in _NOT_SECRET_PARTS for p in parts):
        return False
    for part in parts:
        if part in _SECRET_PARTS or part.endswith(_SECRET_SUFFIXES):
            return True
        if part.endswith("key") and part[:-3] in _KEY_QUALIFIERS:
            return True
    return False


_NAME_CACHE: dict[str, bool] = {}


def is_secret_name_cached(name: str) -> bool:
    """:func:`is_secret_name` through a bounded cache (a plain dict: faster than ``lru_cache``)."""
    known = _NAME_CACHE.get(name)
    if known is None:
        if len(_NAME_CACHE) >= 8192:
            _NAME_CACHE.clear()
        known = _NAME_CACHE[name] = is_secret_name(name)
    return known


#: :func:`name_kind` results.
SECRET, PLAIN, SECRET_SUFFIX = 1, 0, 2
_KIND_CACHE: dict[str, int] = {}


def name_kind(name: str) -> int:
    """SECRET if ``name`` is a secret name, SECRET_SUFFIX if only a proper suffix of it is
    (``xpass`` -> ``pass``: matters when a secret glued before it is cut off), else PLAIN."""
    kind = _KIND_CACHE.get(name)
    if kind is None:
        if len(_KIND_CACHE) >= 8192:
            _KIND_CACHE.clear()
        if is_secret_name_cached(name):
            kind = SECRET
        elif any(is_secret_name_cached(name[i:]) for i in range(1, len(name))):
            kind = SECRET_SUFFIX
        else:
            kind = PLAIN
        _KIND_CACHE[name] = kind
    return kind


# ---------------------------------------------------------------------------------------------
# Rule passes. Each pass is one regex starting with a literal anchor; each alternative ends with
# an empty marker group, and the pass's action table maps the marker's group number to what was
# found: an offset >= 0 is a token that starts that many characters before the match (and must
# not follow a letter or digit: ``task-...`` is no key), NAME an assignment whose name ends where
# the group before the marker ends, BEARER a token in the group before the marker, PEM a private
# key header.
NAME, BEARER, PEM = -1, -2, -3
Action = dict[int, int]


def _pass(anchor: str, *branches: tuple[str, int], flags: int = 0) -> tuple[re.Pattern[str], Action]:
    parts, actions, group = [], {}, 0
    for body, action in branches:
        group += re.compile(body).groups + 1
        actions[group] = action
        parts.append(body + "()")
    return re.compile(anchor + "(?:" + "|".join(parts) + ")", flags), actions


def _bytes_pass(anchor: str, *branches: tuple[str, int]) -> tuple[re.Pattern[bytes], Action]:
    regex, actions = _pass(anchor, *branches)
    return re.compile(regex.pattern.encode("ascii")), actions


_T = "[a-z0-9_-]"  # token characters, lowercased
#: ``<name> [quote] = / : / => / := [spaces]``: the name's rest up to the value.
_NAME_TAIL = r"([a-z0-9_.-]{0,64})(?:\\?[\"'`])?[ \t]{0,8}(?:=>|:=|=(?!=)|:(?!:))[ \t]{0,8}"

#: Passes over the original text (case matters).
TEXT_PASSES = (
    _pass(
        "A",
        (r"(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])", 0),  # AWS access key id
        (r"Iza[A-Za-z0-9_-]{30,64}", 0),  # Google API key
        (r"(?<=PRIVA)TE KEY(?: BLOCK)?-----", PEM),  # end of "-----BEGIN ... PRIVATE KEY-----"
    ),
)
#: Passes over ``ascii_lower(text)``. Anchors are rare letters of each word: k for token, key,
#: cookie, sk-, sk_live_; cre for secret, cred...; p for pass... and glpat-; uth for auth...
LOWER_PASSES = (
    _bytes_pass(
        "k",
        # "tokens" (a count) and "keyerror" never make a name secret: cheaper to skip them here.
        (r"(?:(?<=tok)en(?!s[^a-z])|(?<=cook)ie|ey(?!error))" + _NAME_TAIL, NAME),
        (rf"-(?<=sk-){_T}{{20,255}}", 1),  # OpenAI sk-, sk-proj-, Anthropic sk-ant-
        (r"_(?<=[srp]k_)(?:live|test)_[a-z0-9]{10,255}", 1),  # Stripe
    ),
    _bytes_pass(
        "_",
        (r"(?<=gh[pousr]_)[a-z0-9]{20,255}", 3),  # GitHub ghp_, gho_, ghu_, ghs_, ghr_
        (r"(?<=github_pat_)[a-z0-9_]{20,255}", 10),
        (r"(?<=npm_)[a-z0-9]{20,255}", 3),
        (r"(?<=hf_)[a-z0-9]{20,255}", 2),  # Hugging Face
    ),
    _bytes_pass("xox", (r"[abprs]-[a-z0-9-]{10,255}", 0)),  # Slack
    # JWT: base64url segments, the first a JSON header ("eyJ" is '{"').
    _bytes_pass("j", (rf"(?<=eyj){_T}{{5,1024}}\.{_T}{{4,5000}}(?:\.{_T}{{1,1024}})?", 2)),
    _bytes_pass("cre", (r"(?:(?<=secre)t|d)" + _NAME_TAIL, NAME)),
    _bytes_pass("p", ("ass" + _NAME_TAIL, NAME), (rf"(?<=glp)at-{_T}{{20,255}}", 2)),  # pass..., GitLab
    _bytes_pass("uth", (r"(?<=auth)" + _NAME_TAIL, NAME)),
    _bytes_pass("bearer", (r"[ \t]+([a-z0-9._~+/=-]{8,1024})", BEARER)),
)

PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
#: Longest possible PEM_BEGIN / PEM_END match.
PEM_MARKER_MAX = 80

#: ``scheme://user:password@host``: group 1 is the password (greedy to the last ``@``). ``[]``
#: are not allowed in userinfo (RFC 3986), and excluding them keeps ``[REDACTED]`` out of a match.
URL_PASSWORD = re.compile(r"://[^\s/?#@:\[\]]{0,256}:([^\s/?#\[\]]{1,256})@")

#: The value after an assignment: "double" (also \"escaped\"), 'single', `back`, or bare up to a
#: delimiter, skipping an auth scheme word (``Authorization: Basic xyz`` redacts ``xyz``). A bare
#: ``{``/``[``/``(`` that opens a structure is not a value (the inner keys are checked instead).
VALUE = re.compile(
    rb"""\\?"((?:[^"\\\n]|\\[^"\n]){1,512})|'([^'\n]{1,512})|`([^`\n]{1,512})"""
    rb"""|(?:(?:basic|bearer|token|digest|negotiate|ntlm)[ \t]+)?"""
    rb"""(?![{\[(](?:[\s"'{\[\]})]|\Z))([^\s"'`,;&)}\]\\]{1,512})"""
)
TO_EOL = re.compile(rb"[^\r\n]{1,1024}")
#: Values that are never secrets, whatever the name says.
NOT_VALUES = frozenset(w.encode() for w in _words("true false yes no on off null none nil undefined"))


_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> bytes:
    """ASCII-lowercased bytes with one byte per character (non-ASCII becomes ``?``)."""
    if text.isascii():  # O(1) in CPython; str.lower() is the fastest path for ASCII
        return text.lower().encode("ascii")
    return text.encode("ascii", "replace").translate(_LOWER)


_IDENT_RUN = re.compile(rb"[a-z0-9_.-]{0,64}")


def name_start(reversed_low: bytes, pos: int) -> int:
    """Start of the identifier (at most 64 characters) that ends just before ``pos``, given the
    lowercased text reversed (a regex match is faster than a Python loop over characters)."""
    back = len(reversed_low) - pos
    return pos - (_IDENT_RUN.match(reversed_low, back).end() - back)  # type: ignore[union-attr]


def follows_alnum(low: bytes, pos: int) -> bool:
    """True if the character before ``pos`` is an ASCII letter or digit."""
    return pos > 0 and low[pos - 1] in _ALNUM


def bearer_like(token: bytes) -> bool:
    """A ``Bearer`` argument that looks like a credential, not an English word."""
    return len(token) >= 20 or not token.isalpha()


# ---------------------------------------------------------------------------------------------
# Literal secret values (from the environment)

_BOOLEANS = _words("true false yes no on off none null 0 1 y n enabled disabled")


def usable_secret_value(value: str) -> bool:
    """An env value worth hunting for: 4+ characters, not a boolean, not part of ``REDACTED``."""
    value = value.strip()
    return len(value) >= 4 and value.lower() not in _BOOLEANS and value not in REDACTED


def literal_forms(value: str) -> set[str]:
    """The value as it may appear in output: raw, base64 (std/urlsafe, also of the value plus a
    newline as ``echo $X | base64`` makes it), URL-encoded and JSON-escaped. Base64 forms are
    unpadded; :meth:`LiteralMatcher.scan` takes up to two ``=`` after a match along."""
    value = value.strip()
    raw = value.encode("utf-8", "surrogateescape")
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1]}
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    for data in (raw, raw + b"\n"):
        for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
            text = encoded.decode("ascii")
            forms.add(text.rstrip("="))
    return {f for f in forms if len(f) >= 4 and f not in REDACTED}


#: Rough character frequency in logs, most common first; anything absent counts as rarest.
_COMMON = " e.t_a-o/i:n\"s,r=h'l(d)c\num0f1p2g3w4y5b6v7k8x9jqz>[]{}<*#+TSAEIRNOLCDPMUBFGHWYKVJXQZ"
_RANK = {c: i for i, c in enumerate(_COMMON)}


_RARE_FROM = _RANK["k"]


def _rarity(char: str) -> int:
    return _RANK.get(char, len(_COMMON))


class LiteralMatcher:
    """Finds exact literal strings in text, longest first, in a few fast regex passes.

    Literals are grouped by an anchor character they contain, chosen greedily to be rare and to
    cover many literals; each group is one regex starting with that literal character (the fast
    path of ``re``), the rest checked by lookbehind/lookahead so overlapping literals are all
    found. Matches are reported as spans of the literal.
    """

    def __init__(self, literals: Iterable[str]) -> None:
        todo = sorted(set(literals), key=lambda s: (-len(s), s))
        self.max_len = len(todo[0]) if todo else 0
        self._passes: list[tuple[re.Pattern[str], list[tuple[int, int]]]] = []
        while todo:
            counts: dict[str, int] = {}
            for lit in todo:
                for ch in set(lit):
                    counts[ch] = counts.get(ch, 0) + 1
            # Fewest passes: the character rare in logs that most literals contain; a literal
            # with no rare character gets its rarest one.
            rare = {c: n for c, n in counts.items() if _rarity(c) >= _RARE_FROM}
            if rare:
                anchor = max(rare, key=lambda c: (rare[c], _rarity(c), c))
            else:
                anchor = max(counts, key=lambda c: (_rarity(c), c))
            group = [lit for lit in todo if anchor in lit]
            todo = [lit for lit in todo if anchor not in lit]
            branches, spans = [], [(0, 0)]
            for lit in group:  # already longest first
                i = lit.index(anchor)
                behind = f"(?<={re.escape(lit[: i + 1])})" if i else ""
                ahead = f"(?={re.escape(lit[i + 1:])})" if i + 1 < len(lit) else ""
                branches.append(f"{behind}{ahead}()")
                spans.append((i, len(lit)))
            pattern = re.escape(anchor) + "(?:" + "|".join(branches) + ")"
            self._passes.append((re.compile(pattern), spans))

    def scan(self, text: str, add: list[tuple[int, int]]) -> None:
        """Append the span of every literal occurrence in ``text`` to ``add``."""
        for regex, spans in self._passes:
            for m in regex.finditer(text):
                back, length = spans[m.lastindex or 0]
                start = m.start() - back
                end = start + length
                if text.startswith("=", end):  # base64 padding
                    end += 2 if text.startswith("==", end) else 1
                add.append((start, end))
