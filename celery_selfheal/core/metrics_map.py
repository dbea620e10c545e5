"""Which StatsD metrics an event produces, and how a metric is written on the wire (REQ-11).

Pure: no sockets. :func:`metrics_for_event` maps one contract event to exactly the contract's
metrics; :func:`format_metric_name`, :func:`format_tag_suffix` and :func:`format_packet` render a
metric in one of three tag styles:

- ``dogstatsd``: ``name:1|c|#class:transient_runtime,strategy:soft_reset``
- ``telegraf``:  ``name,class=transient_runtime,strategy=soft_reset:1|c``
- ``none``:      ``name.transient_runtime.soft_reset:1|c`` (tag values folded into the name)

``task.step.duration_seconds`` is a StatsD timer, and StatsD timers (``|ms``) are milliseconds
by definition: the value on the wire is ``wallClockSeconds * 1000``. Backends that honour the
unit (Prometheus ``statsd_exporter`` divides ``ms`` timers by 1000) then report seconds, as the
name says; Graphite/Datadog show the raw milliseconds (see docs/observability.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

TAG_STYLES = ("dogstatsd", "telegraf", "none")
TagStyle = Literal["dogstatsd", "telegraf", "none"]

ATTEMPTS_TOTAL = "task.self_heal.attempts_total"
RECOVERED_TOTAL = "task.self_heal.recovered_total"
EXHAUSTED_TOTAL = "task.self_heal.exhausted_total"
WALL_TIMEOUT_TOTAL = "task.step.wall_timeout_total"
IDLE_TIMEOUT_TOTAL = "task.step.idle_timeout_total"
NO_PROGRESS_TOTAL = "task.step.no_progress_total"
DURATION_SECONDS = "task.step.duration_seconds"

#: every metric name this module can emit (the contract's list, nothing else)
METRIC_NAMES = (
    ATTEMPTS_TOTAL,
    RECOVERED_TOTAL,
    EXHAUSTED_TOTAL,
    WALL_TIMEOUT_TOTAL,
    IDLE_TIMEOUT_TOTAL,
    NO_PROGRESS_TOTAL,
    DURATION_SECONDS,
)

_DETECTOR_COUNTERS = {
    "wall_timeout": WALL_TIMEOUT_TOTAL,
    "idle_timeout": IDLE_TIMEOUT_TOTAL,
    "no_progress": NO_PROGRESS_TOTAL,
}

#: value used when an event lacks a field that a tag needs
UNKNOWN = "unknown"
#: the strategy tag of a step's first attempt (no recovery strategy started it)
INITIAL_STRATEGY = "initial"
_MAX_TAG_VALUE = 100
# Everything outside this set is replaced: it keeps out the separators of all three styles
# (``,|#:=``, whitespace, newline = packet separator) and non-ASCII, which the ``statsd``
# package cannot encode.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class Metric:
    """One StatsD sample, before formatting."""

    #: ``incr`` = counter, ``timing`` = timer
    kind: Literal["incr", "timing"]
    #: contract name, without prefix or tags
    name: str
    #: counter increment, or timer value in milliseconds (the StatsD wire unit)
    value: float
    #: ``(key, value)`` pairs in a fixed order per metric; values already sanitised
    tags: tuple[tuple[str, str], ...] = ()


def sanitize_tag_value(value: object) -> str:
    """Return ``value`` as a tag value safe in every style: ``[A-Za-z0-9_.-]``, at most 100 chars."""
    text = _UNSAFE.sub("_", str(value))[:_MAX_TAG_VALUE]
    return text or UNKNOWN


def sanitize_prefix(prefix: str) -> str:
    """Return a metric prefix made of safe characters, without leading/trailing dots."""
    return _UNSAFE.sub("_", prefix).strip(".")


def _tag(event: Mapping[str, Any], *keys: str, default: str = UNKNOWN) -> str:
    for key in keys:
        value = event.get(key)
        if value is not None and value != "":
            return sanitize_tag_value(value)
    return default


def _is_duration(value: object) -> TypeGuard[float]:
    # finite in milliseconds too: "inf|ms" is not a StatsD value
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value * 1000.0)
        and value >= 0
    )


def metrics_for_event(event: Mapping[str, Any]) -> list[Metric]:
    """Return the metrics one contract event produces (empty for events without metrics).

    - ``task.step.attempt.finished`` / ``.failed``: one ``attempts_total`` (class, strategy,
      outcome; strategy is the attempt's own ``attemptStrategy``, ``initial`` when absent) and,
      when ``wallClockSeconds`` is present, one ``duration_seconds`` timer (step, attempt);
    - ``.failed`` with detector wall_timeout / idle_timeout / no_progress: the matching
      ``task.step.*_total`` counter (step, class);
    - ``task.self_heal.recovered``: ``recovered_total`` (step, strategy);
    - ``task.self_heal.exhausted``: ``exhausted_total`` (step, class).
    """
    name = event.get("event")
    step = _tag(event, "stepId")
    out: list[Metric] = []
    if name in ("task.step.attempt.finished", "task.step.attempt.failed"):
        failed = name == "task.step.attempt.failed"
        cls = _tag(event, "failureClass") if failed else "none"
        out.append(
            Metric(
                "incr",
                ATTEMPTS_TOTAL,
                1,
                (
                    ("class", cls),
                    ("strategy", _tag(event, "attemptStrategy", default=INITIAL_STRATEGY)),
                    ("outcome", "failure" if failed else "success"),
                ),
            )
        )
        if failed:
            counter = _DETECTOR_COUNTERS.get(str(event.get("detector")))
            if counter is not None:
                out.append(Metric("incr", counter, 1, (("step", step), ("class", cls))))
        seconds = event.get("wallClockSeconds")
        if _is_duration(seconds):
            out.append(
                Metric(
                    "timing",
                    DURATION_SECONDS,
                    float(seconds) * 1000.0,
                    (("step", step), ("attempt", _tag(event, "attempt"))),
                )
            )
    elif name == "task.self_heal.recovered":
        strategy = _tag(event, "attemptStrategy", "strategy")
        out.append(Metric("incr", RECOVERED_TOTAL, 1, (("step", step), ("strategy", strategy))))
    elif name == "task.self_heal.exhausted":
        cls = _tag(event, "failureClass")
        out.append(Metric("incr", EXHAUSTED_TOTAL, 1, (("step", step), ("class", cls))))
    return out


def _check_style(style: str) -> None:
    if style not in TAG_STYLES:
        raise ValueError(f"tag style must be one of {', '.join(TAG_STYLES)}; got {style!r}")


def format_metric_name(name: str, tags: tuple[tuple[str, str], ...], style: str) -> str:
    """Return the stat name as sent (without prefix): tags inline for telegraf, folded for none.

    ``none`` folds the tag values in tag order (``name.v1.v2``), dots in values becoming ``_`` so
    a value never adds a level to the hierarchy. ``dogstatsd`` returns ``name`` unchanged: its
    tags go after the type, see :func:`format_tag_suffix`.
    """
    _check_style(style)
    if not tags or style == "dogstatsd":
        return name
    if style == "telegraf":
        return name + "".join(f",{k}={sanitize_tag_value(v)}" for k, v in tags)
    return ".".join([name, *(sanitize_tag_value(v).replace(".", "_") for _, v in tags)])


def format_tag_suffix(tags: tuple[tuple[str, str], ...], style: str) -> str:
    """Return what follows the type in the packet: ``|#k:v,...`` for dogstatsd, else ``""``."""
    _check_style(style)
    if style != "dogstatsd" or not tags:
        return ""
    return "|#" + ",".join(f"{k}:{sanitize_tag_value(v)}" for k, v in tags)


def format_value(metric: Metric) -> str:
    """Return ``value|type`` exactly as the ``statsd`` package renders it (``1|c``, ``3.5…|ms``)."""
    if metric.kind == "timing":
        return f"{metric.value:0.6f}|ms"
    count = int(metric.value) if float(metric.value).is_integer() else metric.value
    return f"{count}|c"


def format_packet(metric: Metric, style: str, prefix: str = "") -> str:
    """Return the whole StatsD line for ``metric`` (what the sink puts in one UDP datagram)."""
    stat = format_metric_name(metric.name, metric.tags, style)
    clean = sanitize_prefix(prefix)
    if clean:
        stat = f"{clean}.{stat}"
    return f"{stat}:{format_value(metric)}{format_tag_suffix(metric.tags, style)}"
