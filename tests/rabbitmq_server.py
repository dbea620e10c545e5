"""pytest fixtures that run Debian's real ``rabbitmq-server`` as a plain foreground process.

Register with ``pytest_plugins = ["tests.rabbitmq_server"]``. Fixtures:

- ``rabbitmq_server`` (session): one node for the whole session, on free ports, with its database,
  logs, Erlang cookie (``HOME``) and ``epmd`` port in a temp dir; ``consumer_timeout`` is
  `CONSUMER_TIMEOUT_MS` and the channel tick that checks it runs every second (RabbitMQ's default
  is once a minute), so the consumer-timeout test takes seconds;
- ``rabbitmq_url`` (function): the node's ``amqp://`` URL on a fresh vhost, so each test starts
  with no queues.

The node takes 10-20 s to boot, so it is started in the background as soon as collection shows a
test that needs it, and the fixture only waits for it. Under pytest-xdist the workers share one node:
the controller makes one directory for it (`SHARED_ENV`), the first worker whose collection needs it
claims it and starts the node, the others attach to it (``node.json``), and the controller stops it
when every worker is done. The ``/usr/sbin`` wrappers switch to the
``rabbitmq`` user (no access to a root temp dir): the scripts in ``/usr/lib/rabbitmq/bin`` are run
directly. Without ``rabbitmq-server`` the tests are skipped locally and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path("/usr/lib/rabbitmq/bin")
#: the test node's consumer_timeout (ms): an unacked delivery older than this closes its channel
CONSUMER_TIMEOUT_MS = 4000
#: seconds to wait for the node to accept AMQP connections
START_TIMEOUT = 90.0
FIXTURES = ("rabbitmq_server", "rabbitmq_url")
#: the environment variable naming the directory of the one node of this run (set by the controller)
SHARED_ENV = "SELFHEAL_TEST_RABBITMQ_DIR"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def available() -> bool:
    """True when Debian's rabbitmq-server scripts are installed."""
    return (BIN / "rabbitmq-server").is_file() and shutil.which("erl") is not None


