from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.budgets import (
    BUDGET_KEYS,
    ENV_VARS,
    STEP_KEYS,
    Budgets,
    budgets_from_dict,
    budgets_to_dict,
    env_overrides,
    resolve_budgets,
    validate_overrides,
)
from celery_selfheal.errors import ConfigError, InputError


def test_defaults_match_the_design():
    b = Budgets()
    assert (b.step_max_attempts, b.step_timeout_seconds, b.step_idle_timeout_seconds) == (3, 900.0, 300.0)
    assert (b.step_no_progress_limit, b.job_self_heal_max_resets, b.job_queue_max_retries) == (2, 1, 2)
    assert resolve_budgets() == b


def test_key_tables():
    assert set(BUDGET_KEYS) == set(ENV_VARS)
    assert set(BUDGET_KEYS) > STEP_KEYS
    assert ENV_VARS["step_max_attempts"] == "STEP_MAX_ATTEMPTS"
    assert ENV_VARS["kill_grace_seconds"] == "KILL_GRACE_SECONDS"
    assert "job_self_heal_max_resets" not in STEP_KEYS


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"step_max_atempts": 3}, "cfg.step_max_atempts: unknown key; expected one of:"),
        ({"step_max_attempts": 0}, "cfg.step_max_attempts: must be >= 1, got 0"),
        ({"step_max_attempts": True}, "cfg.step_max_attempts: must be an integer, got bool True"),
        ({"step_max_attempts": 2.5}, "cfg.step_max_attempts: must be an integer, got 2.5"),
        ({"step_max_attempts": "3"}, "cfg.step_max_attempts: must be an integer, got str '3'"),
        ({"step_no_progress_limit": 0}, "cfg.step_no_progress_limit: must be >= 1, got 0"),
        ({"job_self_heal_max_resets": -1}, "cfg.job_self_heal_max_resets: must be >= 0, got -1"),
        ({"job_queue_max_retries": -2}, "cfg.job_queue_max_retries: must be >= 0, got -2"),
        ({"step_timeout_seconds": 0}, "cfg.step_timeout_seconds: must be > 0, got 0"),
        ({"step_timeout_seconds": -1}, "cfg.step_timeout_seconds: must be > 0, got -1"),
        ({"step_idle_timeout_seconds": math.inf}, "cfg.step_idle_timeout_seconds: must be a finite number"),
        ({"step_idle_timeout_seconds": math.nan}, "cfg.step_idle_timeout_seconds: must be a finite number"),
        ({"step_timeout_seconds": None}, "cfg.step_timeout_seconds: must be a number, got NoneType None"),
        ({"soft_reset_backoff_seconds": -0.5}, "cfg.soft_reset_backoff_seconds: must be >= 0, got -0.5"),
        ({"kill_grace_seconds": -1.0}, "cfg.kill_grace_seconds: must be >= 0, got -1.0"),
    ],
)
def test_one_specific_message_per_mistake(values, message):
    with pytest.raises(ConfigError) as err:
        validate_overrides(values, where="cfg")
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.where == f"cfg.{next(iter(values))}"


def test_allowed_limits_keys():
    with pytest.raises(ConfigError, match=r"^step: job_queue_max_retries: not allowed here"):
        validate_overrides({"job_queue_max_retries": 1}, where="step", allowed=STEP_KEYS, sep=": ")


def test_canonical_types_and_zero_budgets():
    out = validate_overrides(
        {"step_timeout_seconds": 5, "job_self_heal_max_resets": 0, "job_queue_max_retries": 0}, where="x"
    )
    assert out == {"step_timeout_seconds": 5.0, "job_self_heal_max_resets": 0, "job_queue_max_retries": 0}
    assert type(out["step_timeout_seconds"]) is float
    assert type(out["job_self_heal_max_resets"]) is int


