"""Once seen, always redacted (issue 14) and line-wrapped base64 of env secrets (issue 11)."""

from __future__ import annotations

import base64
import shutil
import subprocess
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_selfheal.core.redact import REDACTED, Redactor
from celery_selfheal.core.redact_seen import LIMIT, SeenSecrets

R = Redactor(env={})
S = "Xk9vQ2mZr7Lp4Tw8"


def streamed(redactor: Redactor, text: str, cuts: list[int]) -> str:
    stream, pos, parts = redactor.stream(), 0, []
    for cut in sorted(set(cuts)):
        parts.append(stream.feed(text[pos:cut]))
        pos = max(pos, cut)
    parts.append(stream.feed(text[pos:]))
    return "".join(parts) + stream.flush()


@pytest.mark.parametrize(
    "text",
    [
        f"token = '{S}' | '{S}'",
        f"export API_TOKEN={S}\n$ echo $API_TOKEN\n{S}\n",
        f'{{"password": "{S}"}}\nbase64: {base64.b64encode(S.encode()).decode()}',
        f"password={S}\nurl: https://x.example/?p={quote(S + '/')}",
    ],
)
def test_later_copies_are_redacted(text: str) -> None:
    out = R.redact(text)
    assert S not in out
    assert base64.b64encode(S.encode()).decode() not in out
    assert R.redact(out) == out


def test_an_earlier_copy_is_kept_in_whole_text_and_stream() -> None:
    """Only occurrences after the first detection: a stream has emitted the earlier ones."""
    text = f"{S} printed first\npassword={S}\nagain {S}\n"
    expected = f"{S} printed first\npassword={REDACTED}\nagain {REDACTED}\n"
    assert R.redact(text) == expected
    assert streamed(R, text, [3, 20, 40]) == expected


def test_short_values_are_not_hunted() -> None:
    assert R.redact("password=1234 and later 1234") == f"password={REDACTED} and later 1234"


def test_far_later_copy_in_a_long_stream() -> None:
    filler = "".join(f"line {i} of ordinary output\n" for i in range(60_000))  # ~1.6 MB
    text = f"API_TOKEN={S}\n{filler}echo {S}\n"
    for out in (R.redact(text), streamed(R, text, list(range(0, len(text), 65_536)))):
        assert S not in out
        assert out.endswith(f"echo {REDACTED}\n")


def test_memory_bound_and_first_values_win() -> None:
    seen = SeenSecrets(limit=3)
    seen.commit(["aaaaaaaa1", "bbbbbbbb2", "cccccccc3", "dddddddd4"])
    assert len(seen) == 3 and "dddddddd4" not in seen and seen.room == 0
    many = "".join(f"password=Val{i:05d}xyz\n" for i in range(LIMIT + 20))
    repeats = "".join(f"Val{i:05d}xyz\n" for i in range(LIMIT + 20))
    out = R.redact(many + repeats)
    assert "Val00000xyz" not in out  # among the first LIMIT values
    assert f"Val{LIMIT + 5:05d}xyz" in out.split("\n", LIMIT + 20)[-1]  # beyond the bound: kept


@settings(max_examples=150, deadline=None)
@given(
    secret=st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789", min_size=10, max_size=30),
    prefix=st.text(alphabet=" \n.,:abc", max_size=30),
    gap=st.text(alphabet=" \n.,:abc", max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=150), max_size=5),
)
def test_dedupe_equal_at_every_split(secret: str, prefix: str, gap: str, cuts: list[int]) -> None:
    text = f"{prefix}token = '{secret}'{gap}| {secret} |{gap}{secret}"
    out = R.redact(text)
    assert secret not in out
    assert streamed(R, text, cuts) == out
    assert R.redact(out) == out


# --------------------------------------------------------------------------- wrapped base64 (issue 11)

ENV = {"OPENAI_API_KEY": "sk-proj-" + "Tk9xLm2" * 12, "DB_PASSWORD": "Corr3ct-Horse/Battery+x"}
RE = Redactor(env=ENV)


def _wrapped(value: bytes, width: int, crlf: bool = False) -> str:
    text = base64.b64encode(value).decode()
    lines = [text[i : i + width] for i in range(0, len(text), width)]
    return ("\r\n" if crlf else "\n").join(lines) + "\n"


