"""Exponential backoff as one pure function, reused by every retry path.

Modelled on dramatiq's ``common.compute_backoff``: the caller owns the clock and the sleeping;
this only says how long.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable


def compute_backoff(
    retries: int,
    *,
    base: float,
    factor: float = 2.0,
    maximum: float,
    jitter: float = 0.0,
    rand: Callable[[], float] | None = None,
) -> float:
    """Return the delay in seconds before retry number ``retries`` (zero-based).

    ``retries=0`` gives ``base``; each further retry multiplies by ``factor``; the result never
    exceeds ``maximum``. ``jitter`` is a fraction of the capped value: with ``jitter=0.1`` the delay
    lands anywhere in ``[0.9 * d, 1.1 * d]`` (then clamped to ``[0, maximum]``). ``rand`` returns a
    float in ``[0, 1)``; inject it for deterministic tests (default :func:`random.random`).
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if base < 0 or maximum < 0 or factor < 1 or not 0 <= jitter <= 1:
        raise ValueError(
            f"need base >= 0, maximum >= 0, factor >= 1, 0 <= jitter <= 1; "
            f"got base={base}, maximum={maximum}, factor={factor}, jitter={jitter}"
        )
    if base == 0 or maximum == 0:
        delay = 0.0
    elif factor > 1 and retries * math.log(factor) >= math.log(maximum) - math.log(base):
        # Decided in log space so a huge retry count never overflows float arithmetic.
        delay = float(maximum)
    else:
        try:
            delay = min(float(maximum), base * factor**retries)
        except OverflowError:  # a denormal base times a huge power: stay in log space
            delay = min(float(maximum), math.exp(math.log(base) + retries * math.log(factor)))
    if jitter and delay:
        r = (rand or random.random)()
        delay *= 1.0 + jitter * (2.0 * r - 1.0)
    return min(max(delay, 0.0), float(maximum))
