"""The event -> metric mapping and the three packet formats (pure)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.metrics_map import (
    METRIC_NAMES,
    TAG_STYLES,
    Metric,
    format_metric_name,
    format_packet,
    format_tag_suffix,
    metrics_for_event,
    sanitize_tag_value,
)

FAILED = {
    "event": "task.step.attempt.failed",
    "ts": "2026-11-21T23:59:59.123Z",
    "jobId": "job-1",
    "epoch": 0,
    "stepId": "build",
    "stepIndex": 1,
    "attempt": 2,
    "failureClass": "transient_runtime",
    "failureSignature": "a" * 64,
    "diffHash": "b" * 64,
    "attemptStrategy": "soft_reset",
    "strategy": "hard_reset",
    "detector": "idle_timeout",
    "wallClockSeconds": 3.2,
    "idleSeconds": 3.0,
    "exitCode": None,
}


def test_failed_attempt_counts_attempt_detector_and_duration() -> None:
    assert metrics_for_event(FAILED) == [
        Metric(
            "incr",
            "task.self_heal.attempts_total",
            1,
            (("class", "transient_runtime"), ("strategy", "soft_reset"), ("outcome", "failure")),
        ),
        Metric(
            "incr", "task.step.idle_timeout_total", 1, (("step", "build"), ("class", "transient_runtime"))
        ),
        Metric("timing", "task.step.duration_seconds", 3200.0, (("step", "build"), ("attempt", "2"))),
    ]


def test_failed_attempt_tag_uses_the_attempts_own_strategy_not_the_next_one() -> None:
    (attempts, *_) = metrics_for_event(FAILED)
    assert ("strategy", "soft_reset") in attempts.tags  # `strategy` (hard_reset) is the NEXT attempt's


@pytest.mark.parametrize(
    ("detector", "counter"),
    [
        ("wall_timeout", "task.step.wall_timeout_total"),
        ("idle_timeout", "task.step.idle_timeout_total"),
        ("no_progress", "task.step.no_progress_total"),
        ("exit", None),
        ("signal", None),
        ("worker_lost", None),
        (None, None),
    ],
)
def test_detector_counters(detector: str | None, counter: str | None) -> None:
    names = [m.name for m in metrics_for_event({**FAILED, "detector": detector})]
    step_counters = [n for n in names if n.startswith("task.step.") and n.endswith("_total")]
    assert step_counters == ([counter] if counter else [])


def test_finished_attempt_is_a_success_with_class_none_and_initial_strategy() -> None:
    event = {"event": "task.step.attempt.finished", "jobId": "j", "stepId": "s", "attempt": 1}
    assert metrics_for_event(event) == [
        Metric(
            "incr",
            "task.self_heal.attempts_total",
            1,
            (("class", "none"), ("strategy", "initial"), ("outcome", "success")),
        )
    ]


def test_recovered_and_exhausted() -> None:
    recovered = {"event": "task.self_heal.recovered", "stepId": "s", "attemptStrategy": "soft_reset"}
    exhausted = {"event": "task.self_heal.exhausted", "stepId": "s", "failureClass": "stuck_no_progress"}
    assert metrics_for_event(recovered) == [
        Metric("incr", "task.self_heal.recovered_total", 1, (("step", "s"), ("strategy", "soft_reset")))
    ]
    assert metrics_for_event(exhausted) == [
        Metric("incr", "task.self_heal.exhausted_total", 1, (("step", "s"), ("class", "stuck_no_progress")))
    ]


@pytest.mark.parametrize(
    "name",
    [
        "task.job.started",
        "task.job.succeeded",
        "task.job.failed",
        "task.job.cancelled",
        "task.step.attempt.started",
        "task.self_heal.triggered",
        "task.self_heal.escalated",
        "task.resume.from_step",
        "task.control.recovery.requested",
        "task.control.recovery.ack",
        "task.control.recovery.rejected",
    ],
)
def test_other_events_have_no_metrics(name: str) -> None:
    assert metrics_for_event({**FAILED, "event": name}) == []


def test_bad_duration_values_are_skipped() -> None:
    for bad in (None, "3", True, -1, float("inf"), float("nan"), 1e308):
        names = [m.name for m in metrics_for_event({**FAILED, "wallClockSeconds": bad})]
        assert "task.step.duration_seconds" not in names


def test_formats() -> None:
    tags = (("class", "transient_runtime"), ("strategy", "soft_reset"))
    metric = Metric("incr", "task.self_heal.attempts_total", 1, tags)
    assert (
        format_packet(metric, "dogstatsd", "ci")
        == "ci.task.self_heal.attempts_total:1|c|#class:transient_runtime,strategy:soft_reset"
    )
    assert (
        format_packet(metric, "telegraf", "ci")
        == "ci.task.self_heal.attempts_total,class=transient_runtime,strategy=soft_reset:1|c"
    )
    assert format_packet(metric, "none") == "task.self_heal.attempts_total.transient_runtime.soft_reset:1|c"
    timer = Metric("timing", "task.step.duration_seconds", 1500.0, (("step", "lint.fix"), ("attempt", "1")))
    assert format_packet(timer, "none") == "task.step.duration_seconds.lint_fix.1:1500.000000|ms"
    assert (
        format_packet(timer, "dogstatsd")
        == "task.step.duration_seconds:1500.000000|ms|#step:lint.fix,attempt:1"
    )


def test_unknown_style_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="dogstatsd, telegraf, none"):
        format_metric_name("x", (), "influx")
    with pytest.raises(ValueError, match="got 'influx'"):
        format_tag_suffix((("a", "b"),), "influx")


def test_sanitize() -> None:
    assert sanitize_tag_value("a b,c|d#e:f=g\nh/é") == "a_b_c_d_e_f_g_h__"
    assert sanitize_tag_value("") == "unknown"
    assert len(sanitize_tag_value("x" * 1000)) == 100


_SAFE = r"[A-Za-z0-9_.\-]+"
_NUM = r"-?[0-9]+(?:\.[0-9]+)?"
_PARSERS = {
    "dogstatsd": re.compile(
        rf"^(?P<name>{_SAFE}):(?P<value>{_NUM})\|(?P<type>c|ms)(?:\|#(?P<tags>[^|\s]+))?$"
    ),
    "telegraf": re.compile(
        rf"^(?P<name>[A-Za-z0-9_.\-]+?)(?P<tags>(?:,[a-z]+={_SAFE})*):(?P<value>{_NUM})\|(?P<type>c|ms)$"
    ),
    "none": re.compile(rf"^(?P<name>{_SAFE}):(?P<value>{_NUM})\|(?P<type>c|ms)$"),
}


def _parse(packet: str, style: str) -> tuple[str, list[tuple[str, str]]]:
    """A strict reader of one StatsD line; returns the name and the tags it carries."""
    match = _PARSERS[style].match(packet)
    assert match, f"unparseable {style} packet: {packet!r}"
    raw = (match.groupdict().get("tags")) or ""
    if style == "dogstatsd":
        pairs = [tuple(t.split(":")) for t in raw.split(",")] if raw else []
    elif style == "telegraf":
        pairs = [tuple(t.split("=")) for t in raw.split(",")[1:]]
    else:
        pairs = []
    assert all(len(p) == 2 for p in pairs), packet
    return match.group("name"), [(k, v) for k, v in pairs]


@given(
    values=st.lists(st.text(), min_size=0, max_size=3),
    style=st.sampled_from(TAG_STYLES),
    kind=st.sampled_from(["incr", "timing"]),
    value=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    prefix=st.text(max_size=20),
)
def test_any_tag_value_yields_a_parseable_packet(
    values: list[str], style: str, kind: str, value: float, prefix: str
) -> None:
    keys = ["class", "strategy", "step"][: len(values)]
    tags = tuple((k, sanitize_tag_value(v)) for k, v in zip(keys, values, strict=True))
    metric = Metric(kind, "task.step.duration_seconds", value if kind == "timing" else 1, tags)  # type: ignore[arg-type]
    packet = format_packet(metric, style, prefix)
    assert "\n" not in packet
    packet.encode("ascii")  # the statsd package encodes ascii
    name, parsed = _parse(packet, style)
    if style == "none":
        # the folded values are the last segments, one per tag, in tag order
        assert name.endswith(
            ".".join(["task.step.duration_seconds", *(v.replace(".", "_") for _, v in tags)])
        )
    else:
        assert name.endswith("task.step.duration_seconds")
        assert parsed == list(tags)


@given(
    st.dictionaries(
        st.sampled_from(
            ["event", "stepId", "attempt", "failureClass", "detector", "wallClockSeconds", "attemptStrategy"]
        ),
        st.one_of(
            st.none(),
            st.text(),
            st.integers(),
            st.floats(allow_nan=True),
            st.sampled_from(["task.step.attempt.failed", "task.self_heal.recovered", "idle_timeout"]),
        ),
    )
)
def test_any_event_maps_to_contract_metrics_only(event: dict[str, object]) -> None:
    for metric in metrics_for_event(event):
        assert metric.name in METRIC_NAMES
        for style in TAG_STYLES:
            _parse(format_packet(metric, style), style)
