"""Rule tables of the redactor: secret-name classification, token shapes, assignments, PEM.

Pure data and small functions; the scanning loop lives in :mod:`redact_scan`, env values in
:mod:`redact_literals`. Provider token formats without a name beside them are in the catalog
(:mod:`redact_catalog`), run by a multi-pattern engine; the passes here are the name rules
(which match too often in logs for a per-hit callback) and a few shapes that host env literals.

Speed notes (why the regexes look the way they do): CPython's ``re`` only skips quickly through
text (~2 GB/s) when a pattern starts with one literal string; an alternation of prefixes
(``ghp_|AKIA|...``) is tried at nearly every position and runs at ~40 MB/s, and a character-set
start at ~300 MB/s. So rules are grouped into a few passes, each starting with a literal
*anchor*, a rare character where possible (``A``, ``J``, ``k``, ``_``); the rest of a prefix is
checked with a fixed-width lookbehind, and each alternative starts with a literal so that it
fails at once at most anchors. A pass whose anchor is rare in logs (``J``) jumps between anchors
with ``str.find`` (``memchr``, ~10x faster than the scan of ``re``). Runs that cannot give back
usefully are possessive (no backtracking). Case-insensitive rules run on an ASCII-lowercased
copy of the text (same positions), for the same reason. A pass whose anchor is frequent but
whose matches are rare (``p`` of ``pass``) has a Hyperscan prefilter instead: the catalog's one
multi-pattern scan finds where it can match, and ``re`` runs only there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, NamedTuple

REDACTED = "[REDACTED]"

#: Longest match any built-in rule can produce (+ the context it looks at). The stream redactor
#: holds back at least this much; JWTs are the longest bounded shape.
MAX_RULE_SPAN = 7 * 1024

#: Byte values (of the lowercased text) of letters and digits.
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")

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
# Rule passes. Each pass is one regex: a literal anchor, then alternatives, each ending with an
# empty marker group that tells which one matched. A rule alternative is ``BODY()``; its
# action: an offset >= 0 is a token that starts that many characters before the anchor (and
# must not follow a letter or digit: ``task-...`` is no key); NAME an assignment, the body's
# first group ending the name and the match the value's start; BEARER a token in the body's
# first group; PEM a private key header ending with the match. Env-value literals ride along in
# some passes (see :mod:`redact_literals`), ``LITERAL - k`` being the k-th: they come first and
# consume only the anchor, at an anchor where no rule of the pass can match (``blocks``).
NAME, BEARER, PEM, LITERAL = -1, -2, -3, -10
#: marker group -> (action, the alternative's first group)
Actions = dict[int, tuple[int, int]]


class PassSpec(NamedTuple):
    """One regex pass."""

    anchor: str
    branches: tuple[tuple[str, int], ...]
    #: Runs on :func:`ascii_lower` of the text (case-insensitive rules).
    lowered: bool
    #: For a pass that can carry literals: could a rule match at ``literal[i]``, shadowing the
    #: literal there (then another anchor is chosen)? Conservative: looks at the literal only.
    blocks: Callable[[str, int], bool] | None = None
    #: Hosts with a rarer anchor are preferred for literals.
    host_rank: int = 0
    #: The (one character) anchor is rare in logs: jump between anchors with ``find``.
    sparse: bool = False
    #: A lookahead every rule branch (not the literals) needs: one cheap test at most anchors.
    guard: str = ""
    #: Hyperscan patterns (on the text, caseless if ``lowered``) run by the catalog's one scan
    #: instead of a ``re`` scan of the whole text: every match of the pass starts with the
    #: anchor at most :func:`prefilter_reach` characters before where one of them ends. For a
    #: pass whose anchor is frequent but whose matches are rare; it then hosts no literals.
    prefilter: tuple[str, ...] = ()


def compile_pass(
    spec: PassSpec, literals: Sequence[tuple[int, str, int]] = ()
) -> tuple[re.Pattern[Any], Actions]:
    """The pass regex and its actions; ``literals`` are (action, text as matched, anchor index)."""
    parts, actions, group = [], {}, 0
    for action, lit, i in literals:
        # Starts with the literal's next character (never the anchor): at most anchors that fails
        # at once. The rest of the literal is checked around it without being consumed.
        ahead = f"(?={re.escape(lit[i + 2 :])})" if i + 2 < len(lit) else ""
        behind = f"(?<={re.escape(lit[: i + 2])})" if i else ""
        parts.append(f"{re.escape(lit[i + 1])}{behind}{ahead}()")
        group += 1
        actions[group] = (action, group)
    rules = []
    for body, action in spec.branches:
        inner = re.compile(body).groups
        rules.append(f"{body}()")  # no group around it: a branch starting with a literal fails fast
        actions[group + inner + 1] = (action, group + 1)
        group += inner + 1
    parts.append(f"{spec.guard}(?:{'|'.join(rules)})" if spec.guard else "|".join(rules))
    pattern = re.escape(spec.anchor) + "(?:" + "|".join(parts) + ")"
    return re.compile(pattern, re.ASCII), actions


_T = "[a-z0-9_-]"  # token characters, lowercased
_TT = "[A-Za-z0-9_-]"
#: ``<name> [quote] = / : / => / := / ::= / :::= / ?= / += [spaces]``: the name's rest up to the
#: value (make and shell assignment operators too).
_NAME_TAIL = r"([a-z0-9_.-]{0,64}+)(?:\\?[\"'`])?[ \t]{0,8}+(?::{1,3}=|[?+]=|=>|=(?!=)|:(?!:))[ \t]{0,8}+"
#: What every :data:`_NAME_TAIL` match starts with, up to its operator's first character, as
#: a Hyperscan prefilter (a superset: no possessive runs, the quote and backslash apart).
_NAME_TAIL_PREFILTER = r"[a-z0-9_.-]{0,64}\\?[\"'`]?[ \t]{0,8}[:=?+]"

#: All passes. Anchors are rare letters of each word: k for token, key, cookie, sk-, sk_live_;
#: cre for secret, cred...; p for pass... and glpat-; uth for auth...
PASSES = (
    PassSpec(
        "A",
        (
            (r"KIA[A-Z0-9]{16}(?![A-Za-z0-9])", 0),  # AWS access key id
            (r"SIA[A-Z0-9]{16}(?![A-Za-z0-9])", 0),  # AWS temporary access key id
            (r"Iza[A-Za-z0-9_-]{30,64}", 0),  # Google API key
            (r"TE KEY(?<=PRIVATE KEY)(?: BLOCK)?-----", PEM),  # end of "-----BEGIN ... PRIVATE KEY-----"
        ),
        lowered=False,
        blocks=lambda lit, i: lit[i + 1 : i + 2] in ("", "A", "K", "S", "I", "T"),
        host_rank=0,
        prefilter=("AKIA[A-Z0-9]{16}", "ASIA[A-Z0-9]{16}", "AIza[A-Za-z0-9_-]{30}", "PRIVATE KEY"),
    ),
    # JWT: base64url segments, the first a JSON header ("eyJ" is '{"').
    PassSpec(
        "J",
        ((rf"(?<=eyJ){_TT}{{5,1024}}\.{_TT}{{4,5000}}(?:\.{_TT}{{1,1024}})?", 2),),
        lowered=False,
        blocks=lambda lit, i: lit[i + 1 : i + 2] in ("", "J") or i < 2 or lit[i - 2 : i] == "ey",
        host_rank=1,
        sparse=True,
    ),
    PassSpec(
        "k",
        (
            # "tokens" (a count) and "keyerror" never make a name secret: cheaper to skip them here.
            (r"en(?<=token)(?!s[^a-z])" + _NAME_TAIL, NAME),
            (r"ey(?!error)" + _NAME_TAIL, NAME),
            (r"ie(?<=cookie)" + _NAME_TAIL, NAME),
            (rf"-(?<=sk-){_T}{{20,255}}", 1),  # OpenAI sk-, sk-proj-, Anthropic sk-ant-
            (r"_(?<=[srp]k_)(?:live|test)_[a-z0-9]{10,255}", 1),  # Stripe
        ),
        lowered=True,
        blocks=lambda lit, i: lit[i + 1 : i + 2] in ("", "k", "e", "i", "-", "_"),
        host_rank=2,
    ),
    # Prefiltered ("p" is about 2% of log text, but "pass" + an assignment is rare), as is "A".
    PassSpec(
        "p",
        (("ass" + _NAME_TAIL, NAME), (rf"at-(?<=glpat-){_T}{{20,255}}", 2)),  # pass..., GitLab
        lowered=True,
        prefilter=("pass" + _NAME_TAIL_PREFILTER, "glpat-[a-z0-9_-]{20}"),
    ),
    PassSpec(
        "cre",
        ((r"t(?<=secret)" + _NAME_TAIL, NAME), (r"d" + _NAME_TAIL, NAME)),
        lowered=True,
        prefilter=("secret" + _NAME_TAIL_PREFILTER, "cred" + _NAME_TAIL_PREFILTER),
    ),
    PassSpec(
        "uth", ((r"(?<=auth)" + _NAME_TAIL, NAME),), lowered=True, prefilter=("auth" + _NAME_TAIL_PREFILTER,)
    ),
)


#: The key of :data:`URL_PASSWORD` among the prefiltered passes (after those of :data:`PASSES`).
URL_KEY = len(PASSES)


def prefilter_reach(spec: PassSpec) -> int:
    """How far before a prefilter match's end a match of ``spec`` may start (its widest
    prefilter match)."""
    return max((int(sre_parse.parse(p).getwidth()[1]) for p in spec.prefilter), default=0)

PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
#: Longest possible PEM_BEGIN / PEM_END match.
PEM_MARKER_MAX = 80

def ascii_lower(text: str) -> str:
    """ASCII-lowercased, same length and positions (non-ASCII becomes ``?``). A str, not bytes:
    one copy less of every scanned batch (the ASCII patterns run as fast on either)."""
    if text.isascii():  # O(1) in CPython; str.lower() is the fastest path for ASCII
        return text.lower()
    return text.encode("ascii", "replace").decode("ascii").lower()


#: A run of identifier characters (lowercased): what a ``name=value`` name is made of.
IDENT_RUN = re.compile(r"[a-z0-9_.-]{0,64}", re.ASCII)
IDENT_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_.-"


def follows_alnum(low: str, pos: int) -> bool:
    """True if the character before ``pos`` is an ASCII letter or digit."""
    return pos > 0 and low[pos - 1] in _ALNUM
