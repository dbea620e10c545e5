from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.signature import failure_signature, normalize_failure_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("task 3F2A1B4C-1234-4ABC-8DEF-0123456789AB failed", "task <uuid> failed"),
        ("at commit 9fceb02d0ae598e95dc970b74767f19372d61af8", "at commit <n>"),
        ("object at 0x7ffee3b0c8d0", "object at <addr>"),
        ("2024-01-02T03:04:05.123456+05:30 ERROR boom", "<ts> error boom"),
        ("2024-01-02 03:04:05,123 ERROR boom", "<ts> error boom"),
        ("Mon, 02 Jan 2024 15:04:05 GMT", "<date> <time> gmt"),
        ("Jan  2 15:04:05 host app: x", "<date> <time> host app: x"),
        ("12/31/2023 11:59 PM done", "<date> <time> done"),
        ("[12:34:56] step", "[<time>] step"),
        ("took 1.5s, then 200ms, retry in 3m or 2 hours", "took <dur>, then <dur>, retry in <dur> or <dur>"),
        ("expected 3 got 4", "expected <n> got <n>"),
        ("src/foo.py:12:5: E501 line too long", "src/foo.py:<loc>: e501 line too long"),
        ('File "app.py", line 12, in main', 'file "app.py", line <loc>, in main'),
        ("/tmp/tmpk2jf8a/out.txt missing", "<tmp>/out.txt missing"),
        ("/tmp/pytest-of-root/pytest-12/test_x0/sub/a.py", "<tmp>/sub/a.py"),
        ("/private/var/folders/xy/ab12cd/T/tmpq1/f.txt", "<tmp>/f.txt"),
        ("/var/tmp/build-77/log", "<tmp>/log"),
        ("/home/me/tmp/x stays", "/home/me/tmp/x stays"),
        ("worker pid=4242 and pid: 17 died", "worker pid=<pid> and pid=<pid> died"),
        ("celery[1234]: crash", "celery[<pid>]: crash"),
        (
            "connect localhost:6379 / 127.0.0.1:54321 / [::1]:80",
            "connect localhost:<port> / localhost:<port> / localhost:<port>",
        ),
        ("localhost refused", "localhost refused"),
        # identifiers keep their digits: different tests stay different failures
        ("test_case_2 failed (sha256, utf8, v1.2.3)", "test_case_2 failed (sha256, utf8, v1.2.3)"),
        ("  Mixed   CASE\n\twhitespace  ", "mixed case whitespace"),
        ("defaced cafe", "defaced cafe"),
    ],
)
def test_normalization_table(text, expected):
    assert normalize_failure_text(text) == expected


def test_signature_is_sha256_of_normalized_text():
    sig = failure_signature("Error at 12:00:01")
    assert re.fullmatch(r"[0-9a-f]{64}", sig)
    assert sig == failure_signature("error   AT 23:59:59")
    assert sig != failure_signature("Warning at 12:00:01")


# --- property tests --------------------------------------------------------------------------

# Words that no rule can touch: letters outside a-f (no hex), no digits, not month/weekday names.
_MONTHISH = re.compile(r"^(?:mon|tue|wed|thu|fri|sat|sun|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)")
_word = st.from_regex(r"[g-zG-Z][g-zG-Z_]{0,7}", fullmatch=True).filter(
    lambda w: not _MONTHISH.match(w.lower())
)
_hexdigits = "0123456789abcdef"
_dt = st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2090, 1, 1))


def _volatile(kind: str, fixed: str) -> st.SearchStrategy[str]:
    """Tokens that change from run to run; ``fixed`` is the stable part of the token."""
    n = st.integers(0, 10**9)
    return {
        "uuid": st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()),
        "hash": st.text(_hexdigits, min_size=7, max_size=40).filter(lambda h: any(c.isdigit() for c in h)),
        "addr": st.integers(0, 2**64).map(hex),
        "iso": _dt.map(lambda d: d.isoformat()) | _dt.map(lambda d: d.isoformat(" ", "milliseconds") + "Z"),
        "log": _dt.map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S,") + f"{d.microsecond // 1000:03d}"),
        "http": _dt.map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
        "syslog": _dt.map(lambda d: d.strftime("%b %d %H:%M:%S")),
        "clock": _dt.map(lambda d: d.strftime("%H:%M:%S")),
        "dur": st.builds(
            lambda v, u: f"{v}{u}",
            st.floats(0, 1e4).map(lambda f: round(f, 3)),
            st.sampled_from(["s", "ms", "m", "h", " seconds"]),
        ),
        "num": n.map(str) | st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:.2f}"),
        "loc": st.builds(lambda a, b: f"{fixed}.py:{a}:{b}", n, n)
        if fixed < "n"
        else n.map(lambda a: f"line {a}"),
        "tmp": st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True).map(lambda r: f"/tmp/{r}/{fixed}.txt"),
        "pytest": st.builds(lambda u, k: f"/tmp/pytest-of-{u}/pytest-{k}/test_{fixed}0/x.py", _word, n),
        "pid": n.map(lambda p: f"pid={p}") if fixed < "n" else n.map(lambda p: f"[{p}]"),
        "port": st.builds(
            lambda h, p: f"{h}:{p}", st.sampled_from(["localhost", "127.0.0.1"]), st.integers(1, 65535)
        ),
    }[kind]


@st.composite
def message_pairs(draw):
    """The same message twice, with every volatile token drawn independently."""
    parts = draw(st.lists(st.tuples(st.booleans(), _word, st.sampled_from(
        ["uuid", "hash", "addr", "iso", "log", "http", "syslog", "clock", "dur", "num", "loc", "tmp",
         "pytest", "pid", "port"])), min_size=1, max_size=8))  # fmt: skip
    first, second = [], []
    for is_slot, word, kind in parts:
        if is_slot:
            first.append(draw(_volatile(kind, word)))
            second.append(draw(_volatile(kind, word)))
        else:
            first.append(word)
            second.append(word)
    return " ".join(first), " ".join(second)


@given(pair=message_pairs())
def test_volatile_tokens_do_not_change_the_signature(pair):
    a, b = pair
    assert normalize_failure_text(a) == normalize_failure_text(b)
    assert failure_signature(a) == failure_signature(b)


_stable_text = st.text(alphabet="ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ .,;!?()'\"_=\n\t", max_size=80)


@given(text=_stable_text)
def test_stable_text_only_gets_lowercased_and_collapsed(text):
    assert normalize_failure_text(text) == " ".join(text.lower().split())


@given(a=_stable_text, b=_stable_text)
def test_different_errors_have_different_signatures(a, b):
    if " ".join(a.lower().split()) != " ".join(b.lower().split()):
        assert failure_signature(a) != failure_signature(b)


@given(text=st.text(max_size=300))
def test_any_text_normalizes_to_one_collapsed_lowercase_line(text):
    out = normalize_failure_text(text)
    assert out == " ".join(out.split())
    assert out == out.lower()


def test_zulu_suffix_then_a_word_z_is_stable():
    # found by hypothesis: a lone word "Z" after a timestamp must not be eaten on one side only
    a, b = "2000-01-01T00:00:00 Z", "2000-01-01 00:00:00.000Z Z"
    assert normalize_failure_text(a) == normalize_failure_text(b)
