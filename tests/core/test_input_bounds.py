"""Issue 11, bounded input: job file limits before parsing, short error lines, capped control text,
terminal-safe rendering, budgets the scheduler can represent, ids that start with a letter or digit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.artifacts import check_safe_id
from celery_selfheal.cli.render import event_line, status_text
from celery_selfheal.core import jobfile
from celery_selfheal.core.budgets import MAX_SECONDS, validate_overrides
from celery_selfheal.core.input_limits import MAX_DEPTH, MAX_JOB_FILE_BYTES
from celery_selfheal.core.jobfile import parse_job
from celery_selfheal.core.text_bounds import MAX_REASON, one_line, terminal_safe
from celery_selfheal.errors import ConfigError, InputError

_JOB = '[job]\nobjective = "o"\nrepo = "r"\nref = "main"\nruntime = ["x"]\n[[steps]]\nid = "a"\ninstructions = "i"\n'


def test_a_deep_dotted_key_is_refused_before_the_parser_sees_it(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _JOB + "a" + ".a" * 100_000 + " = 1\n"  # 200 KB: tomllib would grow quadratically
    parsed: list[str] = []
    monkeypatch.setattr(jobfile.tomllib, "loads", lambda text, **kw: parsed.append(text))
    with pytest.raises(InputError, match="line 9: key nested too deeply") as info:
        parse_job(text, source="job.toml")
    assert parsed == []  # refused by the bounds check, never handed to the parser
    assert len(str(info.value)) < 300


def test_dotted_strings_in_multiline_values_are_not_keys() -> None:
    body = '"""\n' + "a." * 200 + "= not a key\n" + '"""'
    spec = parse_job(_JOB.replace('instructions = "i"', f"instructions = {body}"), source="job.toml")
    assert spec.steps[0].instructions.startswith("a.a.")


def test_a_huge_unknown_key_gives_a_short_line() -> None:
    key = "k" * 1_000_000
    with pytest.raises(InputError) as info:
        parse_job(_JOB.replace("[[steps]]", f"{key} = 1\n[[steps]]"), source="job.toml")
    assert len(str(info.value)) < 400 and "1000000 characters" in str(info.value)


def test_size_and_nesting_limits() -> None:
    with pytest.raises(InputError, match="too large"):
        parse_job(_JOB + "#" * MAX_JOB_FILE_BYTES, source="job.toml")
    nested = '{"job": ' + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "}"
    with pytest.raises(InputError, match="nested"):
        parse_job(nested, source="job.json")


def test_budgets_are_bounded_to_what_the_scheduler_represents() -> None:
    with pytest.raises(ConfigError, match="must be <="):
        validate_overrides({"queue_retry_backoff_seconds": 1e12}, where="job.selfheal")
    with pytest.raises(ConfigError, match="must be <="):
        validate_overrides({"step_max_attempts": 10**9}, where="job.selfheal")
    assert validate_overrides({"step_timeout_seconds": MAX_SECONDS}, where="x")


@pytest.mark.parametrize("bad", ["-rf", "--help", ".hidden", "_x", "..", "."])
def test_an_id_must_start_with_a_letter_or_digit(bad: str) -> None:
    with pytest.raises(ValueError, match="start with a letter or digit"):
        check_safe_id(bad, what="job id")
    with pytest.raises(InputError):
        parse_job(_JOB.replace('id = "a"', f'id = "{bad}"'), source="job.toml")


def test_control_text_is_one_bounded_line() -> None:
    forged = "ok\n12:00:00  job x SUCCEEDED\x1b[2K\x1b[1A" + "x" * 1_000_000
    line = one_line(forged)
    assert "\n" not in line and "\x1b" not in line and len(line) <= MAX_REASON + 3


@given(st.text())
def test_terminal_safe_output_has_no_control_characters(text: str) -> None:
    out = terminal_safe(text)
    assert all(c == "\n" or (ord(c) >= 0x20 and not 0x7f <= ord(c) <= 0x9f) for c in out)
    assert not any(c in out for c in "\u2028\u2029\u202e")


def test_rendered_events_and_status_cannot_forge_lines() -> None:
    event = {"event": "task.control.recovery.requested", "ts": None, "jobId": "j", "action": "pause",
             "reason": "why\n12:00:00  job j SUCCEEDED\x1b[31m"}
    line = event_line(event)
    assert "\n" not in line and "\x1b" not in line and "\\x1b" in line
    doc = {"jobId": "j", "status": "failed", "epoch": 0, "terminalReason": "x", "message": "m\x1b]0;t\x07",
           "steps": [], "audit": [{"at": "t", "actor": "a\nb", "action": "pause", "outcome": "ok", "reason": "r\r"}]}
    text = status_text(doc)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert len(text.splitlines()) == 3
