from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.backoff import compute_backoff


@pytest.mark.parametrize(
    ("retries", "base", "factor", "maximum", "expected"),
    [
        (0, 1.0, 2.0, 60.0, 1.0),
        (1, 1.0, 2.0, 60.0, 2.0),
        (2, 1.0, 2.0, 60.0, 4.0),
        (6, 1.0, 2.0, 60.0, 60.0),  # 64 capped
        (0, 30.0, 2.0, 600.0, 30.0),
        (4, 30.0, 2.0, 600.0, 480.0),
        (5, 30.0, 2.0, 600.0, 600.0),
        (10_000, 30.0, 2.0, 600.0, 600.0),  # no float overflow
        (3, 5.0, 1.0, 60.0, 5.0),  # factor 1: constant
        (0, 100.0, 2.0, 10.0, 10.0),  # base above the cap
        (3, 0.0, 2.0, 10.0, 0.0),
    ],
)
def test_exponential_and_capped(retries, base, factor, maximum, expected):
    assert compute_backoff(retries, base=base, factor=factor, maximum=maximum) == expected


def test_jitter_uses_injected_rand():
    assert compute_backoff(2, base=1.0, maximum=60.0, jitter=0.5, rand=lambda: 0.0) == 2.0
    assert compute_backoff(2, base=1.0, maximum=60.0, jitter=0.5, rand=lambda: 0.5) == 4.0
    assert compute_backoff(2, base=1.0, maximum=60.0, jitter=0.5, rand=lambda: 0.999) == pytest.approx(5.996)
    # jitter never pushes past the cap
    assert compute_backoff(9, base=1.0, maximum=60.0, jitter=0.5, rand=lambda: 0.999) == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": -1, "base": 1.0, "maximum": 1.0},
        {"retries": 0, "base": -1.0, "maximum": 1.0},
        {"retries": 0, "base": 1.0, "maximum": -1.0},
        {"retries": 0, "base": 1.0, "maximum": 1.0, "factor": 0.5},
        {"retries": 0, "base": 1.0, "maximum": 1.0, "jitter": 1.5},
    ],
)
def test_rejects_nonsense(kwargs):
    retries = kwargs.pop("retries")
    with pytest.raises(ValueError):
        compute_backoff(retries, **kwargs)


@given(
    retries=st.integers(0, 5000),
    base=st.floats(0, 1e4),
    factor=st.floats(1, 10),
    maximum=st.floats(0, 1e6),
    jitter=st.floats(0, 1),
    r=st.floats(0, 1, exclude_max=True),
)
def test_always_within_bounds_and_monotonic(retries, base, factor, maximum, jitter, r):
    delay = compute_backoff(retries, base=base, factor=factor, maximum=maximum, jitter=jitter, rand=lambda: r)
    assert 0.0 <= delay <= maximum
    plain = [compute_backoff(n, base=base, factor=factor, maximum=maximum) for n in (retries, retries + 1)]
    assert plain[0] <= plain[1]
