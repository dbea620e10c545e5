"""The token catalog (rules/secrets.toml), context rules and prose: one test per rule, the labelled
corpus in tests/core/data, and properties (issue 14)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_selfheal.core import redact_catalog
from celery_selfheal.core.redact import REDACTED, RedactionConfig, Redactor
from celery_selfheal.core.redact_catalog import CatalogError, Rule, builtin_rules, catalog_for, make_rule

DATA = Path(__file__).parent / "data"
RULES = builtin_rules()
R = Redactor(env={})
#: Realistic places a token is printed in, none of which names it a secret.
CONTEXTS = tuple(json.loads((DATA / "token_contexts.json").read_text()))


def secret_part(rule: Rule, example: str) -> str:
    """What must be gone: the ``secret`` group of a context rule, else the whole token."""
    m = rule.regex.match(example)
    assert m is not None
    return m.group("secret") if "secret" in rule.regex.groupindex else example


def test_catalog_size_ids_and_families() -> None:
    assert len(RULES) >= 200
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert len({r.family for r in RULES}) >= 80
    assert all(r.examples and r.description for r in RULES)


def test_rule_file_is_package_data() -> None:
    from importlib import resources

    assert resources.files("celery_selfheal.core").joinpath("rules/secrets.toml").is_file()


def test_ci_has_the_multi_pattern_engine() -> None:
    """The fast engine is a declared dependency: under CI it must be there, not silently replaced."""
    if os.environ.get("CI") == "true" or redact_catalog.hyperscan is not None:
        assert redact_catalog.hyperscan is not None, "hyperscan missing (pip install -e .)"
        assert catalog_for().engine == "hyperscan"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_rule(rule: Rule) -> None:
    """Each rule's examples are gone in every context, and the text around them is kept."""
    for example in rule.examples:
        secret = secret_part(rule, example)
        for ctx in CONTEXTS:
            text = ctx.format(s=example)
            out = R.redact(text)
            assert secret not in out, (rule.id, ctx)
            assert REDACTED in out
            head = ctx.split("{s}")[0]
            assert out.startswith(head[: max(0, len(head) - 1)].replace("{{", "{"))
            assert R.redact(out) == out  # idempotent


@pytest.mark.parametrize("rule", RULES[::7], ids=lambda r: r.id)
def test_rule_pure_python_engine(rule: Rule) -> None:
    """The fallback prefilter finds the same tokens (every 7th rule: it is slow)."""
    catalog = catalog_for((), "python")
    for example in rule.examples:
        text = f"x {example} y"
        found: list[tuple[int, int]] = []
        catalog.scan(text, text.lower(), found, {})
        start = text.index(example)
        assert any(s <= start + example.index(secret_part(rule, example)) < e for s, e in found)


@pytest.mark.parametrize("rule", RULES[::5], ids=lambda r: r.id)
def test_rule_glued_to_text_is_not_a_token(rule: Rule) -> None:
    """A prefix glued after a letter is not the token (``task-...``), unless another secret ends there."""
    if "secret" in rule.regex.groupindex:
        return
    example = rule.examples[0]
    assert R.redact("Q" + example).startswith("Q")


def test_negative_corpus_unchanged() -> None:
    lines = [ln for ln in (DATA / "redact_negatives.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) >= 60
    changed = [ln for ln in lines if R.redact(ln) != ln]
    assert changed == []
    whole = "\n".join(lines)
    assert R.redact(whole) == whole


@pytest.mark.parametrize("case", json.loads((DATA / "redact_contexts.json").read_text()), ids=lambda c: c["kind"])
def test_context_corpus(case: dict[str, object]) -> None:
    text = str(case["text"])
    out = R.redact(text)
    for secret in case["secrets"]:  # type: ignore[attr-defined]
        assert secret not in out
    assert R.redact(out) == out
    stream = R.stream()
    assert "".join(stream.feed(ch) for ch in text) + stream.flush() == out


@pytest.mark.parametrize(
    "text",
    [
        "auth: password reset link sent",
        "Invalid token: signature has expired",
        "    key=lambda a: a.name)",
        "secret: the value is hidden",
        "token = make_token(user)",
        "token = self.token",
        "keys=12",
        '<add key="LogLevel" value="Information"/>',
    ],
)
def test_prose_stays_prose(text: str) -> None:
    assert R.redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PGPASSWORD=hunter psql -h db", "PGPASSWORD=[REDACTED] psql -h db"),
        ("password: hunter2 was rejected", "password: [REDACTED] was rejected"),
        ("password: dragon", "password: [REDACTED]"),
        ("secret: QAAAAAAAAAAAAA a", "secret: [REDACTED] a"),  # not written like a word
        ("token: xKqPzRwT and more", "token: [REDACTED] and more"),
        ('<add key="ClearTextPassword" value="s3cr3t-v4lue"/>', '<add key="ClearTextPassword" value="[REDACTED]"/>'),
        ("Authorization: Api-Token abcdef123456", "Authorization: Api-Token [REDACTED]"),
    ],
)
def test_secret_values_next_to_words(text: str, expected: str) -> None:
    assert R.redact(text) == expected


