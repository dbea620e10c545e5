"""Durations as operators write them: ``7d``, ``12h``, ``30m``, ``45s``, ``0s`` (pure)."""

from __future__ import annotations

import re

from celery_selfheal.errors import InputError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")


def parse_duration(text: str, *, where: str = "--older-than") -> int:
    """Seconds in ``text`` (one whole number and one unit of s, m, h, d); `InputError` otherwise."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InputError(f"invalid duration {text!r} (use a whole number and a unit: 7d, 12h, 30m, 45s, 0s)",
                         where=where)
    return int(match.group(1)) * UNITS[match.group(2)]


def format_duration(seconds: int) -> str:
    """The largest exact unit: 86400 -> ``1d``, 90 -> ``90s``."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"
