"""Streaming redaction: same result as the whole text, secrets split across chunks, bounded memory."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_selfheal.core.redact import DEFAULT_BATCH, REDACTED, Redactor, StreamRedactor
from tests.core.test_redact import ENV, PLANTS, TOK36, safe_text

R = Redactor(env=ENV)
BEGIN, END = "-----BEGIN RSA PRIVATE KEY-----\n", "\n-----END RSA PRIVATE KEY-----"


def stream_all(chunks: list[str], batch: int | None = None, redactor: Redactor = R) -> str:
    s = StreamRedactor(redactor, batch=batch)
    return "".join(s.feed(c) for c in chunks) + s.flush()


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted({min(max(c, 0), len(text)) for c in cuts}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def filler(seed: int, size: int) -> str:
    """Deterministic log-like text without secrets."""
    rnd = random.Random(seed)
    words = ["the", "retry", "step", "failed", "passed", "line", "error", "json", "user", "42", "0x1f"]
    return " ".join(rnd.choice(words) for _ in range(size // 5))[:size]


@st.composite
def streamed_text(draw: st.DrawFn) -> str:
    """Filler and planted secrets, with long stretches so the text outgrows the window."""
    parts: list[str] = []
    for _ in range(draw(st.integers(2, 8))):
        kind = draw(st.sampled_from(["small", "any", "big", "big", "plant", "plant", "pem", "jwt"]))
        if kind == "small":
            parts.append(draw(safe_text))
        elif kind == "any":
            parts.append(draw(st.text(max_size=200)))
        elif kind == "big":
            parts.append(filler(draw(st.integers(0, 99)), draw(st.integers(1000, 12000))))
        elif kind == "plant":
            parts.append(" " + draw(PLANTS)[0] + " ")
        elif kind == "pem":
            body = "\n".join(["MIIEpAIBAAKCAQEA" + TOK36] * draw(st.integers(1, 400)))
            parts.append(" " + BEGIN + body + (END if draw(st.booleans()) else "") + " ")
        else:
            payload = "x" * draw(st.integers(10, 5000))
            parts.append(f" eyJhbGciOiJIUzI1NiJ9.eyJ{payload}.sig_{TOK36} ")
    return "".join(parts)


SLOW_OK = [HealthCheck.too_slow, HealthCheck.large_base_example]


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_OK)
@given(streamed_text(), st.lists(st.floats(0, 1), min_size=1, max_size=30), st.integers(2048, 20000))
def test_chunked_equals_whole(text: str, cuts: list[float], batch: int) -> None:
    chunks = split_at(text, [int(c * len(text)) for c in cuts])
    assert stream_all(chunks, batch=batch) == R.redact(text)


@pytest.mark.parametrize(
    "secret",
    [
        "ghp_" + TOK36,
        "AKIAIOSFODNN7EXAMPLE",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "sk-ant-api03-" + TOK36 * 2,
        "password=" + TOK36,
        '"client_secret": "' + TOK36 + '"',
        "Authorization: Bearer " + TOK36,
        "postgres://app:" + TOK36 + "@db/x",
        ENV["DB_PASSWORD"],
        ENV["AwsSecretAccessKey"],
        BEGIN + TOK36 + END,
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
)
def test_secret_split_anywhere_across_two_chunks(secret: str) -> None:
    before, after = filler(1, 9000) + " ", " " + filler(2, 3000)
    text = before + secret + after
    whole = R.redact(text)
    assert TOK36 not in whole and secret not in whole
    for cut in range(len(before) - 2, len(before) + len(secret) + 2):
        assert stream_all([text[:cut], text[cut:]], batch=1) == whole, cut


def test_default_batch_and_tiny_chunks_agree_with_whole() -> None:
    text = (filler(3, 50_000) + " token=" + TOK36 + " " + BEGIN + "QUJD\n" * 3000 + END + " ") * 3
    whole = R.redact(text)
    assert TOK36 not in whole and "QUJD" not in whole
    assert stream_all(split_at(text, list(range(0, len(text), 65536)))) == whole
    assert stream_all(split_at(text, list(range(0, len(text), 7)))) == whole


def test_unterminated_pem_is_redacted_to_the_end_with_bounded_memory() -> None:
    s = R.stream()
    out = [s.feed("log line\nkey follows " + BEGIN)]
    chunk = ("MIIEpAIBAAKCAQEA" + TOK36 + "\n") * 1200
    for i in range(80):  # 5 MB of key material, no END line
        out.append(s.feed(chunk))
        # Held normally until the first scan finds the block; then only the END-marker tail.
        assert s.pending_chars < (200 if i >= 10 else R.window + DEFAULT_BATCH + len(chunk))
    out.append(s.flush())
    assert "".join(out) == "log line\nkey follows " + REDACTED


def test_pem_end_arrives_after_many_chunks() -> None:
    body = ("QUJD" * 16 + "\n") * 20_000
    text = "a " + BEGIN + body + END + "\n-----END RSA PRIVATE KEY----- z"  # a stray END stays
    chunks = split_at(text, list(range(0, len(text), 4096)))
    assert stream_all(chunks) == R.redact(text) == "a " + REDACTED + "\n-----END RSA PRIVATE KEY----- z"


@pytest.mark.parametrize(
    ("block", "rounds"),
    [
        ("line without secrets\n" * 3000, 40),  # plain text, ~2.6 MB
        ("x" * 65536, 40),  # one endless token
        # overlapping name=value chains: every name is a secret's name and every value seen again,
        # the redactor's slowest input (~0.5 s per block): 8 blocks, the buffer checked after each
        ("password=password=" * 3641, 8),
        ("ghp_" + "a" * 65532, 40),  # a token longer than any rule takes
    ],
)
def test_memory_stays_bounded(block: str, rounds: int) -> None:
    s = R.stream()
    bound = max(4 * (R.window + DEFAULT_BATCH), 1 << 20) + len(block)
    emitted = 0
    for _ in range(rounds):
        emitted += len(s.feed(block))
        assert s.pending_chars <= bound
    emitted += len(s.flush())
    assert emitted > 0


def test_flush_resets_the_stream_and_empty_feeds_are_harmless() -> None:
    s = R.stream()
    assert s.feed("") == ""
    assert s.feed("token=abc ") + s.flush() == "token=[REDACTED] "
    assert s.feed(BEGIN + "abc") + s.flush() == REDACTED
    assert s.feed("plain") + s.flush() == "plain"
    assert s.flush() == ""
