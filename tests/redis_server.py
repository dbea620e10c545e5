"""pytest fixtures that run a real ``redis-server`` on a free loopback port (no mocks of Redis).

Register with ``pytest_plugins = ["tests.redis_server"]`` in the top-level conftest. Fixtures:

- ``redis_server`` (session): one server, no persistence, shared by the session;
- ``redis_url`` (function): that server's URL with db 0 flushed first, so each test starts empty;
- ``redis_server_factory`` (function): ``factory(**config)`` starts an extra server with redis.conf
  settings as keywords (``appendonly="yes"``); stopped when the test ends. ``.restart()`` keeps the
  port and the data directory, for restart-with-persistence tests.

When ``redis-server`` is not on PATH the tests that need it are skipped locally, but fail when the
``CI`` environment variable is set to a true value: CI must not pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

#: seconds to wait for a started server to answer PING
START_TIMEOUT = 10.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not on PATH (apt install redis-server)"
        if _in_ci():
            pytest.fail(message + "; CI must run the Redis tests", pytrace=False)
        pytest.skip(message)
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1 with its own data directory."""

    def __init__(self, binary: str, directory: Path, **config: str) -> None:
        self.binary = binary
        self.dir = directory
        self.config = {"save": "", "appendonly": "no", **config}
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def client(self) -> redis.Redis:
        """A plain client of db 0 (decoded responses)."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--logfile", str(self.log), "--daemonize", "no"]
        for key, value in self.config.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        with self.client() as probe:
            while True:
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                    raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (Redis flushes its append-only file on shutdown), then wait; SIGKILL if stuck."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same data directory."""
        self.stop()
        self.start()


def _start(directory: Path, **config: str) -> RedisServer:
    server = RedisServer(_redis_server_binary(), directory, **config)
    for _ in range(3):  # the free port can be taken between probing it and binding it
        try:
            server.start()
            return server
        except RuntimeError:
            server.port = _free_port()
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session (no persistence)."""
    with tempfile.TemporaryDirectory(prefix="selfheal-redis-") as directory:
        server = _start(Path(directory))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, with its db flushed so the test starts from nothing."""
    with redis_server.client() as client:
        client.flushdb()
    return redis_server.url


@pytest.fixture
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """``factory(**config)``: start an extra server with these redis.conf settings."""
    started: list[RedisServer] = []

    def factory(**config: str) -> RedisServer:
        server = _start(tmp_path_factory.mktemp("redis"), **config)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
