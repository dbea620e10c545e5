"""Budgets (REQ-02): typed defaults, validation with one message per mistake, layered resolution.

Layers resolve in a fixed order, later wins: defaults, ``config.toml [selfheal]``, environment,
job file ``[job.selfheal]``, step table. Every layer is validated on its own, so an error names
the layer and the key that carries the bad value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from celery_selfheal.errors import ConfigError


@dataclass(frozen=True)
class Budgets:
    """How much recovery a step and a job may spend. Construct via :func:`resolve_budgets`."""

    #: attempts per recovery round of one step (the first run counts); >= 1
    step_max_attempts: int = 3
    #: wall-clock limit of one attempt, in seconds; > 0
    step_timeout_seconds: float = 900.0
    #: an attempt that prints nothing for this many seconds is stuck; > 0
    step_idle_timeout_seconds: float = 300.0
    #: consecutive failed attempts with the same failure signature and diff hash that count as
    #: "no progress" and escalate at once; >= 1
    step_no_progress_limit: int = 2
    #: hard resets (fresh workspace from baseline + checkpoints) per job; >= 0
    job_self_heal_max_resets: int = 1
    #: queue retries (exponential backoff, any worker) once a step's rounds are exhausted; >= 0
    job_queue_max_retries: int = 2
    #: base of the soft-reset backoff (1, 2, 4 ... seconds, capped at 60); >= 0
    soft_reset_backoff_seconds: float = 1.0
    #: base of the queue-retry backoff, in seconds; >= 0
    queue_retry_backoff_seconds: float = 30.0
    #: cap of the queue-retry backoff, in seconds; >= queue_retry_backoff_seconds
    queue_retry_backoff_max_seconds: float = 600.0
    #: grace between TERM and KILL when ending a runtime's process group, in seconds; >= 0
    kill_grace_seconds: float = 5.0
    #: an attempt whose output repeats the same block of lines this many times in a row (counting
    #: its first occurrence) is stuck in a loop and ended (detector ``output_loop``); 0 disables,
    #: else >= 2
    step_output_loop_limit: int = 8

    def __post_init__(self) -> None:
        values = budgets_to_dict(self)
        for key, value in values.items():
            # Store canonical types (Budgets(step_timeout_seconds=5) holds 5.0), bypassing frozen.
            object.__setattr__(self, key, _check_value(key, value, where=f"Budgets.{key}"))
        _check_together(values, where=lambda key: f"Budgets.{key}")


BUDGET_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Budgets))

#: the keys a single step may override (the rest are job-level)
STEP_KEYS: frozenset[str] = frozenset(
    {
        "step_max_attempts",
        "step_timeout_seconds",
        "step_idle_timeout_seconds",
        "step_no_progress_limit",
        "kill_grace_seconds",
        "step_output_loop_limit",
    }
)

#: budget key -> environment variable that overrides it
ENV_VARS: dict[str, str] = {key: key.upper() for key in BUDGET_KEYS}

#: the largest number of seconds a budget may hold: ten years. Countdowns become datetimes in
#: Celery's scheduler (``1e12`` s would overflow them); nothing sensible waits longer.
MAX_SECONDS = 10 * 365 * 86400.0
#: the largest count a budget may hold (attempts, resets, retries)
MAX_COUNT = 10_000

# key -> (python type, lower bound, bound inclusive). Plain data so the rules read as a table;
# the upper bound is MAX_COUNT for integers and MAX_SECONDS for seconds.
_RULES: dict[str, tuple[type, float, bool]] = {
    "step_max_attempts": (int, 1, True),
    "step_timeout_seconds": (float, 0, False),
    "step_idle_timeout_seconds": (float, 0, False),
    "step_no_progress_limit": (int, 1, True),
    "job_self_heal_max_resets": (int, 0, True),
    "job_queue_max_retries": (int, 0, True),
    "soft_reset_backoff_seconds": (float, 0, True),
    "queue_retry_backoff_seconds": (float, 0, True),
    "queue_retry_backoff_max_seconds": (float, 0, True),
    "kill_grace_seconds": (float, 0, True),
    "step_output_loop_limit": (int, 0, True),
}
assert set(_RULES) == set(BUDGET_KEYS)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:-]+")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:100]}... ({len(text)} characters)"


def format_key(key: object) -> str:
    """A key as it appears in an error's ``where``: plain keys as-is, anything else quoted, so a
    key holding a newline or spaces cannot break the one-line message; at most ~100 characters."""
    text = key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else repr(key)
    return text if len(text) <= 100 else f"{text[:100]}... ({len(text)} characters)"


def _check_value(key: str, value: Any, *, where: str) -> int | float:
    """Validate one value for ``key`` and return it in its canonical type."""
    kind, low, inclusive = _RULES[key]
    # bool is a subclass of int, but `step_max_attempts = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"must be {expected}, got {type(value).__name__} {_shown(value)}", where=where)
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"must be an integer, got {_shown(value)}", where=where)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {_shown(value)}", where=where)
    if value < low or (value == low and not inclusive):
        op = ">=" if inclusive else ">"
        raise ConfigError(f"must be {op} {low:g}, got {_shown(value)}", where=where)
    high = MAX_COUNT if kind is int else MAX_SECONDS
    if value > high:
        raise ConfigError(f"must be <= {high:g}, got {_shown(value)}", where=where)
    if key == "step_output_loop_limit" and value == 1:
        # the first occurrence counts: 1 would call every line a loop
        raise ConfigError("must be 0 (off) or >= 2, got 1", where=where)
    return int(value) if kind is int else float(value)


def _check_together(values: Mapping[str, int | float], *, where: Any) -> None:
    """Cross-field rules, checked on a complete set of values; ``where(key)`` names the culprit."""
    base, cap = values["queue_retry_backoff_seconds"], values["queue_retry_backoff_max_seconds"]
    if cap < base:
        raise ConfigError(
            f"must be >= queue_retry_backoff_seconds ({base:g}), got {cap:g}",
            where=where("queue_retry_backoff_max_seconds"),
        )


def validate_overrides(
    values: Mapping[str, Any],
    *,
    where: str,
    allowed: Collection[str] = BUDGET_KEYS,
    sep: str = ".",
    pairs: bool = True,
) -> dict[str, int | float]:
    """Check a mapping of budget overrides and return it with canonical types.

    Raises :class:`ConfigError` with ``where=f"{where}{sep}{key}"`` for an unknown key, a key not
    in ``allowed``, a wrong type (``bool`` is not an integer), a non-finite number, a value
    outside its bounds, or (``pairs``) an idle timeout above the wall timeout set beside it.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"must be a table of budget keys, got {type(values).__name__}", where=where)
    out: dict[str, int | float] = {}
    for key, value in values.items():
        at = f"{where}{sep}{format_key(key)}"
        if key not in _RULES:
            raise ConfigError(f"unknown key; expected one of: {', '.join(sorted(allowed))}", where=at)
        if key not in allowed:
            raise ConfigError(f"not allowed here; only: {', '.join(sorted(allowed))}", where=at)
        out[key] = _check_value(key, value, where=at)
    if pairs:
        _check_layer(out, where=lambda key: f"{where}{sep}{key}")
    return out