def test_env_overrides_parse_and_name_the_variable():
    env = {
        "STEP_MAX_ATTEMPTS": " 5 ",
        "STEP_IDLE_TIMEOUT_SECONDS": "1.5",
        "JOB_QUEUE_MAX_RETRIES": "",  # empty counts as unset
        "PATH": "/usr/bin",
    }
    assert env_overrides(env) == {"step_max_attempts": 5, "step_idle_timeout_seconds": 1.5}
    with pytest.raises(ConfigError, match=r"^env STEP_MAX_ATTEMPTS: must be an integer, got '3.5'$"):
        env_overrides({"STEP_MAX_ATTEMPTS": "3.5"})
    with pytest.raises(ConfigError, match=r"^env STEP_TIMEOUT_SECONDS: must be a number, got 'soon'$"):
        env_overrides({"STEP_TIMEOUT_SECONDS": "soon"})
    with pytest.raises(ConfigError, match=r"^env STEP_TIMEOUT_SECONDS: must be a finite number"):
        env_overrides({"STEP_TIMEOUT_SECONDS": "inf"})
    with pytest.raises(ConfigError, match=r"^env JOB_SELF_HEAL_MAX_RESETS: must be >= 0, got -1$"):
        env_overrides({"JOB_SELF_HEAL_MAX_RESETS": "-1"})


def test_layers_later_wins_and_errors_name_the_layer():
    b = resolve_budgets(
        ("config.toml [selfheal]", {"step_max_attempts": 4, "step_timeout_seconds": 100}),
        ("env", env_overrides({"STEP_MAX_ATTEMPTS": "5"})),
        ("job x.toml [job.selfheal]", {"step_idle_timeout_seconds": 7}),
        ("step 'build'", {"step_idle_timeout_seconds": 3}),
    )
    assert (b.step_max_attempts, b.step_timeout_seconds, b.step_idle_timeout_seconds) == (5, 100.0, 3.0)
    with pytest.raises(ConfigError, match=r"^step 'build'\.step_timeout_seconds: must be > 0, got -1$"):
        resolve_budgets(("config", {}), ("step 'build'", {"step_timeout_seconds": -1}))


def test_whole_result_is_validated():
    with pytest.raises(ConfigError, match=r"^env\.queue_retry_backoff_max_seconds: must be >= queue_retry"):
        resolve_budgets(
            ("config", {"queue_retry_backoff_seconds": 60}), ("env", {"queue_retry_backoff_max_seconds": 10})
        )
    with pytest.raises(ConfigError, match=r"^Budgets\.step_max_attempts: must be >= 1"):
        Budgets(step_max_attempts=0)


def test_errors_are_input_errors():
    assert issubclass(ConfigError, InputError)


def test_dict_round_trip():
    b = resolve_budgets(("x", {"step_max_attempts": 7, "kill_grace_seconds": 0.25}))
    assert budgets_from_dict(budgets_to_dict(b)) == b
    assert budgets_from_dict({}) == Budgets()
    with pytest.raises(ConfigError):
        budgets_from_dict({"bogus": 1})


_INT_KEYS = [k for k in BUDGET_KEYS if isinstance(getattr(Budgets(), k), int)]
_FLOAT_KEYS = [k for k in BUDGET_KEYS if k not in _INT_KEYS]
# (step_output_loop_limit: 1 is refused, 0 or >= 2 only)
_layer = st.dictionaries(st.sampled_from(BUDGET_KEYS), st.integers(1, 50)).map(
    lambda d: {k: (float(v) if k in _FLOAT_KEYS else v + (k == "step_output_loop_limit")) for k, v in d.items()}
)


@given(layers=st.lists(_layer, max_size=5))
def test_resolution_order_property(layers):
    """Every key ends with the value of the last layer that sets it, else the default."""
    layers = [
        {**layer, "queue_retry_backoff_max_seconds": 1000.0}
        if "queue_retry_backoff_max_seconds" in layer
        else layer
        for layer in layers
    ]
    # a layer that sets both timeouts keeps idle <= wall (the pair rule, tested below)
    layers = [{**layer, "step_idle_timeout_seconds": min(layer["step_idle_timeout_seconds"],
                                                         layer["step_timeout_seconds"])}
              if {"step_idle_timeout_seconds", "step_timeout_seconds"} <= set(layer) else layer
              for layer in layers]
    b = resolve_budgets(*((f"layer{i}", layer) for i, layer in enumerate(layers)))
    for key in BUDGET_KEYS:
        setters = [layer[key] for layer in layers if key in layer]
        assert getattr(b, key) == (setters[-1] if setters else getattr(Budgets(), key))


