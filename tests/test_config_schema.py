"""config.toml and its env vars: every table typed and validated, one line naming file, table and key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core import config_schema as schema
from celery_selfheal.core.budgets import MAX_SECONDS, resolve_budgets
from celery_selfheal.errors import ConfigError
from celery_selfheal.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, text: str, **env: str):
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    return load_settings(config_path=cfg, env={"SELFHEAL_STATE_DIR": str(tmp_path / "s"), **env})


def test_the_shipped_config_is_valid_and_names_every_table():
    settings = load_settings(config_path=ROOT / "config.toml", env={})
    text = (ROOT / "config.toml").read_text()
    for table in schema.KNOWN_TABLES:
        assert f"[{table}]" in text
    assert settings.budget_config["step_max_attempts"] == 3


@pytest.mark.parametrize(("text", "message"), [
    ("[worker]\nlease_ttl = 3\n", r"\[worker\] lease_ttl: unknown key"),
    ("[worker]\nlease_ttl_seconds = '3'\n", r"\[worker\] lease_ttl_seconds: must be a number, got str '3'"),
    ("[worker]\nlease_ttl_seconds = -1\n", r"\[worker\] lease_ttl_seconds: must be >= 0.5, got -1"),
    ("[statsd]\nport = 70000\n", r"\[statsd\] port: must be <= 65535"),
    ("[statsd]\nport = true\n", r"\[statsd\] port: must be an integer, got bool True"),
    ("[statsd]\ntag_style = 'x'\n", r"\[statsd\] tag_style: must be one of dogstatsd, telegraf, none"),
    ("[statsd]\nenabled = 1\n", r"\[statsd\] enabled: must be true or false"),
    ("[redaction]\nextra_patterns = ['(unclosed']\n", r"\[redaction\] extra_patterns: regex '\(unclosed' does not "
                                                      "compile"),
    ("[redaction]\nextra_patterns = ['a*']\n", r"extra_patterns: regex 'a\*' matches the empty string"),
    ("[redaction]\nallowlist = 'x'\n", r"\[redaction\] allowlist: must be a list of strings"),
    ("[retention]\nsucceeded_workspace_max_age = '7 days'\n", r"\[retention\] succeeded_workspace_max_age: must be "
                                                              "a duration"),
    ("[web]\nport = 0\n", r"\[web\] port: must be >= 1"),
    ("[web]\nbogus = 0\n", r"\[web\] bogus: unknown key"),
    ("[state]\nstore_url = 5\n", r"\[state\] store_url: must be a string"),
    ("[selfheal]\nqueue_retry_backoff_seconds = 1e12\n", r"\[selfheal\] queue_retry_backoff_seconds: must be <="),
    ("[selfheal]\nstep_timeout_seconds = 10\nstep_idle_timeout_seconds = 20\n",
     r"\[selfheal\] step_idle_timeout_seconds: must be <= step_timeout_seconds \(10\)"),
    ("[nope]\n", r"unknown table \[nope\]"),
])
def test_bad_config_is_one_line_naming_file_table_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(tmp_path / "config.toml"))
    assert re.search(message, line), line


@pytest.mark.parametrize(("env", "message"), [
    ({"STATSD_PORT": "abc"}, "env STATSD_PORT: must be an integer, got 'abc'"),
    ({"STATSD_TAG_STYLE": "loud"}, "env STATSD_TAG_STYLE: must be one of"),
    ({"SELFHEAL_LEASE_TTL_SECONDS": "abc"}, "env SELFHEAL_LEASE_TTL_SECONDS: must be a number, got 'abc'"),
    ({"SELFHEAL_LEASE_TTL_SECONDS": "-1"}, "env SELFHEAL_LEASE_TTL_SECONDS: must be >= 0.5"),
    ({"SELFHEAL_SWEEP_INTERVAL_SECONDS": "nan"}, "env SELFHEAL_SWEEP_INTERVAL_SECONDS: must be a finite number"),
    ({"STEP_TIMEOUT_SECONDS": "1e12"}, "env STEP_TIMEOUT_SECONDS: must be <="),
    ({"STEP_TIMEOUT_SECONDS": "5", "STEP_IDLE_TIMEOUT_SECONDS": "9"}, "env STEP_IDLE_TIMEOUT_SECONDS: must be <="),
])
def test_bad_env_is_one_line_naming_the_variable(tmp_path, env, message):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "", **env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_good_values_come_back_canonical(tmp_path):
    s = load(tmp_path, "[worker]\nlease_ttl_seconds = 3\n[retention]\nsucceeded_workspace_max_age = '12h'\n"
                       "[web]\nport = 9000\n[redaction]\nextra_keys = ['session']\n")
    assert s.worker == {"lease_ttl_seconds": 3.0} and type(s.worker["lease_ttl_seconds"]) is float
    assert s.retention == {"succeeded_workspace_max_age": 43200.0}
    assert s.web == {"port": 9000} and s.redaction == {"extra_keys": ("session",)}


def test_redaction_keys_are_the_redactor_config_fields(tmp_path):
    import dataclasses

    from celery_selfheal.context import redaction_config
    from celery_selfheal.core.redact import RedactionConfig

    assert set(schema.TABLES["redaction"]) == {f.name for f in dataclasses.fields(RedactionConfig)}
    s = load(tmp_path, "[redaction]\nextra_patterns = ['internal-[0-9a-f]{8}']\nallowlist = ['pub']\n")
    config = redaction_config(s)
    assert config.extra_patterns == ("internal-[0-9a-f]{8}",) and config.allowlist == ("pub",)


def test_a_short_step_timeout_under_the_default_idle_timeout_is_fine():
    # only a layer that sets both is checked: a later layer may shorten the wall timeout alone
    b = resolve_budgets(("job", {"step_idle_timeout_seconds": 60}), ("step", {"step_timeout_seconds": 1}))
    assert (b.step_idle_timeout_seconds, b.step_timeout_seconds) == (60.0, 1.0)


# ---- property tests of the parsers ------------------------------------------------------------

@given(n=st.integers(0, 3650), unit=st.sampled_from("smhd"))
def test_durations_parse_to_seconds(n, unit):
    seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds <= MAX_SECONDS:
        assert schema.parse_duration(f"{n}{unit}") == seconds
    else:
        with pytest.raises(ValueError):
            schema.parse_duration(f"{n}{unit}")


@given(text=st.text(max_size=12))
def test_a_duration_is_digits_and_one_unit_or_an_error(text):
    try:
        value = schema.parse_duration(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert re.fullmatch(r"\s*\d+[smhd]\s*", text) and 0 <= value <= MAX_SECONDS


_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.text(max_size=4), max_size=3))


@given(table=st.sampled_from(sorted(schema.TABLES)), data=st.data())
def test_validate_table_accepts_exactly_what_each_key_allows(table, data):
    name = data.draw(st.sampled_from(sorted(schema.TABLES[table])))
    value = data.draw(_values)
    try:
        out = schema.validate_table(table, {name: value}, where="f.toml")
    except ConfigError as exc:
        assert str(exc).startswith(f"f.toml: [{table}] {name}: ") and "\n" not in str(exc)
    else:
        # a value that passes is canonical: validating it again gives the same (a duration becomes seconds)
        if schema.TABLES[table][name].kind == "duration":
            assert isinstance(out[name], float) and 0 <= out[name] <= MAX_SECONDS
        else:
            assert schema.validate_table(table, out, where="f.toml") == out


@given(raw=st.text(max_size=10), var=st.sampled_from([k.env for t in schema.TABLES.values()
                                                       for k in t.values() if k.env]))
def test_env_values_parse_or_fail_naming_the_variable(raw, var):
    try:
        schema.validate_env({var: raw})
    except ConfigError as exc:
        assert str(exc).startswith(f"env {var}: ") and "\n" not in str(exc)


@given(keys=st.dictionaries(st.text(min_size=1, max_size=8), st.integers(), min_size=1, max_size=3))
def test_unknown_keys_are_rejected_with_their_name(keys):
    unknown = {k: v for k, v in keys.items() if k not in schema.TABLES["web"]}
    if not unknown:
        return
    with pytest.raises(ConfigError, match="unknown key"):
        schema.validate_table("web", unknown, where="c.toml")


# ---- real processes refuse to start -----------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "celery", "-A", "celery_selfheal.app", "worker", "--pool", "prefork", "-c", "1"],
    [sys.executable, "-m", "celery_selfheal.cli.main", "worker"],
])
def test_a_worker_refuses_a_bad_config_with_one_line(tmp_path, argv):
    (tmp_path / "config.toml").write_text("[worker]\nlease_ttl_seconds = 'soon'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "STATSD_"))}
    env["SELFHEAL_STATE_DIR"] = str(tmp_path / "state")
    if argv[2] == "celery_selfheal.cli.main":
        argv = [sys.executable, "-c", "from celery_selfheal.cli.main import main; main()", "worker"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines == ["selfheal: error: config.toml: [worker] lease_ttl_seconds: must be a number, got str 'soon'"]
    assert not (tmp_path / "state" / "broker").exists()  # it took nothing: no broker folders made
