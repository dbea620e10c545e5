"""The passes and context rules that the catalog's one Hyperscan scan prefilters give exactly what
a full ``re`` scan gives (issue 14: the prefilters are a speed-up, never a change)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from celery_selfheal.core import redact_rules as rules
from celery_selfheal.core import redact_values as values
from celery_selfheal.core.redact import Redactor
from celery_selfheal.core.redact_catalog import Catalog, builtin_rules, catalog_for
from celery_selfheal.core.redact_context import CONTEXT_RULES
from celery_selfheal.core.redact_literals import finditer_near
from celery_selfheal.core.redact_scan import SpanFinder, _Scan

CATALOG = catalog_for()
pytestmark = pytest.mark.skipif(CATALOG.engine != "hyperscan", reason="prefilters run only with Hyperscan")

#: Pieces that make the prefiltered rules match, almost match, overlap and chain.
PIECES = [
    "pass", "PASS", "password", "secret", "SECRET_KEY", "cred", "auth", "AUTH_TOKEN", "glpat-", "glpat-" + "a" * 22,
    "AKIA", "ASIA", "AIza", "ABCDEFGHIJKLMNOP", "Q" * 30, "-----BEGIN RSA PRIVATE KEY-----", "PRIVATE KEY",
    "://", "https://", "user", ":", "@", "host", "/", "=", ":=", "?=", "=>", '"', "'", "`", "\\", " ", "\t", "\n",
    "x" * 9, "_", "-", ".", "é", "?", "0", "a1b2c3d4e5", "<", ">", "</", "<password>", "value", ' value="',
    'key="', "(", ",", '("X_TOKEN", "', "</password>", "apiToken",
    ":5432:", "*", "db.host", ":*:", "<dsn>", "</dsn>", "<cookie>", "</cookie>",
]
TEXTS = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)


def _run_all(text: str, prefiltered: bool) -> list[tuple[int, int]]:
    finder = SpanFinder((), (), frozenset(), CATALOG)
    scan = _Scan(text, finder._table, finder._first)
    ends = CATALOG.prefilter(text)[1] if prefiltered else {}
    for i, spec in enumerate(finder._passes):
        scan.run(spec, ends.get(i) if prefiltered and spec.reach else None)
    return sorted(scan.found) + sorted((s, e, "glued") for s, e in scan.glued_tokens.items())  # type: ignore[misc]


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_prefiltered_passes_find_what_full_scans_find(text: str) -> None:
    assert _run_all(text, True) == _run_all(text, False)


@settings(max_examples=300, deadline=None)
@given(TEXTS)
@example("https://usér:pw@host https://u:pé?@h ://x\u2003:y@z")  # non-ASCII is "?" for Hyperscan
def test_prefiltered_url_passwords_are_the_full_scan_ones(text: str) -> None:
    ends = CATALOG.prefilter(text)[1][rules.URL_KEY]
    near = [m.span(1) for m in finditer_near(values.URL_PASSWORD, text, "://", ends, values.URL_REACH)]
    assert near == [m.span(1) for m in values.URL_PASSWORD.finditer(text)]


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_loose_context_patterns_keep_every_prefilter_end(text: str) -> None:
    """A loose pattern's hits, once checked, are the prefilter's match ends (checked by brute force)."""
    for rule in CONTEXT_RULES:
        if not rule.loose:
            continue
        flags = (re.I if rule.caseless else 0) | (re.M if rule.multiline else 0)
        exact = re.compile(f"(?:{rule.prefilter})", flags)
        ends = {e for e in range(len(text) + 1) for s in range(e) if exact.fullmatch(text, s, e)}
        loose = re.compile(f"(?:{rule.loose})", flags)
        loose_ends = {e for e in range(len(text) + 1) for s in range(e) if loose.fullmatch(text, s, e)}
        assert ends <= loose_ends


STRICT = Catalog(builtin_rules(), CATALOG.engine, [c._replace(loose="") for c in CONTEXT_RULES])


@settings(max_examples=400, deadline=None)
@given(TEXTS)
@example("<dsn>pg://u:p@h/db</dsn> <cookie> a=b</cookie> ('jwt', 'x') h:5432:d:u:pw")  # no secret word
@example("<password>\u2003x</password>")  # non-ASCII is "?" for Hyperscan, and for the check
@example("('key', '\u2003x')")
def test_loose_context_prefilters_find_what_the_strict_ones_find(text: str) -> None:
    found: list[tuple[int, int]] = []
    strict: list[tuple[int, int]] = []
    CATALOG.scan(text, rules.ascii_lower(text), found, {})
    STRICT.scan(text, rules.ascii_lower(text), strict, {})
    assert sorted(found) == sorted(strict)


def test_env_literals_are_found_with_a_question_mark_and_next_to_non_ascii() -> None:
    r = Redactor(env={"APP_TOKEN": "what?ever-1234", "DB_PASSWORD": "plain-secret-99"})
    assert r.redact("a what?ever-1234 b") == "a [REDACTED] b"
    assert r.redact("a whatéever-1234 b") == "a whatéever-1234 b"  # "?" stands for é in the scanned copy
    assert r.redact("éplain-secret-99é") == "é[REDACTED]é"
