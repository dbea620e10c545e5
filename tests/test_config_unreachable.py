"""A broker or store that cannot be reached: one line naming it, within 5 s, never a traceback.

Real `selfheal` processes against real closed ports (nothing listens there) and an unknown
transport; a job is stored only when its message can be sent.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

JOB = """[job]
objective = "x"
repo = "repo"
ref = "HEAD"
runtime = ["sh", "-c", "echo hi"]
[[steps]]
id = "a"
instructions = "x"
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unreachable")
    subprocess.run(["git", "init", "-q", str(root / "repo")], check=True)
    subprocess.run(["git", "-C", str(root / "repo"), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    (root / "job.toml").write_text(JOB)
    return root


def kinds() -> dict[str, tuple[dict[str, str], str, int]]:
    """kind -> (env, expected start of the error line, exit code)."""
    port = closed_port()
    return {
        "redis broker": ({"SELFHEAL_BROKER_URL": f"redis://127.0.0.1:{port}/0", "SELFHEAL_STORE_URL": "sqlite"},
                         f"broker redis://127.0.0.1:{port}/0 unreachable: ", 1),
        "amqp broker": ({"SELFHEAL_BROKER_URL": f"amqp://guest:pw-{port}@127.0.0.1:{port}//",
                         "SELFHEAL_STORE_URL": "sqlite"},
                        f"broker amqp://guest:[REDACTED]@127.0.0.1:{port}// unreachable: ", 1),
        "redis store": ({"SELFHEAL_BROKER_URL": f"redis://127.0.0.1:{port}/0"},
                        f"state store redis://127.0.0.1:{port}/0 unreachable: ", 1),
        "unknown transport": ({"SELFHEAL_BROKER_URL": "bogus://", "SELFHEAL_STORE_URL": "sqlite"},
                              "SELFHEAL_BROKER_URL / [state] broker_url: unsupported broker 'bogus://'", 2),
    }


COMMANDS = {
    "submit": ["submit", "job.toml"],
    "run": ["run", "job.toml"],
    "control": ["control", "job-x", "pause"],
    "status": ["status", "job-x"],
    "events": ["events", "job-x"],
}
#: commands that talk to the broker (status and events only read the store)
BROKER_COMMANDS = ("submit", "run", "control")


CASES = [(command, kind) for command in COMMANDS for kind in kinds()
         if kind == "redis store" or command in BROKER_COMMANDS]


@pytest.mark.parametrize(("command", "kind"), CASES)
def test_unreachable_service_is_one_line_within_5s(workdir, tmp_path, command, kind):
    """One error line instead of a hang; the CLI gives up on the service within DESIGN's 5 s (the
    whole command, start-up included, is timed by bench/bench_unreachable.py)."""
    env_extra, expected, code = kinds()[kind]
    db = tmp_path / "s.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "STATSD_"))}
    env.update({k: (f"sqlite:///{db}" if v == "sqlite" else v) for k, v in env_extra.items()})
    env["SELFHEAL_STATE_DIR"] = str(tmp_path / "state")
    # The 5 s are the CLI's waiting for a service: counted from its first connection attempt (the
    # clock is system-wide) to its exit, not the imports and the redactor's compilation before it,
    # which a busy machine can stretch past 5 s by itself. An error found in the configuration
    # contacts nothing at all.
    first_connect = tmp_path / "first-connect"
    script = ("import socket, sys, time\n"
              "mark, connect = sys.argv.pop(1), socket.socket.connect\n"
              "def timed(sock, address):\n"
              "    if not __import__('os').path.exists(mark): open(mark, 'w').write(repr(time.monotonic()))\n"
              "    return connect(sock, address)\n"
              "socket.socket.connect = timed\n"
              "from celery_selfheal.cli.main import main\n"
              "main()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(first_connect), *COMMANDS[command]], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=60)
    ended = time.monotonic()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"selfheal: error: {expected}"), lines[0]
    assert proc.returncode == code
    if code == 2:
        assert not first_connect.exists()  # refused from the configuration alone
    else:
        elapsed = ended - float(first_connect.read_text())
        assert elapsed < 5, f"{elapsed:.1f}s"
    if db.exists():  # nothing was stored: no job record for a message that could not be sent
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
            assert "jobs" not in tables or conn.execute("select count(*) from jobs").fetchone()[0] == 0


def test_a_job_whose_message_cannot_be_sent_is_not_left_queued(workdir, tmp_path):
    """Python API, no CLI pre-check: the send fails after the record was stored -> failed, not_sent."""
    from celery import Celery

    from celery_selfheal.api import submit
    from celery_selfheal.errors import SelfHealError
    from celery_selfheal.settings import load_settings
    from celery_selfheal.wiring.install import SelfHeal

    settings = load_settings(state_dir=tmp_path / "state", env={
        "SELFHEAL_BROKER_URL": f"redis://127.0.0.1:{closed_port()}/0", "SELFHEAL_STORE_URL": f"sqlite:///{tmp_path}/s.db"})
    app = Celery(f"t-{os.getpid()}")
    app.conf.update(settings.celery_conf(), task_publish_retry=False, broker_connection_timeout=0.5)
    sh = SelfHeal(app, settings)
    with pytest.raises(SelfHealError, match=r"^job job-\S+ not sent to the broker: "):
        submit(sh, workdir / "job.toml")
    (job,) = sh.context().store.list_jobs()
    assert (job["status"], job["terminalReason"]) == ("failed", "not_sent")
