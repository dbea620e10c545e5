"""Context rules: secrets recognised by where they stand, not by their shape (issue 14).

Each rule has a *prefilter* (a regex in the common subset of Hyperscan and ``re``, run by the
catalog's multi-pattern engine with the leftmost start of each match) and a Python ``regex``
matched where the prefilter matched. A ``name`` group must be a secret-like name
(:func:`redact_rules.is_secret_name`); the ``secret`` group is what gets redacted. Values are
bounded (:data:`MAX_VALUE` characters) so the stream redactor can hold a whole match back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

#: Longest value a context rule redacts.
MAX_VALUE = 4096
#: Secret words a name must contain for the prefilters (the name check proper comes after).
_WORDS = "(pass|pwd|secret|token|key|cred|auth)"  # the frequent ones cost: few names use only the rest
_V = f"{{1,{MAX_VALUE}}}"


class ContextRule(NamedTuple):
    """One context."""

    id: str
    description: str
    prefilter: str
    regex: re.Pattern[str]
    caseless: bool = True
    multiline: bool = False
    #: A further test of the secret (``Bearer`` + an English word is prose).
    check: Callable[[str], bool] | None = None
    #: What Hyperscan runs instead of ``prefilter``, if set: a looser pattern (it matches
    #: wherever ``prefilter`` does) without the frequent secret words, so far cheaper to scan
    #: for; each of its rare hits is checked against ``prefilter`` with ``re``.
    loose: str = ""
    #: The prefilter never matches across a line break: a hit is checked from its line's start.
    one_line: bool = False


def _rule(
    rid: str,
    description: str,
    prefilter: str,
    regex: str,
    *,
    caseless: bool = True,
    multiline: bool = False,
    check: Callable[[str], bool] | None = None,
    loose: str = "",
    one_line: bool = False,
) -> ContextRule:
    flags = (re.IGNORECASE if caseless else 0) | (re.MULTILINE if multiline else 0)
    compiled = re.compile(regex, flags | re.ASCII)
    return ContextRule(rid, description, prefilter, compiled, caseless, multiline, check, loose, one_line)


def bearer_like(token: str) -> bool:
    """A ``Bearer`` argument that looks like a credential, not an English word."""
    return len(token) >= 20 or not token.isalpha()


CONTEXT_RULES: tuple[ContextRule, ...] = (
    _rule(
        "bearer",
        "Bearer <token> anywhere (an Authorization header, a log of one, an error message)",
        r"bearer[ \t]{1,8}[a-z0-9._~+/=-]{8}",
        r"bearer[ \t]{1,8}(?P<secret>[a-z0-9._~+/=-]{8,1024})",
        check=bearer_like,
    ),
    _rule(
        "xml-element",
        "<password>...</password>, <apiToken>...</apiToken> (Jenkins credentials.xml, Maven settings)",
        rf"<[a-z0-9_:.-]{{0,40}}{_WORDS}[a-z0-9_:.-]{{0,40}}>[^<\s]",
        rf"<(?P<name>[a-z0-9_:.-]{{1,130}})>(?P<secret>[^<]{_V})</(?P=name)>",
        loose=r"<[a-z0-9_:.-]{3,86}>[^<\s]",
    ),
    _rule(
        "xml-key-value",
        '<add key="ClearTextPassword" value="..."/>, <property name="db.password" value="..."/>',
        rf"(key|name)\s*=\s*[\"'][^\"'\n]{{0,64}}{_WORDS}[^\"'\n]{{0,64}}[\"']\s+value\s*=\s*[\"']",
        rf"""(?:key|name)\s*=\s*(["'])(?P<name>[^"'\n]{{1,130}})\1\s+value\s*=\s*(["'])(?P<secret>[^"'\n]{_V})\3""",
        loose=r"[\"']\s+value\s*=\s*[\"']",
    ),
    _rule(
        "quoted-pair",
        'System.setProperty("X_TOKEN", "..."), headers.put("X-Api-Key", "..."), ("password", "...")',
        rf"\(\s*[\"'][a-z0-9_.-]{{0,64}}{_WORDS}[a-z0-9_.-]{{0,64}}[\"']\s*,\s*[\"']",
        rf"""\(\s*(["'])(?P<name>[a-z0-9_.-]{{1,130}})\1\s*,\s*(["'])(?P<secret>[^"'\n]{_V})\3""",
        loose=r"\(\s*[\"'][a-z0-9_.-]{3,134}[\"']\s*,\s*[\"']",
    ),
    _rule(
        "cli-user-password",
        "curl -u user:pass, --user user:pass, --proxy-user user:pass",
        r"(-u|--user|--proxy-user)[ =]?[\"']?[^\s:\"']{1,128}:[^\s\"']",
        # not "docker run -u 1000:1000" (uid:gid)
        rf"""(?:-u|--user|--proxy-user)[ =]?(["']?)(?![0-9]{{1,128}}:[0-9]+(?![^\s"']))"""
        rf"""[^\s:"']{{1,128}}:(?P<secret>[^\s"']{_V})""",
        caseless=False,
    ),
    _rule(
        "mysql-password-flag",
        "mysql -pSECRET (the password glued to -p)",
        r"mysql|mariadb",  # rare in logs: the regex does the rest
        rf"""(?:mysql|mysqldump|mysqladmin|mariadb)\b[^\n]{{0,200}}?\s-p(?P<secret>[^\s"']{_V})""",
        caseless=False,
    ),
    _rule(
        "docker-login-password",
        "docker login -p SECRET",
        r"docker\s+login",
        rf"""docker\s+login\b[^\n]{{0,200}}?\s-p[ =](?P<secret>[^\s"']{_V})""",
        caseless=False,
    ),
    _rule(
        "cli-secret-flag",
        "--password SECRET, --auth-token SECRET, --client-secret SECRET (a secret-named flag)",
        rf"--[a-z0-9-]{{0,40}}{_WORDS}[a-z0-9-]{{0,40}} +[^\s-]",
        rf"""--(?P<name>[a-z0-9-]{{1,90}}) +(["']?)(?P<secret>[^\s"'-][^\s"']{{0,{MAX_VALUE}}})""",
    ),
    _rule(
        "netrc",
        ".netrc: machine HOST login USER password SECRET",
        r"login[ \t]+\S+[ \t]+password[ \t]+\S",
        rf"login[ \t]+\S+[ \t]+password[ \t]+(?P<secret>\S{_V})",
    ),
    _rule(
        "netrc-line",
        ".netrc, one entry per line: a line 'password SECRET'",
        r"^[ \t]*password[ \t]+\S+[ \t]*$",
        rf"^[ \t]*password[ \t]+(?P<secret>\S{_V})[ \t]*$",
        multiline=True,
    ),
    _rule(
        "pgpass",
        ".pgpass: host:port:database:user:password",
        r"^[^\s:]{1,255}:([0-9]{1,5}|\*):[^\s:]{1,255}:[^\s:]{1,255}:\S+$",
        rf"^[^\s:]{{1,255}}:(?:[0-9]{{1,5}}|\*):[^\s:]{{1,255}}:[^\s:]{{1,255}}:(?P<secret>\S{_V})$",
        caseless=False,
        multiline=True,
        loose=r":([0-9]{1,5}|\*):[^\s:]{1,255}:[^\s:]{1,255}:\S+$",
        one_line=True,
    ),
)
