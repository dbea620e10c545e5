"""RabbitMQ configuration checks (pure): when a step is acknowledged at start, the start-up warnings
naming ``consumer_timeout``, and the store URL a RabbitMQ broker needs."""

from __future__ import annotations

import pytest

from celery_selfheal.cluster.checks import ClusterOptions, acks_at_start, cluster_options, startup_warnings
from celery_selfheal.core.budgets import Budgets
from celery_selfheal.errors import ConfigError
from celery_selfheal.settings import load_settings


@pytest.mark.parametrize(("url", "hard", "timeout", "early"), [
    ("amqp://h//", 935.0, 1800.0, False),      # default budgets under RabbitMQ's default: acks_late
    ("amqp://h//", 1750.0, 1800.0, True),      # within the margin (60 s) of the server's timeout
    ("pyamqp://h//", 40.0, 4.0, True),
    ("amqp://h//", None, 1800.0, True),        # no hard limit at all: could run for ever
    ("redis://h/0", 5000.0, 1800.0, False),    # Redis has a visibility timeout instead
    ("filesystem://", 5000.0, 1800.0, False),
])
def test_long_steps_on_rabbitmq_are_acknowledged_at_start(url, hard, timeout, early):
    assert acks_at_start(url, hard, ClusterOptions(consumer_timeout=timeout)) is early


def warnings(**kw):
    base = {"broker_url": "amqp://h//", "store_url": "redis://h/0", "transport_options": None,
            "acks_on_failure_or_timeout": True, "budgets": Budgets(), "opts": ClusterOptions()}
    return startup_warnings(**{**base, **kw})


def test_startup_warnings_name_the_consumer_timeout_setting():
    assert warnings() == []
    (long_steps,) = warnings(budgets=Budgets(step_timeout_seconds=1790))
    assert "RabbitMQ consumer_timeout 1800s" in long_steps and "SELFHEAL_CONSUMER_TIMEOUT" in long_steps
    short = warnings(opts=ClusterOptions(consumer_timeout=300))
    assert len(short) == 2 and "retry countdowns up to 600s" in short[1]


def test_consumer_timeout_comes_from_env_or_worker_table():
    assert cluster_options({}, env={}).consumer_timeout == 1800
    assert cluster_options({"consumer_timeout_seconds": 60}, env={}).consumer_timeout == 60
    env = {"SELFHEAL_CONSUMER_TIMEOUT": "7"}
    assert cluster_options({"consumer_timeout_seconds": 60}, env=env).consumer_timeout == 7


def test_a_rabbitmq_broker_needs_an_explicit_store(tmp_path):
    with pytest.raises(ConfigError, match=r"^SELFHEAL_BROKER_URL / \[state\] broker_url: a store URL is required"):
        load_settings(state_dir=tmp_path, env={"SELFHEAL_BROKER_URL": "amqp://guest@h//"})
    s = load_settings(state_dir=tmp_path, env={"SELFHEAL_BROKER_URL": "amqp://guest@h//",
                                               "SELFHEAL_STORE_URL": "redis://h:1/0"})
    assert s.store_url == "redis://h:1/0"
