"""Cluster options (attempt leases, the lost-worker sweeper, Redis visibility) and start-up checks.

Options come from env, then ``config.toml`` ``[worker]``, then defaults:

==================================  ===============================  =======  ==========================
env                                 ``[worker]`` key                 default  meaning
==================================  ===============================  =======  ==========================
``SELFHEAL_LEASE_TTL_SECONDS``      ``lease_ttl_seconds``            8        attempt lease time to live
``SELFHEAL_SWEEP_INTERVAL_SECONDS`` ``sweep_interval_seconds``       1        how often workers look for
                                                                              expired leases
``SELFHEAL_VISIBILITY_TIMEOUT``     ``visibility_timeout_seconds``   (none)   Redis ``visibility_timeout``
                                                                              (Celery's 3600 s if unset)
``SELFHEAL_CONSUMER_TIMEOUT``       ``consumer_timeout_seconds``     1800     the RabbitMQ server's
                                                                              ``consumer_timeout``
==================================  ===============================  =======  ==========================

A dead worker's attempt is picked up by another worker within ``ttl + sweep_interval`` (9 s by
default) plus the time to rebuild its workspace. A lease is renewed every second (one small script
call: 100 running attempts cost 100 store calls a second) and an attempt fences itself after
``ttl - kill_grace - 1`` seconds without a successful renewal (2 s by default; at most ``2/3`` of
the TTL), so that its runtime is dead before the lease can expire and another worker start the step.
`startup_warnings` is pure: it compares numbers and returns messages; the worker logs them (see
``docs/cluster.md`` for why each one matters).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery_selfheal.core.budgets import Budgets
from celery_selfheal.errors import ConfigError

DEFAULT_LEASE_TTL = 8.0
DEFAULT_SWEEP_INTERVAL = 1.0
#: longest pause between two lease renewals (shorter when a third of the TTL is shorter)
RENEW_MAX = 1.0
#: time kept between a fenced attempt's runtime being dead and its lease running out
KILL_MARGIN = 1.0
#: Redis transport default (kombu) when ``visibility_timeout`` is not set
CELERY_VISIBILITY_TIMEOUT = 3600.0
#: RabbitMQ's default ``consumer_timeout`` (30 min since 3.8.17) when ``consumer_timeout_seconds`` is unset
RABBITMQ_CONSUMER_TIMEOUT = 1800.0
#: soft-reset backoff cap of the strategy controller (core.strategy.SOFT_RESET_BACKOFF_MAX)
SOFT_RESET_COUNTDOWN_MAX = 60.0

_KEYS = {
    "lease_ttl_seconds": "SELFHEAL_LEASE_TTL_SECONDS",
    "sweep_interval_seconds": "SELFHEAL_SWEEP_INTERVAL_SECONDS",
    "visibility_timeout_seconds": "SELFHEAL_VISIBILITY_TIMEOUT",
    "consumer_timeout_seconds": "SELFHEAL_CONSUMER_TIMEOUT",
}


@dataclass(frozen=True)
class ClusterOptions:
    """How workers guard running attempts and find the ones whose worker died."""

    #: seconds an attempt lease lives without renewal; renewed every `renew_every`
    lease_ttl: float = DEFAULT_LEASE_TTL
    #: seconds between two looks at expired leases (per worker)
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    #: Redis ``visibility_timeout`` to set on the app (None: keep the app's or Celery's default)
    visibility_timeout: float | None = None
    #: the RabbitMQ server's ``consumer_timeout``: longer steps are acknowledged when they start
    consumer_timeout: float = RABBITMQ_CONSUMER_TIMEOUT

    @property
    def renew_every(self) -> float:
        """Renewal period: every second (at least three tries before the lease could run out)."""
        return min(self.lease_ttl / 3, RENEW_MAX)

    def fence_after(self, kill_grace: float) -> float:
        """Seconds without a successful renewal after which an attempt stops trusting its lease:
        its runtime, TERMed then KILLed after ``kill_grace``, is gone `KILL_MARGIN` before the lease
        can expire; never more than 2/3 of the TTL, never less than two renewals (then
        `startup_warnings` says the guarantee does not hold)."""
        return max(min(self.lease_ttl * 2 / 3, self.lease_ttl - kill_grace - KILL_MARGIN), 2 * self.renew_every)

    @property
    def pending_grace(self) -> float:
        """How long a retry pinned to one worker's queue may wait before others take it over."""
        return 2 * self.lease_ttl

    @property
    def busy_wait(self) -> float:
        """How long a task polls a busy lease before it re-queues itself."""
        return min(2.0, self.lease_ttl / 2)

    @property
    def worst_case_pickup(self) -> float:
        """Upper bound from a worker's death to its attempt being recorded and re-sent."""
        return self.lease_ttl + self.sweep_interval


