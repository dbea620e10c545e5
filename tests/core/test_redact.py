"""The redactor: one table per rule, env-name classification, payloads, config, properties."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from celery_selfheal.core.redact import (
    REDACTED,
    RedactionConfig,
    Redactor,
    default_redactor,
    is_secret_env_name,
    reset_default_redactor,
)
from celery_selfheal.core.redact_literals import finditer_sparse

ENV = {
    "GITHUB_TOKEN": "ghp_Zq8Zq8Zq8Zq8Zq8Zq8Zq8Zq8Zq8Zq8Zq8Zq8",
    "DB_PASSWORD": "Corr3ct-Horse/Battery+x",
    "AwsSecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "MY_API_KEY": "p@ss word&more",
    "FEATURE_TOKEN": "true",  # a boolean: never hunted for
    "SHORT_SECRET": "abc",  # too short to hunt for
    "HOME": "/home/agent",
    "EDITOR": "vim",
}
R = Redactor(env=ENV)
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


# --------------------------------------------------------------------------- env-name classification


@pytest.mark.parametrize(
    "name",
    [
        "GITHUB_TOKEN", "AwsSecretAccessKey", "DB_PASSWORD", "API_KEY", "apiKey", "APIKey", "X-Api-Key",
        "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DB_PASSWD", "PASSWORD", "KEY",
        "client_secret", "SLACK_BOT_TOKEN", "GH_PAT", "SSH_PRIVATE_KEY", "ACCESSKEY", "PRIVATEKEY",
        "DBPASSWORD", "GHTOKEN", "clientSecret", "OAuthToken", "oauth", "BASIC_AUTH", "Authorization",
        "GOOGLE_APPLICATION_CREDENTIALS", "creds", "DB_PASS", "cookie", "Set-Cookie", "SENTRY_DSN",
        "SECRET_KEY_BASE", "api_keys", "REFRESH_TOKEN", "token", "auth",
    ],
)
def test_secret_env_names(name: str) -> None:
    assert is_secret_env_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "KEYBOARD", "MONKEY", "HOTKEY", "TURKEY", "keyring", "GIT_AUTHOR_NAME", "AUTHOR", "XAUTHORITY",
        "HOME", "PATH", "PWD", "OLDPWD", "max_tokens", "prompt_tokens", "TOKENIZERS_PARALLELISM",
        "token_type", "TOKEN_COUNT", "KeyError", "TokenError", "PUBLIC_KEY", "SSH_KEY_PATH",
        "GITHUB_TOKEN_FILE", "AUTH_TIMEOUT", "PASSWORD_MIN_LENGTH", "secret_name", "cache_key",
        "sort_key", "AWS_ACCESS_KEY_ID", "AUTH_URL", "BYPASS", "COMPASS", "passed", "", "___",
    ],
)
def test_not_secret_env_names(name: str) -> None:
    assert not is_secret_env_name(name)


# --------------------------------------------------------------------------- rules, one table each

TOK36 = "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5"
RULES = [
    # GitHub
    (f"push with ghp_{TOK36} now", "push with [REDACTED] now"),
    (f"gho_{TOK36}", "[REDACTED]"),
    (f"x=ghu_{TOK36};ghs_{TOK36},ghr_{TOK36}", "x=[REDACTED];[REDACTED],[REDACTED]"),
    (f"github_pat_11ABCDEFG0123456789_{TOK36}{TOK36[:23]} ok", "[REDACTED] ok"),
    # AWS
    ("id AKIAIOSFODNN7EXAMPLE,", "id [REDACTED],"),
    ("ASIAY34FZKBOKMUTVV7A", "[REDACTED]"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzzzzKEY", "aws_secret_access_key = [REDACTED]"),
    ('{"AwsSecretAccessKey": "abc/def+ghi"}', '{"AwsSecretAccessKey": "[REDACTED]"}'),
    # Slack
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "[REDACTED]"),
    ("t=xoxp-1234-5678-abcdef", "t=[REDACTED]"),
    # PEM private keys, terminated and not
    (
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nzz==\n-----END RSA PRIVATE KEY-----\nnext",
        "key:\n[REDACTED]\nnext",
    ),
    ("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY----- tail", "[REDACTED] tail"),
    ("a -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nmore", "a [REDACTED]"),
    ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nxyz\n-----END PGP PRIVATE KEY BLOCK-----", "[REDACTED]"),
    ('"-----BEGIN EC PRIVATE KEY-----\\nMHcC\\n-----END EC PRIVATE KEY-----\\n"', '"[REDACTED]\\n"'),
    ("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", None),
    ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", None),
    # JWT
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U!",
        "jwt [REDACTED]!",
    ),
    # Bearer / Authorization
    ("curl -H 'Authorization: Bearer abc123def456ghi'", "curl -H 'Authorization: Bearer [REDACTED]'"),
    ("authorization: Basic dXNlcjpwYXNzd29yZA==", "authorization: Basic [REDACTED]"),
    ("Authorization: token ghx_notashape1234", "Authorization: token [REDACTED]"),
    ('{"Authorization": "Bearer abc.def-123"}', '{"Authorization": "[REDACTED]"}'),
    ("sent bearer 9f8e7d6c5b4a and done", "sent bearer [REDACTED] and done"),
    ("the bearer bonds are fine", None),
    # URLs with passwords: scheme, user and host stay
    ("postgres://app:s3cr3t@db:5432/app", "postgres://app:[REDACTED]@db:5432/app"),
    ("redis://:hunter2@localhost:6379/0", "redis://:[REDACTED]@localhost:6379/0"),
    ("https://u:p@ss@host.example/x?y", "https://u:[REDACTED]@host.example/x?y"),
    ("git clone https://x-access-token:abc123@github.com/o/r", "git clone https://x-access-token:[REDACTED]@github.com/o/r"),
    ("ssh://git@github.com:22/o/r.git and http://host:8080/path a@b.c", None),
    # name=value, name: value, "name": "value"
    ("password=hunter2 user=bob", "password=[REDACTED] user=bob"),
    ("DB_PASSWORD='x y' next", "DB_PASSWORD='[REDACTED]' next"),
    ("--api-key=abcdef --verbose", "--api-key=[REDACTED] --verbose"),
    ("secret: swordfish\nother: 1", "secret: [REDACTED]\nother: 1"),
    ('{"client_secret": "s3cr3t", "id": 1}', '{"client_secret": "[REDACTED]", "id": 1}'),
    ("{'token': 'abc', 'n': 2}", "{'token': '[REDACTED]', 'n': 2}"),
    ('"{\\"password\\": \\"abc\\"}"', '"{\\"password\\": \\"[REDACTED]\\"}"'),
    ("https://api.x.com/v1?access_token=abc123&page=2", "https://api.x.com/v1?access_token=[REDACTED]&page=2"),
    ("X-Api-Key: 0123456789abcdef", "X-Api-Key: [REDACTED]"),
    ("export GH_TOKEN=ghx123abc", "export GH_TOKEN=[REDACTED]"),
    ("passwd => 'abc'", "passwd => '[REDACTED]'"),
    ("Cookie: session=abc; csrftoken=def\nnext", "Cookie: [REDACTED]\nnext"),
    ("auth: true, password: null", None),
    ('"creds": {"user": "u", "password": "p"}', '"creds": {"user": "u", "password": "[REDACTED]"}'),
    ("if token == expected:", None),
    ("crate::auth::verify(x)", None),
    # provider keys
    ("OPENAI sk-proj-abcdefghijklmnopqrstuvwxyz0123", "OPENAI [REDACTED]"),
    ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz-0123456789_AA", "[REDACTED]"),
    ("key AIzaSyA1234567890abcdefghijklmnopqrstuvw.", "key [REDACTED]."),
    ("glpat-abcdefghij0123456789", "[REDACTED]"),
    ("npm_abcdefghijklmnopqrstuvwxyz0123456789", "[REDACTED]"),
    ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "[REDACTED]"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc rk_live_abcdefghij12 sk_test_abcdefghij12 pk_live_abcdefghij12",
     "[REDACTED] [REDACTED] [REDACTED] [REDACTED]"),
    # no boundary, too short, or not a secret at all
    ("task-abcdefghijklmnopqrstuvwxyz risk-free ask-me-anything-now-please-ok", None),
    ("xghp_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5 ghp_short AKIA123 ghp_", None),
    ("KeyError: 'token'\nmax_tokens=4096 prompt_tokens: 12 monkey=banana keyboard: us", None),
    ("commit 9fceb02d0ae598e95dc970b74767f19372d61af8 uuid 3f2a1b4c-1234-4abc-8def-0123456789ab", None),
    ("GIT_AUTHOR_NAME=Bob\nPWD=/work\nauthor: Alice", None),
    ("[REDACTED] and password=[REDACTED] and Bearer [REDACTED]", None),
]


@pytest.mark.parametrize(("text", "expected"), RULES)
def test_rules(text: str, expected: str | None) -> None:
    assert R.redact(text) == (text if expected is None else expected)


# --------------------------------------------------------------------------- env values and their forms


def test_env_values_in_all_their_forms() -> None:
    value = ENV["DB_PASSWORD"]
    raw = value.encode()
    forms = [
        value,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw + b"\n").decode(),
        quote(value, safe=""),
        json.dumps(value)[1:-1],
    ]
    for form in forms:
        assert R.redact(f"<{form}>") == f"<{REDACTED}>", form
    assert R.redact(f"q={quote(ENV['MY_API_KEY'], safe='')}&x") == "q=[REDACTED]&x"
    assert R.redact("plus " + quote_plus(ENV["MY_API_KEY"])) == "plus [REDACTED]"


def test_env_longest_form_wins_and_short_or_boolean_values_are_not_hunted() -> None:
    r = Redactor(env={"A_TOKEN": "abcdefgh", "B_TOKEN": "abcdefghijkl"})
    assert r.redact("abcdefghijkl abcdefgh") == "[REDACTED] [REDACTED]"
    assert R.redact("true abc vim /home/agent") == "true abc vim /home/agent"


def test_values_inside_the_placeholder_are_not_hunted() -> None:
    r = Redactor(env={"X_SECRET": "DACT", "Y_SECRET": "[REDACTED]"})
    assert r.redact("x [REDACTED] y") == "x [REDACTED] y"


def test_env_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFHEAL_TEST_PASSWORD", "Zz9-unique-value")
    assert Redactor().redact("v=Zz9-unique-value") == "v=[REDACTED]"


def test_default_redactor_is_cached_until_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    reset_default_redactor()
    first = default_redactor()
    assert default_redactor() is first
    monkeypatch.setenv("SELFHEAL_TEST_TOKEN", "Qq7-later-value")
    assert "Qq7-later-value" in first.redact("Qq7-later-value")  # a snapshot
    reset_default_redactor()
    assert default_redactor().redact("Qq7-later-value") == REDACTED
    reset_default_redactor()


# --------------------------------------------------------------------------- config


def test_config_extends_and_allows() -> None:
    config = RedactionConfig(
        extra_patterns=(r"INTERNAL-\d{6}",),
        extra_env_names=("PLAIN_VAR",),
        allowlist=("ghp_" + "0" * 36, "keepme"),
        extra_keys=("X-Internal",),
    )
    r = Redactor(env={"PLAIN_VAR": "notnamedsecret", "OTHER_TOKEN": "keepme"}, config=config)
    assert r.redact("id INTERNAL-123456 ok") == "id [REDACTED] ok"
    assert r.redact("v notnamedsecret") == "v [REDACTED]"
    assert r.redact("test token ghp_" + "0" * 36) == "test token ghp_" + "0" * 36
    assert r.redact("keepme password=keepme") == "keepme password=keepme"
    assert r.redact_obj({"x-internal": "v", "y": "v"}) == {"x-internal": REDACTED, "y": "v"}


# --------------------------------------------------------------------------- bytes and payloads


def test_redact_bytes_round_trips_undecodable_bytes() -> None:
    data = b"\xff\xfe bin ghp_" + TOK36.encode() + b" \xc3\x28 caf\xc3\xa9"
    assert R.redact_bytes(data) == b"\xff\xfe bin [REDACTED] \xc3\x28 caf\xc3\xa9"
    clean = b"\x00\x01\xff plain"
    assert R.redact_bytes(clean) == clean


def test_redact_obj() -> None:
    payload = {
        "event": "task.step.attempt.failed",
        "password": "p",
        "apiKey": 12345,
        "Authorization": ["Bearer x"],
        "credentials": {"user": "u", "password": "p"},
        "token": None,
        "auth": True,
        "tokens": 5,
        "nested": [{"cookie": "c=1"}, ("ghp_" + TOK36, 3, 4.5)],
        "msg": "connect postgres://u:pw1@h/db",
        "ghp_" + TOK36: "as a key",
        7: "int key",
    }
    out = R.redact_obj(payload)
    assert out == {
        "event": "task.step.attempt.failed",
        "password": REDACTED,
        "apiKey": REDACTED,
        "Authorization": REDACTED,
        "credentials": REDACTED,
        "token": None,
        "auth": True,
        "tokens": 5,
        "nested": [{"cookie": REDACTED}, (REDACTED, 3, 4.5)],
        "msg": "connect postgres://u:[REDACTED]@h/db",
        REDACTED: "as a key",
        7: "int key",
    }
    assert payload["password"] == "p" and out is not payload  # a new object; input untouched
    assert R.redact_obj(3) == 3 and R.redact_obj(None) is None


def test_redact_obj_takes_subclasses_of_the_usual_types_as_before() -> None:
    """Exact ``str``/``int``/``dict`` take a fast path; their subclasses the general one, same result."""
    import collections
    import enum

    class Text(str):
        pass

    class Level(enum.IntEnum):
        HIGH = 2

    secret = "ghp_" + TOK36
    out = R.redact_obj(collections.OrderedDict([("a", Text(secret)), ("b", Level.HIGH), ("password", Level.HIGH)]))
    assert out == {"a": REDACTED, "b": Level.HIGH, "password": REDACTED} and type(out) is dict
    assert R.redact_obj(Level.HIGH) is Level.HIGH and R.redact_obj(True) is True and R.redact_obj(0.5) == 0.5


# --------------------------------------------------------------------------- properties

PEM_BEGIN, PEM_END = "-----BEGIN RSA PRIVATE KEY-----\n", "\n-----END RSA PRIVATE KEY-----"
SAFE_ALPHABET = "acdefgilmnoqrtvwz0123456789 \n\t.,;:=-_/\"'(){}[]<>!?#%&*+"
safe_text = st.text(alphabet=SAFE_ALPHABET, max_size=300)


def _tok(n: int, alphabet: str = ALNUM) -> st.SearchStrategy[str]:
    # Always one upper-case letter: the safe filler cannot contain the secret by chance.
    return st.text(alphabet=alphabet, min_size=n, max_size=n).map(lambda s: "Q" + s[1:])


#: (text to plant, the part that must be gone)
PLANTS = st.one_of(
    st.tuples(st.sampled_from("pousr"), _tok(36)).map(lambda t: (f"gh{t[0]}_{t[1]}", t[1])),
    _tok(82, ALNUM + "_").map(lambda s: (f"github_pat_{s}", s)),
    st.tuples(st.sampled_from(["AKIA", "ASIA"]), _tok(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")).map(
        lambda t: (t[0] + t[1], t[1])
    ),
    _tok(40, ALNUM + "/+").map(lambda s: (f"aws_secret_access_key = {s}", s)),
    st.tuples(st.sampled_from("abprs"), _tok(40, ALNUM + "-")).map(lambda t: (f"xox{t[0]}-{t[1]}", t[1])),
    _tok(64, ALNUM + "+/").map(
        lambda s: (f"{PEM_BEGIN}{s[:32]}\n{s[32:]}{PEM_END}", s[:32])
    ),
    st.tuples(_tok(20, ALNUM + "-_"), _tok(30, ALNUM + "-_"), _tok(43, ALNUM + "-_")).map(
        lambda t: (f"eyJ{t[0]}.eyJ{t[1]}.{t[2]}", t[1])
    ),
    _tok(32).map(lambda s: (f"Authorization: Bearer {s}", s)),
    _tok(12).map(lambda s: (f"https://deploy:{s}@git.example.com/r.git", s)),
    st.tuples(
        st.sampled_from(["password", "api_key", "SECRET_TOKEN", "client_secret", "DB_PASSWORD", "apiKey"]),
        st.sampled_from(["{}={}", "{}: {}", '"{}": "{}"', "{}='{}'", "--{}={}"]),
        _tok(14),
    ).map(lambda t: (t[1].format(t[0], t[2]), t[2])),
    _tok(48, ALNUM + "-_").map(lambda s: (f"sk-{s}", s)),
    _tok(90, ALNUM + "-_").map(lambda s: (f"sk-ant-api03-{s}", s)),
    _tok(35, ALNUM + "-_").map(lambda s: (f"AIza{s}", s)),
    _tok(20, ALNUM + "-_").map(lambda s: (f"glpat-{s}", s)),
    _tok(36).map(lambda s: (f"npm_{s}", s)),
    _tok(34).map(lambda s: (f"hf_{s}", s)),
    st.tuples(st.sampled_from(["sk_live_", "rk_live_", "sk_test_", "pk_live_"]), _tok(24)).map(
        lambda t: (t[0] + t[1], t[1])
    ),
    st.sampled_from(
        [ENV["GITHUB_TOKEN"], ENV["DB_PASSWORD"], base64.b64encode(ENV["DB_PASSWORD"].encode()).decode()]
    ).map(lambda s: (s, s)),
)


@st.composite
def planted_text(draw: st.DrawFn) -> tuple[str, list[str]]:
    """Safe filler with secrets planted between whitespace; returns the text and the secrets."""
    parts, secrets = [draw(safe_text)], []
    for plant, secret in draw(st.lists(PLANTS, min_size=1, max_size=6)):
        before, after = draw(st.sampled_from([" ", "\n", "\t"])), draw(st.sampled_from([" ", "\n"]))
        parts += [before, plant, after, draw(safe_text)]
        secrets.append(secret)
    return "".join(parts), secrets


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted_text())
def test_every_planted_secret_is_gone(case: tuple[str, list[str]]) -> None:
    text, secrets = case
    out = R.redact(text)
    for secret in secrets:
        assert secret not in out


@settings(max_examples=300, deadline=None)
@given(safe_text)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert Redactor(env={}).redact(text) == text


INNOCUOUS = [
    "Traceback (most recent call last):", '  File "/usr/lib/python3.11/site.py", line 12, in main',
    "KeyError: 'token'", "TokenError: expired", "max_tokens=4096", '"prompt_tokens": 12', "monkey=banana",
    "keyboard: us", "author: Alice", "commit 9fceb02d0ae598e95dc970b74767f19372d61af8", "PWD=/work",
    "uuid 3f2a1b4c-1234-4abc-8def-0123456789ab", "http://localhost:8080/health", "mail bob@example.com",
    "task-queue", "risk-assessment", "$ pytest -q tests/", "5 passed, 1 failed in 0.12s", "if a == b:",
    "token_type: bearer", "cache_key: c0ffee", '{"tokens": 5, "model": "gpt-4o"}', "ghp_short",
    "-----BEGIN CERTIFICATE-----", "public_key: ssh-ed25519 AAAAC3Nza", "the bearer of news", "é ü 中文 🙂",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(INNOCUOUS), max_size=12).map("\n".join))
def test_agent_like_text_without_secrets_is_unchanged(text: str) -> None:
    assert R.redact(text) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(planted_text().map(lambda c: c[0]), st.text(max_size=400), safe_text))
def test_redaction_is_idempotent(text: str) -> None:
    once = R.redact(text)
    assert R.redact(once) == once


def _forms(value: str) -> list[str]:
    raw = value.encode()
    b64 = base64.b64encode(raw).decode()
    return [value, b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode(), quote(value, safe="")]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_tok(24, ALNUM + "-_/+=.:@!$%&*~AJkp"), min_size=1, max_size=5, unique=True),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=8),
    safe_text,
)
def test_env_values_of_any_shape_are_found_in_every_form(
    values: list[str], picks: list[tuple[int, int]], filler: str
) -> None:
    r = Redactor(env={f"APP{i}_SECRET": v for i, v in enumerate(values)})
    planted = [_forms(values[v % len(values)])[f] for v, f in picks]
    text = filler + "".join(f" {p}\n{filler}" for p in planted)
    out = r.redact(text)
    for p in planted:
        assert p not in out
    assert r.redact(out) == out
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    s = r.stream()
    assert "".join(s.feed(c) for c in chunks) + s.flush() == out


# --------------------------------------------------------------------------- scanning shortcuts


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="Jab=_ ", max_size=3000))
@example("Ja" * 100)  # dense: falls back at an anchor that matches
def test_sparse_anchor_search_equals_finditer(text: str) -> None:
    # Lookbehinds across the jump points, a match consuming the next anchor, and (in long texts,
    # dense with anchors) the fallback to a plain scan.
    regex = re.compile(r"J(?:(?<=aJ)b+()|=?a()|b(?=_)()|_J())")
    expected = [(m.span(), m.lastindex) for m in regex.finditer(text)]
    assert [(m.span(), m.lastindex) for m in finditer_sparse(regex, text, "J")] == expected


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_names_are_judged_whole_whatever_was_seen_before(order: tuple[int, int]) -> None:
    # The same 24 characters up to the name's end (what the name memo looks at): only the whole
    # name tells that one is a count, not a secret.
    texts = ["x count_abcdefghijklmnopqrst_key=v1", "x my_abcdefghijklmnopqrst_key=v2"]
    expected = [texts[0], f"x my_abcdefghijklmnopqrst_key={REDACTED}"]
    for i in order:
        assert R.redact(texts[i]) == expected[i]
        assert R.redact(" " * 300 + texts[i]) == " " * 300 + expected[i]  # not the small-string memo
