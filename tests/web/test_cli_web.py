"""``selfheal web`` as a real process: the generated token (0600, shared), the printed login URL,
refusal of a non-loopback host without a token, named tokens from a file, no token in its log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from celery_selfheal.store import open_store

SELFHEAL = [str(Path(sys.executable).parent / "selfheal")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    return {**env, "SELFHEAL_STATE_DIR": str(tmp / "state"), **extra}


def start(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = free_port()
    log = tmp / f"web-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*SELFHEAL, "web", "--port", str(port), *args], env=env or env_for(tmp),
                                stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, log, port
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"selfheal web did not start:\n{log.read_text()}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def test_generated_token_login_url_and_no_token_in_the_log(tmp_path: Path) -> None:
    proc, log, port = start(tmp_path)
    try:
        token_file = tmp_path / "state" / "run" / "web-token"
        token = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert f"http://127.0.0.1:{port}/login?token={token}" in log.read_text()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True) as http:
            assert http.get("/login", params={"token": token}).status_code == 200  # redirected to the list
            assert http.get("/api/jobs").json() == {"jobs": [], "next": None}
            assert http.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        second, log2, _ = start(tmp_path)  # another console on the same state dir shares the token
        stop(second)
        assert token in log2.read_text()
    finally:
        stop(proc)
    lines = log.read_text().splitlines()
    assert sum(token in line for line in lines) == 1, lines  # only the printed login URL
    assert any("GET /login 303" in line for line in lines)


def test_non_loopback_host_needs_an_explicit_token(tmp_path: Path) -> None:
    out = subprocess.run([*SELFHEAL, "web", "--host", "0.0.0.0", "--port", str(free_port())],
                         env=env_for(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "selfheal: error: --host: refusing to listen on non-loopback host '0.0.0.0' without a token: "
        "set SELFHEAL_WEB_TOKEN or pass --token-file"]
    assert not (tmp_path / "state" / "run" / "web-token").exists()
    bad = tmp_path / "tokens"
    bad.write_text("ops 0123456789abcdefgh\n")
    out = subprocess.run([*SELFHEAL, "web", "--token-file", str(bad)], env=env_for(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"{bad}: line 1" in out.stderr and "Traceback" not in out.stderr


def test_token_file_names_are_the_actors(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nops-anna:anna-token-0123456789\nops-ben:ben-token-0123456789\n")
    proc, log, port = start(tmp_path, "--host", "127.0.0.1", "--token-file", str(tokens))
    store = open_store(f"sqlite:///{tmp_path}/state/selfheal.db")
    store.create_job({"jobId": "quiet", "status": "running", "epoch": 0, "steps": [], "spec": {}})
    opened = threading.Event()

    def follow() -> None:  # a client following a quiet job while the console is stopped
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http, \
                http.stream("GET", "/api/jobs/quiet/events/stream",
                            headers={"Authorization": "Bearer anna-token-0123456789"}) as resp:
            opened.set()
            for _ in resp.iter_lines():
                pass

    reader = threading.Thread(target=follow, daemon=True)
    try:
        assert "anna-token" not in log.read_text() and f"http://127.0.0.1:{port}/login" in log.read_text()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/api/jobs", headers={"Authorization": "Bearer ben-token-0123456789"}).status_code == 200
            assert http.get("/api/jobs", headers={"Authorization": "Bearer ben-token-01234567"}).status_code == 401
        reader.start()
        assert opened.wait(10)
    finally:
        code = stop(proc)
        assert code == 130, log.read_text()
    # the open stream did not hold the shutdown until uvicorn's graceful timeout cut it
    assert "timeout graceful shutdown exceeded" not in log.read_text(), log.read_text()
    reader.join(10)
    assert not reader.is_alive()
    assert "Traceback" not in log.read_text(), log.read_text()