def _check_layer(values: Mapping[str, int | float], *, where: Any) -> None:
    """Rules between keys that one layer sets together (a later layer may change either one: a
    step's short ``step_timeout_seconds`` under the default idle timeout is fine)."""
    idle, wall = values.get("step_idle_timeout_seconds"), values.get("step_timeout_seconds")
    if idle is not None and wall is not None and idle > wall:
        raise ConfigError(f"must be <= step_timeout_seconds ({wall:g}) set beside it, got {idle:g}: an idle "
                          "timeout longer than the wall timeout never fires",
                          where=where("step_idle_timeout_seconds"))


def env_overrides(env: Mapping[str, str], *, where: str = "env") -> dict[str, int | float]:
    """Parse the :data:`ENV_VARS` present in ``env`` into budget overrides.

    An empty (or blank) variable counts as unset, as with ``VAR= command``. Errors name the
    variable: ``where`` is ``f"{where} {VAR}"``, e.g. ``env STEP_MAX_ATTEMPTS: must be ...``.
    """
    out: dict[str, int | float] = {}
    for key, var in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        at = f"{where} {var}"
        kind = _RULES[key][0]
        text = raw.strip()
        try:
            value: int | float = int(text) if kind is int else float(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ConfigError(f"must be {expected}, got {_shown(raw)}", where=at) from None
        out[key] = _check_value(key, value, where=at)
    _check_layer(out, where=lambda key: f"{where} {ENV_VARS[key]}")
    return out


def resolve_budgets(*layers: tuple[str, Mapping[str, Any]]) -> Budgets:
    """Merge ``(name, overrides)`` layers over the defaults; later layers win.

    Each layer is validated with its name as ``where``; the merged result is validated as a
    whole, and a cross-field error names the layer that set the offending key.
    """
    key = _layers_key(layers)
    if key is not None and (known := _RESOLVED.get(key)) is not None:
        return known
    budgets = _resolve(layers)
    if key is not None:
        if len(_RESOLVED) >= 1024:
            _RESOLVED.clear()
        _RESOLVED[key] = budgets
    return budgets


#: `resolve_budgets` results by their layers: every step resolves its job's stored budgets and its
#: own overrides again (a pure function of them; `Budgets` is frozen). Errors are never stored.
_RESOLVED: dict[tuple[Any, ...], Budgets] = {}


def _layers_key(layers: tuple[tuple[str, Mapping[str, Any]], ...]) -> tuple[Any, ...] | None:
    """The layers as a hashable key, each value with its type (``True`` is not ``1``, nor ``1.0``
    an ``int``: the checks tell them apart) and a float by its exact bits (``-0.0`` is kept as
    given); None for anything else (resolved uncached)."""
    try:
        key = tuple((name, tuple((k, type(v), v.hex() if type(v) is float else v) for k, v in values.items()))
                    for name, values in layers)
        hash(key)
    except (AttributeError, TypeError, ValueError):
        return None
    return key


def _resolve(layers: tuple[tuple[str, Mapping[str, Any]], ...]) -> Budgets:
    merged: dict[str, int | float] = budgets_to_dict(Budgets())
    origin: dict[str, str] = dict.fromkeys(merged, "defaults")
    for name, values in layers:
        # A layer holding every key is a resolved record (a job's stored budgets): it was checked
        # layer by layer when it was made, and its idle/wall pair may come from different layers.
        full = isinstance(values, Mapping) and set(values) >= set(BUDGET_KEYS)
        checked = validate_overrides(values, where=name, pairs=not full)
        for key, value in checked.items():
            merged[key] = value
            origin[key] = name
    _check_together(merged, where=lambda key: f"{origin[key]}.{key}")
    return Budgets(**merged)  # type: ignore[arg-type]


def budgets_to_dict(b: Budgets) -> dict[str, int | float]:
    """Plain JSON-ready dict of every budget."""
    return {key: getattr(b, key) for key in BUDGET_KEYS}


def budgets_from_dict(d: Mapping[str, Any]) -> Budgets:
    """Inverse of :func:`budgets_to_dict`; missing keys take their defaults, unknown keys fail."""
    return resolve_budgets(("budgets", d))
