"""StatsD sink: the contract's metrics over UDP with the ``statsd`` package (REQ-11).

A StatsD host that is down or unresolvable must cost a job nothing. UDP sends never wait for the
peer, so "down" is free; name resolution is not (``getaddrinfo`` can block for seconds), so it
happens in a daemon thread, at most once per ``resolve_interval`` seconds. Until it succeeds,
metrics wait in a small bounded buffer (oldest dropped) and are flushed once the address is
known. ``handle`` never raises.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from statsd import StatsClient

from celery_selfheal.core.metrics_map import (
    TAG_STYLES,
    Metric,
    format_metric_name,
    format_tag_suffix,
    format_value,
    metrics_for_event,
    sanitize_prefix,
)

logger = logging.getLogger(__name__)


class TaggedStatsClient(StatsClient):
    """A :class:`statsd.StatsClient` that renders tags in one style (dogstatsd, telegraf, none).

    The ``statsd`` package has no tags. Telegraf and folded tags live in the stat name, so the
    package's own ``incr``/``timing`` do the rest; DogStatsD tags follow the type (``1|c|#k:v``),
    so :meth:`send_metric` appends them to the value string before the package adds the prefix.
    The constructor resolves ``host`` (blocking): build it off the caller's thread.
    """

    def __init__(
        self, host: str, port: int, prefix: str = "", tag_style: str = "dogstatsd", ipv6: bool = False
    ) -> None:
        super().__init__(host, port, prefix=sanitize_prefix(prefix) or None, ipv6=ipv6)
        self.tag_style = tag_style

    def send_metric(self, metric: Metric) -> None:
        """Send one metric (rate 1: these counters are rare and must all count)."""
        stat = format_metric_name(metric.name, metric.tags, self.tag_style)
        suffix = format_tag_suffix(metric.tags, self.tag_style)
        self._send_stat(stat, format_value(metric) + suffix, 1)


def _ip_literal_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


class StatsdSink:
    """Event sink sending the contract's StatsD metrics (see :mod:`celery_selfheal.core.metrics_map`)."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8125,
        prefix: str = "",
        tag_style: str = "dogstatsd",
        *,
        resolve_interval: float = 30.0,
        max_pending: int = 1000,
    ) -> None:
        if tag_style not in TAG_STYLES:
            raise ValueError(f"STATSD_TAG_STYLE must be one of {', '.join(TAG_STYLES)}; got {tag_style!r}")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"STATSD_PORT must be an integer in 1..65535; got {port!r}")
        self.host = host or "localhost"
        self.port = port
        self.prefix = prefix
        self.tag_style = tag_style
        self.resolve_interval = resolve_interval
        self._max_pending = max_pending
        self._client: TaggedStatsClient | None = None
        self._closed = False
        self._init_process_state()
        version = _ip_literal_version(self.host)
        if version is not None:
            # An IP literal needs no lookup: getaddrinfo returns at once, so connect inline.
            self._client = self._make_client(ipv6=version == 6)
        else:
            self._start_resolver()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> StatsdSink:
        """Build a sink from ``STATSD_HOST``, ``STATSD_PORT``, ``STATSD_PREFIX``, ``STATSD_TAG_STYLE``.

        ``env`` defaults to :data:`os.environ`; keyword ``overrides`` win over the environment.
        Invalid values raise :class:`ValueError` naming the variable.
        """
        env = os.environ if env is None else env
        kwargs: dict[str, Any] = {}
        if env.get("STATSD_HOST"):
            kwargs["host"] = env["STATSD_HOST"]
        if env.get("STATSD_PORT"):
            try:
                kwargs["port"] = int(env["STATSD_PORT"])
            except ValueError:
                raise ValueError(f"STATSD_PORT must be an integer; got {env['STATSD_PORT']!r}") from None
        if "STATSD_PREFIX" in env:
            kwargs["prefix"] = env["STATSD_PREFIX"]
        if env.get("STATSD_TAG_STYLE"):
            kwargs["tag_style"] = env["STATSD_TAG_STYLE"].strip().lower()
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def resolved(self) -> bool:
        """True once the StatsD address is known and metrics go out directly."""
        return self._client is not None

    def handle(self, event: dict[str, Any]) -> None:
        """Send the metrics of one event; never blocks on the network, never raises."""
        try:
            metrics = metrics_for_event(event)
            if not metrics or self._closed:
                return
            if self._pid != os.getpid():
                # Forked (prefork pool child): the resolver thread and the lock did not come along.
                self._init_process_state()
            client = self._client
            if client is None:
                with self._lock:
                    client = self._client
                    if client is None:
                        self._pending.extend(metrics)
                        self._start_resolver()
                        return
            for metric in metrics:
                client.send_metric(metric)
        except Exception:  # a metrics problem must never reach the job
            logger.debug("statsd sink dropped an event", exc_info=True)

    def close(self) -> None:
        """Close the UDP socket (metrics sent afterwards are dropped)."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- internals --------------------------------------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pending: deque[Metric] = deque(maxlen=self._max_pending)
        self._resolver: threading.Thread | None = None
        self._last_resolve = -math.inf
        self._warned = False

    def _make_client(self, ipv6: bool = False) -> TaggedStatsClient:
        return TaggedStatsClient(self.host, self.port, self.prefix, self.tag_style, ipv6=ipv6)

    def _start_resolver(self) -> None:
        """Start one resolver thread unless one runs or the last try was < resolve_interval ago."""
        now = time.monotonic()
        if self._closed:
            return
        if self._resolver is not None and self._resolver.is_alive():
            return
        if now - self._last_resolve < self.resolve_interval:
            return
        self._last_resolve = now
        self._resolver = threading.Thread(target=self._resolve, name="selfheal-statsd-resolve", daemon=True)
        self._resolver.start()

    def _resolve(self) -> None:
        try:
            client = self._make_client()
        except (OSError, UnicodeError) as exc:  # gaierror is an OSError; bad IDNA a UnicodeError
            if not self._warned:
                self._warned = True
                logger.warning(
                    "StatsD host %s:%s cannot be resolved (%s); metrics are dropped, retrying every %ss",
                    self.host,
                    self.port,
                    exc,
                    self.resolve_interval,
                )
            return
        with self._lock:
            if self._closed:
                client.close()
                return
            self._client = client
            backlog = list(self._pending)
            self._pending.clear()
        for metric in backlog:
            client.send_metric(metric)
