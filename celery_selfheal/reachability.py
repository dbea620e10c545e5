"""Is the broker / the state store there? One clear line within seconds, before a command does work.

The engine itself rides out outages (the Redis store retries for ~15 s, Celery retries publishing and
reconnects workers); a command typed by a person should instead say at once which service it cannot
reach. Both checks use the clients' own connection settings: kombu's ``ensure_connection`` with a
``connect_timeout`` and no retries for the broker, a redis-py client with ``socket_connect_timeout``
and no retry for a Redis store.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from celery_selfheal.errors import ConfigError, SelfHealError

#: seconds one check may take (DESIGN: an unreachable service is one line within 5 s)
CHECK_TIMEOUT = 3.0


class ServiceUnavailable(SelfHealError):
    """A broker or store that cannot be reached; the message names it (URL without password)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip("'\"")


def check_broker(app: Any, *, shown: Callable[[str], str] = str, where: str = "broker URL",
                 timeout: float = CHECK_TIMEOUT) -> None:
    """Connect to ``app``'s broker once; `ConfigError` for an unknown transport, `ServiceUnavailable`
    when it does not answer within ``timeout`` seconds."""
    url = str(app.conf.broker_url or "")
    try:
        conn = app.connection_for_write(connect_timeout=timeout)
        conn.transport  # noqa: B018 - resolves the transport class: an unknown scheme fails here
    except (KeyError, ImportError, ValueError) as exc:
        raise ConfigError(f"unsupported broker {shown(url)!r}: {_first_line(exc)}", where=where) from None
    try:
        conn.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as exc:  # kombu raises OperationalError, but transports differ: any failure is "down"
        raise ServiceUnavailable(f"broker {shown(url)} unreachable: {_first_line(exc)}") from None
    finally:
        conn.release()


def check_store(store: Any, *, shown: Callable[[str], str] = str, timeout: float = CHECK_TIMEOUT) -> None:
    """Ping a Redis store once without the store's own retries; SQLite needs no server."""
    redis_store = sys.modules.get("celery_selfheal.store.redis")  # loaded once a RedisStore exists
    if redis_store is None or not isinstance(store, redis_store.RedisStore):
        return  # no server to ask, and no redis-py import for it (a tenth of a CLI call)
    import redis

    client = redis.Redis.from_url(store._client_url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                  retry=None)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise ServiceUnavailable(f"state store {shown(store.url)} unreachable: {_first_line(exc)}") from None
    finally:
        client.close()
