"""``--older-than`` / ``[retention]`` durations."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.duration import UNITS, format_duration, parse_duration
from celery_selfheal.errors import InputError


@pytest.mark.parametrize(("text", "seconds"), [("7d", 604800), ("12h", 43200), ("30m", 1800), ("45s", 45),
                                               ("0s", 0), (" 2d ", 172800)])
def test_examples(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "1.5h", "7 d", "1w", "1d2h", "7D", "\uff11d"])
def test_bad_durations_are_one_line_naming_the_flag(text: str) -> None:
    with pytest.raises(InputError) as err:
        parse_duration(text)
    assert str(err.value).startswith("--older-than: invalid duration") and "\n" not in str(err.value)


@given(st.integers(0, 10**6), st.sampled_from(sorted(UNITS)))
def test_round_trip(n: int, unit: str) -> None:
    seconds = parse_duration(f"{n}{unit}")
    assert seconds == n * UNITS[unit]
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=8))
def test_anything_else_is_an_input_error_or_a_duration(text: str) -> None:
    with contextlib.suppress(InputError):
        assert parse_duration(text) >= 0
