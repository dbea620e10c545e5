"""The output-loop detector: a corpus of real-looking agent and tool output, properties, budget."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_selfheal.core.output_loop import OutputLoopDetector, describe_loop, loop_key

CORPUS = Path(__file__).parent / "loop_corpus"
FILES = sorted(CORPUS.glob("*.txt"))


def feed_lines(detector: OutputLoopDetector, text: str, *, chunk: int = 0) -> int | None:
    """Feed ``text`` (whole lines, or ``chunk``-character pieces); the line count at detection."""
    lines = text.splitlines(keepends=True)
    if chunk:
        for i in range(0, len(text), chunk):
            if detector.feed(text[i:i + chunk]):
                return detector.lines_seen
        return None
    for line in lines:
        if detector.feed(line):
            return detector.lines_seen
    return None


@pytest.mark.parametrize("path", [p for p in FILES if p.name.startswith("pos-")], ids=lambda p: p.stem)
@pytest.mark.parametrize("chunk", [0, 7, 4096])
def test_positives_are_caught_within_limit_repetitions(path: Path, chunk: int) -> None:
    text = path.read_text()
    detector = OutputLoopDetector(8)
    at = feed_lines(detector, text, chunk=chunk)
    assert at is not None and detector.match is not None
    m = detector.match
    # caught at the end of the 8th occurrence, not later
    assert at == m.first_line + m.period * 8 - 1
    assert m.repetitions == 8 and 1 <= m.period <= 4
    summary = describe_loop(m)
    assert summary.count(m.block[0]) == 1, "the block is quoted once"


@pytest.mark.parametrize("path", [p for p in FILES if p.name.startswith("neg-")], ids=lambda p: p.stem)
@pytest.mark.parametrize("chunk", [0, 4096])
def test_negatives_are_not_flagged(path: Path, chunk: int) -> None:
    detector = OutputLoopDetector(8)
    assert feed_lines(detector, path.read_text(), chunk=chunk) is None
    assert detector.match is None


def test_volatile_tokens_do_not_count_progress_numbers_do() -> None:
    a = "12:00:01 error at 0x7fab3c00 pid=12 in /tmp/tmpa1b2c3/x.py after 1.5s req 5e3f2a9c1b"
    b = "12:00:09 error at 0x7fab9d10 pid=99 in /tmp/tmpz9y8x7/x.py after 20ms req 0c4d1e2f3a"
    assert loop_key(a) == loop_key(b)
    for x, y in [("done 10%", "done 11%"), ("sent 1048576 bytes", "sent 2097152 bytes"),
                 ("[3] retry", "[4] retry"), ("test_a PASSED", "test_b PASSED"), ("line 1 of f", "line 2 of f")]:
        assert loop_key(x) != loop_key(y), (x, y)


def test_limit_zero_disables_and_limit_one_is_refused() -> None:
    off = OutputLoopDetector(0)
    assert off.feed("same\n" * 100) is None
    with pytest.raises(ValueError):
        OutputLoopDetector(1)


def test_two_streams_keep_their_own_partial_lines() -> None:
    d = OutputLoopDetector(4)
    for _ in range(4):
        d.feed("call: x(", 1)
        d.feed("error: nope\n", 2)
        d.feed(")\n", 1)
    assert d.match is not None and d.match.block == ("error: nope", "call: x()")


@settings(max_examples=200, deadline=None)
@given(block=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x1b"),
                              min_size=1, max_size=30).filter(lambda s: s.strip()), min_size=1, max_size=5),
       limit=st.integers(2, 10),
       prefix=st.lists(st.text(st.characters(blacklist_characters="\n\r"), max_size=20), max_size=5),
       chunk=st.integers(1, 64))
def test_any_block_repeated_limit_times_is_found(block: list[str], limit: int, prefix: list[str],
                                                  chunk: int) -> None:
    # numbered prefix lines: different from each other and from the block, so not a loop themselves
    text = "".join(f"prefix {i}: {p}\n" for i, p in enumerate(prefix)) + "".join(f"{line}\n" for line in block) * limit
    d = OutputLoopDetector(limit)
    feed_lines(d, text, chunk=chunk)
    assert d.match is not None
    assert d.match.period <= len(block)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), limit=st.integers(2, 10), start=st.integers(0, 10**6))
def test_advancing_counters_are_never_a_loop(n: int, limit: int, start: int) -> None:
    d = OutputLoopDetector(limit)
    for i in range(start, start + n):
        assert d.feed(f"processed {i} records ({i % 100}%)\n") is None


def test_memory_and_work_are_bounded_under_a_flood() -> None:
    clock = iter(range(10**9)).__next__  # each clock read is one second later: a roomy budget
    d = OutputLoopDetector(8, clock=lambda: float(clock()))
    line = "x" * 100_000  # a line much longer than the cap, no newline yet
    for _ in range(50):
        d.feed(line)
    assert len(d._pending[0]) <= 4000
    d.feed("\n")
    # with no CPU share left (each chunk costs a millisecond, none is earned) it skips instead
    ticks = itertools.count(0.0, 0.001).__next__
    still = OutputLoopDetector(8, clock=ticks, cpu_share=0.0)
    for i in range(2000):
        still.feed("".join(f"unique line {i}.{j} at 12:00:0{j} and 0x{i:08x}\n" for j in range(10)))
    # 50 ms of credit at 1 ms a chunk of 10 lines: about 500 lines examined, the rest skipped
    assert still.match is None and still.lines_seen <= 600 and still.lines_skipped >= 19_000