def _number(raw: Any, where: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"must be a number, got {raw!r}", where=where) from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"must be a positive number, got {raw!r}", where=where)
    return value


def cluster_options(worker_table: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ClusterOptions:
    """Options from env, then the ``[worker]`` table, then defaults; `ConfigError` names the key."""
    env = os.environ if env is None else env
    found: dict[str, float] = {}
    for key, env_name in _KEYS.items():
        if env.get(env_name):
            found[key] = _number(env[env_name], env_name)
        elif worker_table.get(key) is not None:
            found[key] = _number(worker_table[key], f"config: worker.{key}")
    opts = ClusterOptions(lease_ttl=found.get("lease_ttl_seconds", DEFAULT_LEASE_TTL),
                          sweep_interval=found.get("sweep_interval_seconds", DEFAULT_SWEEP_INTERVAL),
                          visibility_timeout=found.get("visibility_timeout_seconds"),
                          consumer_timeout=found.get("consumer_timeout_seconds", RABBITMQ_CONSUMER_TIMEOUT))
    if opts.lease_ttl < 0.5:
        raise ConfigError(f"must be at least 0.5, got {opts.lease_ttl:g}", where="lease_ttl_seconds")
    return opts


def is_redis_url(url: str) -> bool:
    """True for the URLs of the Redis broker/store."""
    return url.startswith(("redis://", "rediss://", "unix://", "sentinel://"))


def is_amqp_url(url: str) -> bool:
    """True for RabbitMQ (AMQP) broker URLs."""
    return url.startswith(("amqp://", "amqps://", "pyamqp://", "librabbitmq://"))


def acks_at_start(broker_url: str, hard_limit: float | None, opts: ClusterOptions) -> bool:
    """Whether a step message is acknowledged when its attempt starts rather than when it ends.

    RabbitMQ closes the channel of a consumer holding an unacknowledged delivery longer than its
    ``consumer_timeout`` (and Celery's worker stops on that error), so a step whose hard limit is not
    well below it is acknowledged at once; its attempt lease then guards it: a lost worker's lease
    expires and the sweeper re-sends the step (`wiring.recovery`). Shorter steps keep ``acks_late``."""
    if not is_amqp_url(broker_url):
        return False
    # a margin for the server's check period and the time between delivery and start
    return hard_limit is None or hard_limit >= opts.consumer_timeout - min(60.0, opts.consumer_timeout / 10)


def configure_app(conf: Any, broker_url: str, opts: ClusterOptions) -> None:
    """Prepare a Redis worker app: our Redis transport (`celery_selfheal.cluster.redis_transport`) unless the app
    names one, and ``visibility_timeout`` if configured and not already set.

    kombu scans for unacked messages past their visibility timeout only every
    ``unacked_restore_interval * unacked_restore_throttle`` seconds (100 s by default), so a
    configured timeout also gets a scan period of a sixth of it (1..10 s)."""
    if not is_redis_url(broker_url):
        return
    if broker_url.startswith("redis://") and not conf.broker_transport:
        from celery_selfheal.cluster.redis_transport import TRANSPORT

        conf.broker_transport = TRANSPORT
    if opts.visibility_timeout is None:
        return
    options = dict(conf.broker_transport_options or {})
    options.setdefault("visibility_timeout", opts.visibility_timeout)
    options.setdefault("unacked_restore_interval", max(1, min(10, int(opts.visibility_timeout // 6))))
    options.setdefault("unacked_restore_throttle", 1)
    conf.broker_transport_options = options


def effective_visibility_timeout(transport_options: Mapping[str, Any] | None) -> float:
    """The visibility timeout a Redis worker really uses."""
    return float((transport_options or {}).get("visibility_timeout", CELERY_VISIBILITY_TIMEOUT))


def startup_warnings(*, broker_url: str, store_url: str, transport_options: Mapping[str, Any] | None,
                     acks_on_failure_or_timeout: bool, budgets: Budgets, opts: ClusterOptions) -> list[str]:
    """What is unsafe in this worker's configuration for cluster mode (empty when all is well).

    ``budgets`` are the worker's default budgets (config.toml and env); jobs may override them, and
    the gate fences a redelivered message either way, but a message redelivered while its attempt
    still runs is wasted work and hides a misconfiguration.
    """
    out: list[str] = []
    if opts.sweep_interval >= opts.lease_ttl:
        out.append(f"sweep interval {opts.sweep_interval:g}s is not below the lease TTL {opts.lease_ttl:g}s: "
                   "lost attempts are found late")
    if opts.lease_ttl - budgets.kill_grace_seconds - KILL_MARGIN < 2 * opts.renew_every:
        out.append(f"kill grace {budgets.kill_grace_seconds:g}s leaves less than two renewals of the lease TTL "
                   f"({opts.lease_ttl:g}s): a worker cut off from the store may still be killing its "
                   "runtime when another worker takes the step over")
    if not acks_on_failure_or_timeout:
        out.append("task_acks_on_failure_or_timeout is off: with acks_late a step killed by the hard time "
                   "limit is redelivered forever")
    if is_amqp_url(broker_url):
        return out + _amqp_warnings(budgets, opts)
    if not is_redis_url(broker_url):
        return out
    if not is_redis_url(store_url):
        out.append(f"broker is Redis but the store is {store_url.split(':', 1)[0]}: workers on other hosts "
                   "cannot see this worker's jobs, leases or checkpoints")
    visibility = effective_visibility_timeout(transport_options)
    from celery_selfheal.steps.outcome import time_limits

    _, hard = time_limits(budgets)
    if hard >= visibility:
        out.append(f"hard time limit {hard:g}s (step_timeout_seconds + grace) is not below the Redis "
                   f"visibility_timeout {visibility:g}s: a long step's message is redelivered while it runs "
                   "(set SELFHEAL_VISIBILITY_TIMEOUT or broker_transport_options)")
    countdown = max(budgets.queue_retry_backoff_max_seconds, SOFT_RESET_COUNTDOWN_MAX)
    if countdown >= visibility:
        out.append(f"retry countdowns up to {countdown:g}s are not below the Redis visibility_timeout "
                   f"{visibility:g}s: a waiting retry is redelivered to a second worker")
    return out


def _amqp_warnings(budgets: Budgets, opts: ClusterOptions) -> list[str]:
    from celery_selfheal.steps.outcome import time_limits

    out: list[str] = []
    _, hard = time_limits(budgets)
    where = "[worker] consumer_timeout_seconds / SELFHEAL_CONSUMER_TIMEOUT"
    if acks_at_start("amqp://", hard, opts):
        out.append(f"hard time limit {hard:g}s (step_timeout_seconds + grace) is not well below the RabbitMQ "
                   f"consumer_timeout {opts.consumer_timeout:g}s ({where}; set it to the server's value): such "
                   "steps are acknowledged when they start, and a worker lost mid-step is recovered through "
                   "its lease rather than by redelivery")
    countdown = max(budgets.queue_retry_backoff_max_seconds, SOFT_RESET_COUNTDOWN_MAX)
    if countdown >= opts.consumer_timeout:
        out.append(f"retry countdowns up to {countdown:g}s are not below the RabbitMQ consumer_timeout "
                   f"{opts.consumer_timeout:g}s ({where}): a worker holding a waiting retry loses its channel")
    return out