@given(
    key=st.sampled_from(BUDGET_KEYS),
    value=st.one_of(st.booleans(), st.text(), st.none(), st.integers(-100, -1)),
)
def test_bad_values_always_name_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        validate_overrides({key: value}, where="layer")
    assert str(err.value).startswith(f"layer.{key}: must be ")


def test_direct_construction_is_validated_and_canonical():
    b = Budgets(step_timeout_seconds=5, kill_grace_seconds=0)
    assert type(b.step_timeout_seconds) is float and type(b.kill_grace_seconds) is float
    with pytest.raises(ConfigError, match=r"^Budgets\.step_max_attempts: must be an integer, got 2\.0$"):
        Budgets(step_max_attempts=2.0)  # type: ignore[arg-type]


def test_output_loop_limit_key_env_and_bounds():
    assert Budgets().step_output_loop_limit == 8
    assert resolve_budgets(("env", env_overrides({"STEP_OUTPUT_LOOP_LIMIT": "0"}))).step_output_loop_limit == 0
    assert resolve_budgets(("job", {"step_output_loop_limit": 3})).step_output_loop_limit == 3
    with pytest.raises(ConfigError, match=r"^env STEP_OUTPUT_LOOP_LIMIT: must be 0 \(off\) or >= 2, got 1"):
        env_overrides({"STEP_OUTPUT_LOOP_LIMIT": "1"})
    with pytest.raises(ConfigError, match=r"step_output_loop_limit: must be >= 0"):
        resolve_budgets(("job", {"step_output_loop_limit": -1}))


_any_value = st.one_of(st.booleans(), st.integers(-2, 3), st.sampled_from([0.0, -0.0, 1.0, 2.5, math.nan]),
                       st.none(), st.text(max_size=2), st.lists(st.integers(), max_size=1))


def _outcome(layers):
    try:
        return budgets_to_dict(resolve_budgets(*layers)), None
    except ConfigError as exc:
        return None, str(exc)


@given(values=st.lists(st.tuples(st.sampled_from(BUDGET_KEYS), _any_value), max_size=6), repeat=st.integers(1, 3))
def test_remembered_resolutions_answer_as_a_first_one(values, repeat):
    """`resolve_budgets` remembers results by their layers: asked again (or with a value equal but of
    another type, ``True`` for ``1``, ``-0.0`` for ``0.0``) it answers exactly as when it computed."""
    from celery_selfheal.core import budgets as module

    layers = [("job", dict(values[: len(values) // 2])), ("step 's'", dict(values[len(values) // 2:]))]
    module._RESOLVED.clear()
    first = _outcome(layers)
    for _ in range(repeat):
        assert _outcome(layers) == first
        assert repr(_outcome(layers)) == repr(first)  # -0.0 stays -0.0
    module._RESOLVED.clear()
    assert _outcome(layers) == first


def test_a_value_equal_to_a_remembered_one_but_of_another_type_is_checked_again():
    assert resolve_budgets(("step", {"step_max_attempts": 1})).step_max_attempts == 1
    with pytest.raises(ConfigError, match="must be an integer"):
        resolve_budgets(("step", {"step_max_attempts": True}))
    with pytest.raises(ConfigError, match="must be an integer"):
        resolve_budgets(("step", {"step_max_attempts": 1.0}))
    assert str(budgets_to_dict(resolve_budgets(("s", {"kill_grace_seconds": 0.0})))["kill_grace_seconds"]) == "0.0"
    assert str(budgets_to_dict(resolve_budgets(("s", {"kill_grace_seconds": -0.0})))["kill_grace_seconds"]) == "-0.0"
