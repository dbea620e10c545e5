"""Local registration of the Redis fixtures (until the top-level conftest registers
``tests.redis_server`` through ``pytest_plugins``; then delete this file)."""

from tests.redis_server import redis_server, redis_server_factory, redis_url  # noqa: F401
