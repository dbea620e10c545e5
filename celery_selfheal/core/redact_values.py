"""Values of the redactor's rules: what follows a secret name (``name=value``), when such a
value is prose or code rather than a secret, and passwords in URLs. Pure data and small
functions, used by the span finder (:mod:`redact_scan`).
"""

from __future__ import annotations

import re

#: ``scheme://user:password@host``: group 1 is the password (greedy to the last ``@``). ``[]``
#: are not allowed in userinfo (RFC 3986), and excluding them keeps ``[REDACTED]`` out of a match.
#: Possessive (``{0,256}+``, also in ``_NAME_TAIL``) where giving back cannot help: no backtracking.
URL_PASSWORD = re.compile(r"://[^\s/?#@:\[\]]{0,256}+:([^\s/?#\[\]]{1,256})@")
#: :data:`URL_PASSWORD` as a prefilter (its match ends where one of it does), run by the
#: catalog's scan under the key :data:`redact_rules.URL_KEY`; most ``://`` in logs have no password.
#: ``?`` is allowed in it: the scanned copy has ``?`` for every non-ASCII character.
URL_PREFILTER = r"://[^\s/#@:\[\]]{0,256}:[^\s/#\[\]]{1,256}@"
URL_REACH = 3 + 256 + 1 + 256 + 1

#: The value after an assignment: "double" (also \"escaped\"), 'single', `back`, or bare up to a
#: delimiter, skipping an auth scheme word (``Authorization: Basic xyz`` redacts ``xyz``). A bare
#: ``{``/``[``/``(`` that opens a structure is not a value (the inner keys are checked instead).
_VALUE_HEAD = (
    r"""\\?"((?:[^"\\\n]|\\[^"\n]){1,4096})|'([^'\n]{1,4096})|`([^`\n]{1,4096})"""
    r"""|(?:(?:basic|bearer|token|digest|negotiate|ntlm|api-?token|api-?key|sso-key|key|ssws|geniekey"""
    r"""|oauth|dpop|jwt|mac|hoba|aws4-hmac-sha256|sharedkey|sharedaccesssignature|otp|pat)[ \t]+)?"""
    r"""(?![{\[(](?:[\s"'{\[\]})]|\Z))"""
)
_BARE = r"""[^\s"'`,;&)}\]\\]"""
MAX_BARE = 4096
VALUE = re.compile(f"{_VALUE_HEAD}({_BARE}{{1,{MAX_BARE}}})", re.ASCII)
#: :data:`VALUE` with only the first character of a bare value (group 4): where the run of
#: bare characters ends is found with :data:`BARE_STOP`, once per run, so that a chain of
#: overlapping assignments (``password=password=...``) is not scanned again for each name.
VALUE_HEAD = re.compile(f"{_VALUE_HEAD}({_BARE})", re.ASCII)
#: The first character that ends a bare value.
BARE_STOP = re.compile(_BARE.replace("[^", "[", 1), re.ASCII)
#: The longest of :data:`NOT_VALUES`.
NOT_VALUE_MAX = 9
TO_EOL = re.compile(r"[^\r\n]{1,1024}", re.ASCII)
#: Values that are never secrets, whatever the name says.
NOT_VALUES = frozenset(["true", "false", "yes", "no", "on", "off", "null", "none", "nil", "undefined"])
#: Code words that follow ``key=`` in source and tracebacks (``key=lambda a: ...``).
_CODE_WORDS = frozenset(
    "lambda self cls function new await async not yield return if else def class".split()  # noqa: SIM905
)
#: ``key="Name" value="..."``: the quoted text after ``key=`` is a name, its value comes next.
ATTR_VALUE = re.compile(r"""\s+value\s*=\s*["']""", re.ASCII)


#: A call (``make_token(``) or an attribute of ``self``/``cls``/``this``.
_CODE = re.compile(r"[a-z_][a-z0-9_]{0,63}(?:\.[a-z_][a-z0-9_]{0,63}){0,8}\(|(?:self|cls|this)\.[a-z_][a-z0-9_.]*$")
#: Plural names count things: ``keys=12`` is a number of keys.
PLURALS = ("keys", "secrets", "tokens", "passwords", "credentials", "cookies")


def prose_value(text: str, low: str, start: int, end: int) -> bool:
    """True if the bare value ``low[start:end]`` (after a secret-like name) is an ordinary word
    that goes on as prose or code, not a secret: ``auth: password reset link sent``, ``Invalid
    token: signature has expired``, ``key=lambda a: ...``. The shape test: letters only, written
    as a word (lower case or Capitalized), then a space and another word, and either written as
    prose (a space or ``:`` before the value) or a code word. ``PGPASSWORD=hunter psql ...``
    (glued to ``=``, a shell prefix) stays a secret.
    Code that computes a value (``token = make_token(user)``, ``= self.token``) is no secret."""
    value = low[start:end]
    code = _CODE.match(value)  # make_token(user), self.token: code that computes the secret
    if code and ((not value.endswith(")") and low[end : end + 1] in "),\n") or value.startswith(("self.", "cls."))):
        return True
    word = text[start:end]
    if end - start > 24 or not value.isalpha() or not (word.islower() or word.istitle()):
        return False  # QAAAAAAAAAAAAA, xKqPzR: not how words are written
    if low[end : end + 1] != " " or not low[end + 1 : end + 2].isalpha():
        return False
    return low[start - 1 : start] in (" ", "\t", ":") or low[start:end] in _CODE_WORDS