class RabbitServer:
    """One RabbitMQ node in its own directory (``HOME``, database, logs, config)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port, self.dist_port, self.epmd_port = _free_port(), _free_port(), _free_port()
        self.node = f"selfheal{uuid.uuid4().hex[:6]}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the node's process, also when another pytest process started it
        self.started_at = 0.0
        self.boot_seconds: float | None = None

    @classmethod
    def attach(cls, directory: Path) -> RabbitServer:
        """The node another pytest process of this run started in ``directory`` (its ``node.json``)."""
        info = json.loads((directory / "node.json").read_text())
        server = cls(directory)
        server.port, server.dist_port, server.epmd_port = info["port"], info["dist_port"], info["epmd_port"]
        server.node, server.pid = info["node"], info["pid"]
        server.started_at = time.monotonic() - (time.time() - info["started"])
        return server

    def alive(self) -> bool:
        """True while the node's process runs."""
        if self.proc is not None:
            return self.proc.poll() is None
        from tests.conftest import process_alive

        return self.pid is not None and process_alive(self.pid)

    @property
    def env(self) -> dict[str, str]:
        """The environment the server and its CLI tools (rabbitmqctl) need."""
        (self.dir / "advanced.config").write_text(
            f"[{{rabbit, [{{consumer_timeout, {CONSUMER_TIMEOUT_MS}}}, {{channel_tick_interval, 1000}}]}}].\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        return {**os.environ, "HOME": str(self.dir),  # the Erlang cookie lives here
                "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd_port), "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.dir / "log"), "RABBITMQ_PID_FILE": str(self.dir / "pid"),
                "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins")}

    def url(self, vhost: str = "/") -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/VHOST`` (guest may log in from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{'' if vhost == '/' else vhost}"

    def start(self) -> None:
        """Start the node in the background (returns at once; `wait` blocks until it answers)."""
        self.started_at = time.monotonic()
        with open(self.dir / "server.out", "ab") as out:
            self.proc = subprocess.Popen([str(BIN / "rabbitmq-server")], env=self.env, stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        info = {"port": self.port, "dist_port": self.dist_port, "epmd_port": self.epmd_port, "node": self.node,
                "pid": self.pid, "started": time.time()}
        (self.dir / "node.json.tmp").write_text(json.dumps(info))
        (self.dir / "node.json.tmp").replace(self.dir / "node.json")  # others never read half a file

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS``."""
        return subprocess.run([str(BIN / "rabbitmqctl"), "-q", "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def wait(self) -> None:
        """Block until an AMQP connection succeeds; RuntimeError with the log tail when it does not."""
        from kombu import Connection

        deadline = self.started_at + START_TIMEOUT
        while self.boot_seconds is None:
            try:
                with Connection(self.url(), connect_timeout=1) as conn:
                    conn.ensure_connection(max_retries=0)
                self.boot_seconds = time.monotonic() - self.started_at
            except Exception:
                if not self.alive() or time.monotonic() > deadline:
                    out = (self.dir / "server.out").read_text(errors="replace")[-3000:]
                    self.stop()
                    raise RuntimeError(f"rabbitmq-server {self.node} did not start:\n{out}") from None
                time.sleep(0.2)

    def add_vhost(self, name: str) -> str:
        """A new vhost guest may use; returns its URL."""
        for args in (("add_vhost", name), ("set_permissions", "-p", name, "guest", ".*", ".*", ".*")):
            done = self.ctl(*args)
            if done.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
        return self.url(name)

    def stop(self) -> None:
        """``rabbitmqctl stop``, then the node's own epmd; SIGKILL if it does not go."""
        if self.pid is None:
            return
        if self.alive():
            self.ctl("stop", timeout=60)
            deadline = time.monotonic() + 30
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                os.killpg(self.pid, 9)
        if self.proc is not None:
            self.proc.wait()
        epmd = shutil.which("epmd") or next(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"), None)
        if epmd is not None:
            subprocess.run([str(epmd), "-kill"], env=self.env, capture_output=True, timeout=10)
        self.proc, self.pid = None, None


_early: dict[str, object] = {}


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _shared_dir() -> Path:
    return Path(os.environ[SHARED_ENV])


def _claim_and_start() -> None:
    """Start the run's node unless another pytest process of this run already claimed it."""
    try:
        os.close(os.open(_shared_dir() / "claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    server = RabbitServer(_shared_dir())
    server.start()
    _early["server"] = server


def pytest_configure(config: pytest.Config) -> None:
    """The controller (or a plain run) makes the node's directory; xdist workers inherit its name."""
    if not _is_xdist_worker(config):
        os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="selfheal-rabbitmq-")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Start the node while the other tests run, if any selected test needs it."""
    if available() and any(set(FIXTURES) & set(getattr(i, "fixturenames", ())) for i in items):
        _claim_and_start()


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller stops the node once every worker is done (a worker may start it for another)."""
    if _is_xdist_worker(config) or SHARED_ENV not in os.environ:
        return
    directory = Path(os.environ.pop(SHARED_ENV))
    server = _early.pop("server", None)
    if not isinstance(server, RabbitServer) and (directory / "node.json").exists():
        server = RabbitServer.attach(directory)
    if isinstance(server, RabbitServer):
        server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitServer]:
    """The session's RabbitMQ node (started early by collection), ready for connections."""
    if not available():
        message = "rabbitmq-server is not installed (apt install rabbitmq-server)"
        if _in_ci():
            pytest.fail(message + "; CI must run the RabbitMQ tests", pytrace=False)
        pytest.skip(message)
    _claim_and_start()  # a no-op when collection (here or in another xdist worker) already did
    server = _early.get("server")
    if not isinstance(server, RabbitServer):  # another worker started it: wait for its node.json
        from tests.conftest import wait_for

        wait_for(lambda: (_shared_dir() / "node.json").exists(), "the shared RabbitMQ node's node.json")
        server = RabbitServer.attach(_shared_dir())
    server.wait()
    yield server


@pytest.fixture
def rabbitmq_url(rabbitmq_server: RabbitServer) -> str:
    """A fresh vhost on the session node: the test starts with no queues and no messages."""
    return rabbitmq_server.add_vhost(f"t{uuid.uuid4().hex[:8]}")