@pytest.mark.parametrize("width", [76, 64, 40, 17, 8, 5, 1])
@pytest.mark.parametrize("newline", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_wrapped_base64_of_env_secret(width: int, newline: bool, crlf: bool) -> None:
    for value in ENV.values():
        raw = value.encode() + (b"\n" if newline else b"")
        text = "$ echo $X | base64\n" + _wrapped(raw, width, crlf) + "$ done\n"
        out = RE.redact(text)
        body = base64.b64encode(raw).decode()
        for i in range(0, len(body) - 12, 6):  # no 12-character piece of it survives
            assert body[i : i + 12] not in out.replace("\r\n", "").replace("\n", "")
        assert out.startswith("$ echo $X | base64\n") and out.endswith("$ done\n")
        assert streamed(RE, text, list(range(0, len(text), 7))) == out


@pytest.mark.skipif(shutil.which("base64") is None, reason="coreutils base64 not installed")
def test_coreutils_base64_output() -> None:
    value = ENV["OPENAI_API_KEY"]
    done = subprocess.run(["base64"], input=(value + "\n").encode(), capture_output=True, check=True)
    out = RE.redact(done.stdout.decode())
    assert out.strip() == REDACTED


def test_wrapped_base64_of_other_text_is_kept() -> None:
    text = _wrapped(b"just some ordinary file contents, nothing secret in here at all", 20)
    assert RE.redact(text) == text


def test_one_redactor_in_many_threads() -> None:
    """The Hyperscan databases are shared; each thread scans with its own scratch."""
    from concurrent.futures import ThreadPoolExecutor

    body = _wrapped(ENV["OPENAI_API_KEY"].encode(), 76)
    text = f"ghp_{'a1B2' * 9} {body} dop_v1_{'ab' * 32}\n" * 2000
    expected = RE.redact(text)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(RE.redact, [text] * 8)) == [expected] * 8


SEEN_TEXT = st.lists(st.sampled_from([S, S[:9], "==", "=", "x", " ", "\n", base64.b64encode(S.encode()).decode()[:12]]),
                     max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(SEEN_TEXT, st.lists(st.tuples(st.integers(0, 400), st.integers(0, 400)), max_size=12), st.booleans())
def test_occurrences_inside_covered_spans_may_be_left_out(text: str, pairs: list[tuple[int, int]], hs: bool) -> None:
    """Searching only outside the covered spans (a chain of overlapping secrets) changes nothing
    once merged with them, whichever engine (Hyperscan or ``str.find``) searches."""
    from celery_selfheal.core import redact_seen
    from celery_selfheal.core.redact_spans import merge

    text = text * (1 if not hs else 40)  # long enough for the Hyperscan path
    covered = merge([(min(a, b), max(a, b)) for a, b in pairs if a != b and max(a, b) <= len(text)])
    if sum(e - s for s, e in covered) <= len(text) // 2:  # else the whole text is searched anyway
        covered = merge([*covered, (0, len(text) // 2 + 1)])
    seen = SeenSecrets()
    seen.commit([S])
    budget = redact_seen._FIND_BUDGET
    if not hs:
        redact_seen._FIND_BUDGET = 1 << 60
    try:
        some = seen.occurrences(text, {}, None, covered)
        every = seen.occurrences(text, {})
    finally:
        redact_seen._FIND_BUDGET = budget
    assert merge(covered + some) == merge(covered + every)


def test_an_occurrence_whose_padding_joins_two_touching_covered_spans_is_found() -> None:
    from celery_selfheal.core.redact_spans import merge

    text = S + "==" + "x" * 100
    covered = [(0, len(S)), (len(S), len(text))]  # touching: they stay two [REDACTED]
    seen = SeenSecrets()
    seen.commit([S])
    assert merge(covered + seen.occurrences(text, {}, None, covered)) == [(0, len(text))]


SEEN_VALUES = [S, "Qw3rTy7UiOp2AsDf", "ghp_" + "Zq8" * 12, "p4ss-W0rd-l0ng", "Zm9vYmFyYmF6cXV4"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([*SEEN_VALUES, "x" * 7, " ", "\n", "=="]), max_size=30), min_size=1, max_size=8),
    st.lists(st.integers(0, len(SEEN_VALUES)), min_size=8, max_size=8),
    st.sampled_from([0, 200, 4_000_000, 1 << 60]),
)
def test_hyperscan_pass_equals_find_while_values_arrive(
    batches: list[list[str]], arrivals: list[int], rebuild: int
) -> None:
    """Values remembered a few per batch: the Hyperscan pass (its database rebuilt at once, late
    or never, the forms not in it found with ``str.find``) finds what ``str.find`` alone finds."""
    from celery_selfheal.core import redact_seen

    if redact_seen.hyperscan is None:
        pytest.skip("no Hyperscan on this platform")
    budget, cost = redact_seen._FIND_BUDGET, redact_seen._REBUILD_COST
    by_hs, by_find = SeenSecrets(), SeenSecrets()
    try:
        for parts, n in zip(batches, arrivals, strict=False):
            text = "".join(parts) * 3
            new = {v: text.find(v) for v in SEEN_VALUES[:n] if v in text and v not in by_hs}
            redact_seen._FIND_BUDGET, redact_seen._REBUILD_COST = -1, rebuild
            hs = by_hs.occurrences(text, new)
            redact_seen._FIND_BUDGET = 1 << 60
            found = by_find.occurrences(text, new)
            assert sorted(hs) == sorted(found)
            kept = sorted(new, key=new.__getitem__)[: (len(new) + 1) // 2]  # the rest held back
            for seen in (by_hs, by_find):
                seen.commit(kept)
    finally:
        redact_seen._FIND_BUDGET, redact_seen._REBUILD_COST = budget, cost
