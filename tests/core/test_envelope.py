from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.envelope import (
    CONSTRAINTS,
    MAX_CHANGED_FILES,
    NO_PROGRESS_CONSTRAINT,
    build_envelope,
    render_envelope,
    summarize_failure,
)
from celery_selfheal.core.jobfile import StepSpec
from celery_selfheal.core.model import Detector, FailureClass, Strategy

STEP = StepSpec(id="build", index=1, title="Build it", instructions="Run make.", runtime=None, overrides={})


def redact(text: str) -> str:
    return text.replace("hunter2", "[REDACTED]")


def envelope(**kw):
    args: dict[str, Any] = {
        "objective": "Ship it",
        "step": STEP,
        "attempt": 2,
        "strategy": Strategy.SOFT_RESET,
        "failure_class": FailureClass.TRANSIENT_RUNTIME,
        "detector": Detector.IDLE_TIMEOUT,
        "failure_summary": "boom",
        "failure_signature": "ab" * 32,
        "changed_files": ["a.py", "b.py"],
        "diff_hash": "cd" * 32,
        "redact": redact,
    }
    args.update(kw)
    return build_envelope(**args)


@pytest.mark.parametrize(
    ("tail", "kw", "expected"),
    [
        ("one\ntwo\n", {}, "one\ntwo"),
        ("\n\nline\n\n\n", {}, "line"),
        ("\x1b[31mred\x1b[0m text", {}, "red text"),
        ("progress 10%\rprogress 100%\ndone", {}, "progress 100%\ndone"),
        ("a\x00b\x07c", {}, "abc"),
        ("1\n2\n3\n4\n5", {"max_lines": 2}, "[... 3 earlier lines omitted ...]\n4\n5"),
        ("x" * 50, {"max_chars": 40}, "x" * 40),  # no room for a marker: just the last characters
        ("", {}, ""),
    ],
)
def test_summarize_table(tail, kw, expected):
    assert summarize_failure(tail, **kw) == expected


def test_summarize_char_cap_keeps_a_marker_when_there_is_room():
    out = summarize_failure("y" * 5000, max_chars=200)
    assert out.startswith("[... output truncated to the last 200 characters ...]\n")
    assert out.endswith("y" * 100) and len(out) == 200


def test_summarize_rejects_nonsense_limits():
    with pytest.raises(ValueError):
        summarize_failure("x", max_lines=0)


@given(
    tail=st.text(max_size=3000),
    max_lines=st.integers(1, 60),
    max_chars=st.integers(1, 3000),
)
def test_summary_is_bounded_and_ends_with_the_output(tail, max_lines, max_chars):
    out = summarize_failure(tail, max_lines=max_lines, max_chars=max_chars)
    assert len(out) <= max_chars
    body_lines = [line for line in out.split("\n") if not line.startswith("[... ")]
    assert len(body_lines) <= max_lines + 1  # +1: a char cut can split the first kept line
    full = summarize_failure(tail, max_lines=10**6, max_chars=10**7)
    kept = out.split("\n", 1)[-1] if out.startswith("[... ") else out
    assert full.endswith(kept)


def test_envelope_has_exactly_the_contract_keys():
    env = envelope()
    assert set(env) == {
        "objective", "step", "failure", "constraints", "changedFiles", "changedFilesCount", "diffHash",
        "attempt", "strategy",
    }  # fmt: skip
    assert env["step"] == {"id": "build", "index": 1, "title": "Build it", "instructions": "Run make."}
    assert env["failure"] == {
        "summary": "boom",
        "signature": "ab" * 32,
        "class": "transient_runtime",
        "detector": "idle_timeout",
    }
    assert (env["attempt"], env["strategy"], env["diffHash"]) == (2, "soft_reset", "cd" * 32)
    assert env["constraints"] == list(CONSTRAINTS)
    assert json.loads(json.dumps(env)) == env


def test_every_free_text_is_redacted():
    step = StepSpec(
        id="s", index=0, title="t hunter2", instructions="use hunter2", runtime=None, overrides={}
    )
    env = envelope(
        objective="login with hunter2",
        step=step,
        failure_summary="password hunter2 rejected",
        changed_files=["hunter2.txt"],
    )
    text = json.dumps(env) + render_envelope(env)
    assert "hunter2" not in text
    assert text.count("[REDACTED]") == 10  # 5 strings, each in the JSON and in the rendering


def test_changed_files_are_capped_with_a_count():
    files = [f"f{i}.py" for i in range(120)]
    env = envelope(changed_files=files)
    assert env["changedFiles"] == files[:MAX_CHANGED_FILES]
    assert env["changedFilesCount"] == 120
    assert "(and 70 more)" in render_envelope(env)


def test_no_progress_adds_its_constraint():
    env = envelope(failure_class=FailureClass.STUCK_NO_PROGRESS, detector=Detector.NO_PROGRESS)
    assert env["constraints"] == [*CONSTRAINTS, NO_PROGRESS_CONSTRAINT]


def test_never_the_full_transcript():
    transcript = "\n".join(f"line {i} " + "z" * 100 for i in range(100_000))
    env = envelope(failure_summary=summarize_failure(transcript))
    assert len(json.dumps(env)) < 4000
    assert "line 99999" in env["failure"]["summary"] and "line 0 " not in env["failure"]["summary"]


def test_render_has_readable_sections_and_a_safe_fence():
    env = envelope(failure_summary="```\nnot the end\n````")
    text = render_envelope(env)
    for heading in (
        "# Retry of step 'build' (index 1): Build it",
        "## Objective",
        "## Step instructions",
        "## What went wrong last time",
        "## Changes already in the workspace",
        "## Constraints",
    ):
        assert heading in text  # fmt: skip
    assert "This is attempt 2, started by soft_reset." in text
    assert "- detected by: idle_timeout" in text and "- a.py" in text
    assert "`````\n```\nnot the end\n````\n`````" in text  # fence longer than any run inside
    assert all(f"- {c}" in text for c in CONSTRAINTS)
    assert "(no changed files)" in render_envelope(envelope(changed_files=[]))


def test_attempt_summary_says_what_the_detector_saw() -> None:
    from celery_selfheal.core.envelope import attempt_summary
    from celery_selfheal.core.model import Detector

    idle = attempt_summary(Detector.IDLE_TIMEOUT, "cloning\nwaiting for the lock\n", idle_seconds=300.2,
                           wall_seconds=312.5)
    first = idle.splitlines()[0]
    assert first == ("idle timeout: no output for 300 s after 12.3 s of run time; "
                     "last output: 'waiting for the lock'")
    assert idle.endswith("cloning\nwaiting for the lock")
    silent = attempt_summary(Detector.IDLE_TIMEOUT, "", idle_seconds=5.0, wall_seconds=5.0)
    assert silent == ("idle timeout: no output for 5 s after 0.0 s of run time; "
                      "last output: none (the runtime never printed anything)")
    loop = attempt_summary(Detector.OUTPUT_LOOP, "a\nb\n" * 50, note="output loop: ...\na\nb")
    assert loop == "output loop: ...\na\nb"
    assert attempt_summary(Detector.EXIT, "x\ny\n") == "x\ny"