def test_config_rules_extend_the_catalog() -> None:
    rule = {"id": "acme-key", "keyword": "acme_", "regex": "acme_[a-z0-9]{24}", "examples": ["acme_" + "k1" * 12]}
    redactor = Redactor(env={}, config=RedactionConfig(rules=(rule,)))
    assert redactor.redact("key acme_" + "k1" * 12 + " end") == f"key {REDACTED} end"
    assert R.redact("acme_" + "k1" * 12) == "acme_" + "k1" * 12


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"keyword": "ab", "regex": "ab"}, "missing key 'id'"),
        ({"id": "x", "keyword": "ab", "regex": "ab("}, "does not compile"),
        ({"id": "x", "keyword": "a", "regex": "a"}, "at least 2"),
        ({"id": "x", "keyword": "ab", "regex": "ab[0-9]{3}", "examples": ["ab12"]}, "does not match"),
        ({"id": "x", "keyword": "ab", "regex": "ab", "colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_bad_rule_entries(entry: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        make_rule(entry)


# --------------------------------------------------------------------------- properties

_SAFE = st.text(alphabet=" \n\t.,:;()[]{}<>=/|-abcdefghij", max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(RULES),
    before=_SAFE,
    after=_SAFE,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_planted_tokens_are_gone_at_any_split(rule: Rule, before: str, after: str, cuts: list[int]) -> None:
    example = rule.examples[0]
    secret = secret_part(rule, example)
    text = f"{before} {example}\n{after}"
    out = R.redact(text)
    assert secret not in out
    stream, pos, parts = R.stream(), 0, []
    for cut in sorted(set(cuts)):
        parts.append(stream.feed(text[pos:cut]))
        pos = max(pos, cut)
    parts.append(stream.feed(text[pos:]))
    assert "".join(parts) + stream.flush() == out


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \n.,:;()=-_/abcdefghijklmnopqrstuvwxyz0123456789")), max_size=300))
def test_text_without_secrets_is_unchanged(text: str) -> None:
    """Short words, digits and punctuation: nothing here is a secret (no secret word, no token)."""
    words = re.sub(r"[a-z0-9_]{12,}", "", text)  # long runs could form a name=value pair's value
    for word in ("key", "pass", "token", "secret", "auth", "cred", "cookie", "bearer", "pat", "pwd", "jwt", "dsn"):
        words = words.replace(word, "")
    while "-u" in words:  # curl -u user:password (a context rule): "-ux:y" is one
        words = words.replace("-u", "")
    assert R.redact(words) == words


def _settings(redaction: dict[str, object]) -> object:
    from celery_selfheal.settings import Settings

    p = Path("/nonexistent")
    return Settings(state_dir=p, broker_url="filesystem://", store_url="sqlite://", artifact_root=p,
                    workspace_root=p, config_path=Path("config.toml"), redaction=redaction)


def test_redaction_config_rules_key() -> None:
    from celery_selfheal.context import redaction_config
    from celery_selfheal.errors import ConfigError

    assert redaction_config(_settings({})).rules == ()  # type: ignore[arg-type]
    rule = {"id": "acme-key", "keyword": "acme_", "regex": "acme_[a-z0-9]{24}"}
    assert redaction_config(_settings({"rules": [rule]})).rules == (rule,)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"config.toml: \[redaction\] rules.*does not compile"):
        redaction_config(_settings({"rules": [{**rule, "regex": "acme_("}]}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="array of tables"):
        redaction_config(_settings({"rules": "acme"}))  # type: ignore[arg-type]


@pytest.mark.parametrize("prefilter, why", [
    ("acme_(", "does not parse"),
    ("acm\u00e9_", "must be ASCII"),
    ("(?<=x)acme_", "Hyperscan cannot compile it"),  # (Hyperscan is a declared dependency: no skip)
])
def test_a_bad_prefilter_is_a_config_error_when_read(prefilter: str, why: str) -> None:
    """A user rule's ``prefilter`` is checked with the configuration (one line naming the file,
    table and rule), not found broken by the first redaction (a traceback mid-command)."""
    from celery_selfheal.context import redaction_config
    from celery_selfheal.errors import ConfigError

    rule = {"id": "acme-key", "keyword": "acme_", "regex": "acme_[a-z0-9]{24}", "prefilter": prefilter}
    with pytest.raises(ConfigError, match=rf"config.toml: \[redaction\] rules: entry 0 'acme-key': prefilter {why}"):
        redaction_config(_settings({"rules": [rule]}))  # type: ignore[arg-type]
    assert redaction_config(_settings({"rules": [{**rule, "prefilter": "acme_"}]})).rules  # type: ignore[arg-type]


def test_every_builtin_prefilter_passes_the_config_check() -> None:
    """The check a user's prefilter gets is no stricter than the scanner: the built-in file's 250+
    prefilters, which the scanner compiles together, each pass it alone."""
    from celery_selfheal.core.redact_engine import prefilter_problem

    assert [(r.id, why) for r in redact_catalog.builtin_rules() if (why := prefilter_problem(r.prefilter))] == []
