"""Canary test (issue 7, DESIGN REQ-12): no secret a runtime prints is ever persisted or sent.

A real prefork worker on a real redis-server broker (SQLite store, artifacts, logs and prompt files
under the state dir) runs two jobs whose runtime prints every kind of secret in
`tests.canaries` on stdout and stderr (some split across writes with sleeps, so they reach the
stream redactor in separate chunks), with the values of secret-named env vars given to the worker
in plain, base64 and URL-encoded forms; each job fails once (exit 75: a retry envelope, a failure
summary and signature, a ``Task.retry`` message in the broker) and then succeeds. One job is driven
by ``selfheal run --json``. Meanwhile a Celery event receiver, a UDP socket standing in for StatsD
and a Redis ``MONITOR`` connection (every command any process sends to the broker) record
everything. Afterwards no canary, in no encoding, appears under the state dir, in the Redis keys or
commands, in the Celery events, in the StatsD packets, in the worker's log or in the CLI's output.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_selfheal.api import submit
from celery_selfheal.core.envelope import summarize_failure
from celery_selfheal.core.redact import Redactor
from celery_selfheal.core.signature import failure_signature
from celery_selfheal.settings import Settings, load_settings
from tests.canaries import (
    Blob,
    Canary,
    decoded_bodies,
    encode_env,
    env_canaries,
    env_secret_forms,
    find_canaries,
    monitor_blobs,
    needles,
    token_canaries,
    tree_blobs,
    unterminated_pem,
)
from tests.integration.conftest import AGENT, TERMINAL, client_selfheal, start_worker, stop_worker
from tests.redis_server import RedisServer

SELFHEAL = [sys.executable, "-c", "from celery_selfheal.cli.main import main; main()"]
SEED_A, SEED_B, SEED_SPEC = 11, 22, 33
#: pause between the pieces of a split write: long enough for the supervisor to read them apart
SPLIT_SLEEP = 0.02
#: more than the stream redactor's window + batch (8 + 16 KiB): it scans mid-stream
FILLER_CHARS = 30 * 1024
FAIL_MESSAGE = "upstream returned 503 Service Unavailable"


# ------------------------------------------------------------------------------ the runtime's script


class Script:
    """What the scripted agent prints (``play PATH``), and the raw stdout text it makes."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.ops: list[dict[str, Any]] = []
        self.labels: list[str] = []
        self.raw_out: list[str] = []

    def write(self, to: str, text: str) -> None:
        self.ops.append({to: text})
        if to == "out":
            self.raw_out.append(text)

    def canary(self, to: str, canary: Canary, parts: int) -> None:
        """``canary NN: <text>`` in ``parts`` writes, cut inside the secret."""
        label = f"{len(self.labels):02d}"
        self.labels.append(label)
        line = f"canary {label}: {canary.text}\n"
        start = line.index(canary.secrets[0])
        size = len(canary.secrets[0])
        cuts = [0, *(start + size * k // parts for k in range(1, parts)), len(line)]
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            if i:
                self.ops.append({"sleep": SPLIT_SLEEP})
            self.write(to, line[a:b])

    def env_value(self, to: str, name: str, form: str, *, split: bool, label: bool = True) -> None:
        """An env var's value as the runtime sees it, encoded by the runtime itself."""
        value = encode_env(self.env[name], form)
        if label:
            tag = f"{len(self.labels):02d}"
            self.labels.append(tag)
            self.write(to, f"canary {tag}: ")
        if split:
            cut = len(value) // 2
            self.ops += [{"env": name, "form": form, "to": to, "slice": [0, cut]}, {"sleep": SPLIT_SLEEP},
                         {"env": name, "form": form, "to": to, "slice": [cut, None]}]
        else:
            self.ops.append({"env": name, "form": form, "to": to})
        if to == "out":
            self.raw_out.append(value)
        self.write(to, "\n")


def build_script(seed: int, env: Mapping[str, str], tail_env: str) -> Script:
    """Every canary kind on stdout and stderr; stderr ends with an unterminated PEM block and is
    closed early; stdout ends with a 40+ line failure block (the failure summary) that prints the
    token canaries again and the value of ``tail_env``."""
    s = Script(env)
    tokens = token_canaries(seed)
    for i, canary in enumerate(tokens):
        s.canary("err" if i % 3 == 1 else "out", canary, parts=1 + i % 3)
        if i == len(tokens) // 2:
            s.write("out", "".join(f"progress {n:05d} {'.' * 50}\n" for n in range(FILLER_CHARS // 66)))
    for j, (name, form) in enumerate((n, f) for n in env for f in ("plain", "base64", "base64nl", "url")):
        s.env_value("err" if j % 2 else "out", name, form, split=j % 3 == 0)
    s.canary("err", unterminated_pem(seed), parts=2)  # everything after it on stderr is redacted
    s.ops += [{"close-err": True}, {"sleep": 0.2}]
    s.write("out", "Traceback (most recent call last):\n")
    for k, canary in enumerate(c for c in tokens if "\n" not in c.text):
        s.write("out", f"  E{k:02d} request with {canary.text}\n")
    s.write("out", "  E env ")
    s.env_value("out", tail_env, "plain", split=False, label=False)
    s.write("out", "".join(f"  at deploy.step_{n} (deploy.py)\n" for n in range(8)))
    s.write("out", "RuntimeError: the upstream rejected the request\n")
    return s


def job_doc(repo: Path, script_path: Path, spec: list[Canary]) -> dict[str, Any]:
    """A one-step job: play the script, fail once with exit 75, then succeed. Shape canaries sit in
    the objective, title and instructions (the spec is redacted at submit)."""
    instructions = "\n".join([
        f"play {script_path}",
        f"fail@1 75 {FAIL_MESSAGE}",
        "write out.txt: done",
        f"note: deploy with {spec[0].text} and {spec[1].text}",
    ])
    return {"job": {"objective": f"Deploy; the old token {spec[2].text} must go", "repo": str(repo),
                    "ref": "main", "runtime": [sys.executable, AGENT],
                    "selfheal": {"soft_reset_backoff_seconds": 0.1}},
            "steps": [{"id": "deploy", "title": f"Deploy ({spec[3].text})", "instructions": instructions}]}


# ------------------------------------------------------------------------------------ recorders


class UdpCollector:
    """A UDP socket standing in for the StatsD server."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            with contextlib.suppress(TimeoutError, socket.timeout):
                self.packets.append(self.sock.recv(65536))

    def stop(self) -> None:
        """Stop once every packet sent so far has been read: a marker packet sent now is queued
        behind them on the socket, so reading it means they were read (no guessed delay)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker:
            marker.sendto(_LAST_PACKET, ("127.0.0.1", self.port))
        deadline = time.monotonic() + 10
        while _LAST_PACKET not in self.packets and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop = True
        self._thread.join(5)
        self.sock.close()
        assert _LAST_PACKET in self.packets, "the UDP collector never read its own marker packet"
        self.packets.remove(_LAST_PACKET)


_LAST_PACKET = b"test.marker:1|c"


class RedisTap:
    """A raw ``MONITOR`` connection (every command any client sends, as sent), then every key."""

    def __init__(self, server: RedisServer) -> None:
        self.url = server.url
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.sock.sendall(b"MONITOR\r\n")
        self.data = bytearray()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(1 << 16):
                self.data += chunk

    def stop(self) -> list[Blob]:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self.sock.close()
        return [*monitor_blobs(bytes(self.data)), *self.keys()]

    def keys(self) -> list[Blob]:
        """Every key's value, by type (message bodies decoded)."""
        out: list[Blob] = []
        with redis.Redis.from_url(self.url) as client:
            for key in client.scan_iter(count=1000):
                kind = client.type(key).decode()
                if kind == "string":
                    values = [client.get(key) or b""]
                elif kind == "list":
                    values = client.lrange(key, 0, -1)
                elif kind == "hash":
                    values = [v for pair in client.hgetall(key).items() for v in pair]
                elif kind == "set":
                    values = list(client.smembers(key))
                elif kind == "zset":
                    values = client.zrange(key, 0, -1)
                else:
                    values = []
                where = f"redis key {key.decode(errors='replace')}"
                out += [(where, b"\n".join(values)), *decoded_bodies(where, values)]
        return out


class FolderTap:
    """Copies every message file that appears in the embedded broker's folders. A worker takes a
    message within its 50 ms polling interval and deletes it; polled every few ms, a copy is made
    first (almost always: the positive check on the retry message is only made on Redis)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[str, bytes] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            for path in self.folder.rglob("*.msg"):
                if path.name not in self.seen:
                    with contextlib.suppress(OSError):
                        self.seen[path.name] = path.read_bytes()
            time.sleep(0.002)

    def stop(self) -> list[Blob]:
        self._stop = True
        self._thread.join(5)
        out: list[Blob] = []
        for name, data in self.seen.items():
            out += [(f"broker message {name}", data), *decoded_bodies(f"broker message {name}", [data])]
        return out


class EventCapture:
    """A real Celery event receiver on the broker, listening from before the worker starts."""

    def __init__(self, settings: Settings) -> None:
        self.app = Celery("canary-events")
        self.app.conf.update(settings.celery_conf())
        self.events: list[dict[str, Any]] = []
        self._conn = self.app.connection_for_read()
        self._recv = self.app.events.Receiver(self._conn, handlers={"*": self.events.append})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        # Redis delivers events by PUB/SUB, a fanout on files binds when the receiver consumes:
        # either way, wait until the receiver hears a probe of ours.
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn, enabled=True)
            deadline = time.monotonic() + 10
            while not any(e["type"] == "canary-probe" for e in self.events):
                assert time.monotonic() < deadline, "the event receiver never heard the probe"
                dispatcher.send("canary-probe")
                time.sleep(0.05)
            dispatcher.close()

    def _run(self) -> None:
        for _ in self._recv.consume(limit=None, timeout=None, safety_interval=0.1, wakeup=False):
            pass

    def stop(self) -> list[dict[str, Any]]:
        self._recv.should_stop = True
        self._thread.join(5)
        self._conn.release()
        return list(self.events)


# ------------------------------------------------------------------------------------------ tests


Tap = RedisTap | FolderTap


@pytest.fixture(params=["redis", "filesystem"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, Tap]]:
    """Redis broker (own server: MONITOR sees this test only) with the SQLite store under the state
    dir, or the embedded default (filesystem broker under the state dir)."""
    state = tmp_path / "state"
    if request.param == "redis":
        server = request.getfixturevalue("redis_server_factory")()
        settings = load_settings(state_dir=state, broker_url=server.url,
                                 store_url=f"sqlite:///{state / 'selfheal.db'}", env={})
        settings.ensure_dirs()
        tap: Tap = RedisTap(server)
    else:
        settings = load_settings(state_dir=state, env={})
        settings.ensure_dirs()
        tap = FolderTap(settings.broker_dir)
    try:
        yield settings, tap
    finally:
        tap.stop()


def wait_job(store: Any, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job and job["status"] in TERMINAL:
            return dict(job)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {timeout}s")


def run_cli(commands: Mapping[str, list[str]], env: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """Run CLI commands side by side; their stdout + stderr by key (each must exit 0)."""
    procs = {k: subprocess.Popen([*SELFHEAL, *argv], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, argv in commands.items()}
    outputs = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, (key, out, err)
        outputs[key] = out + err
    return outputs


@pytest.mark.slow
def test_no_canary_leaks_anywhere(tmp_path: Path, make_repo: Any, broker: tuple[Settings, Tap]) -> None:
    settings, tap = broker
    udp = UdpCollector()
    env = env_canaries(SEED_A)
    spec_canaries = token_canaries(SEED_SPEC)
    scripts = {"a": build_script(SEED_A, env, tail_env="MY_SERVICE_TOKEN"),
               "b": build_script(SEED_B, env, tail_env="ACME_CLIENT_SECRET")}
    job_files = {}
    repo = make_repo()
    for name, script in scripts.items():
        script_path = tmp_path / f"script-{name}.json"
        script_path.write_text(json.dumps(script.ops))
        job_files[name] = tmp_path / f"job-{name}.json"
        job_files[name].write_text(json.dumps(job_doc(repo, script_path, spec_canaries)))

    capture = EventCapture(settings)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path, extra_env={**env, "STATSD_HOST": "127.0.0.1",
                                                         "STATSD_PORT": str(udp.port)})
    cli_env = {**os.environ, **settings.as_env()}  # the operator's shell: no worker secrets in it
    try:
        # job a through `selfheal run`, job b through the API, side by side
        run_a = subprocess.Popen([*SELFHEAL, "run", str(job_files["a"]), "--json"], env=cli_env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = client_selfheal(settings)
        job_b = str(submit(client, job_files["b"])["jobId"])
        out, err = run_a.communicate(timeout=40)
        assert run_a.returncode == 0, out + err + log_path.read_text()[-3000:]
        jobs = {"a": json.loads(out.splitlines()[0])["jobId"], "b": job_b}
        store = client.context().store
        for job_id in jobs.values():
            assert wait_job(store, job_id, 30)["status"] == "succeeded"
        commands = {f"{c} {n}": [*c.split(), job_id] for n, job_id in jobs.items()
                    for c in ("status --json", "events --json", "artifacts")}
        commands.update({"follow b": ["follow", job_b, "--json"], "status a (text)": ["status", jobs["a"]],
                         "events a (text)": ["events", jobs["a"]]})
        outputs = {"run a": out + err, **run_cli(commands, cli_env, tmp_path)}
        attempts = {n: list(store.list_attempts(j)) for n, j in jobs.items()}
        stored_jobs = {n: store.get_job(j) or {} for n, j in jobs.items()}
    finally:
        events = capture.stop()
        stop_worker(worker)
        udp.stop()  # after the worker stopped: every packet it sent has been read
    broker_blobs = tap.stop()

    # The run happened as designed: one failure with a retry, then success, every canary printed.
    for name, job_id in jobs.items():
        first, second = attempts[name]
        assert (first["status"], first["failureClass"], first["strategy"]) == \
            ("failed", "transient_runtime", "soft_reset"), first
        assert second["status"] == "succeeded"
        log = (settings.artifact_root / job_id / "logs" / "step-0000-attempt-0001.log").read_text()
        for label in scripts[name].labels:  # each kind reached the log, redacted
            assert re.search(rf"canary {label}: [^\n]*\[REDACTED\]", log), (name, label)
        assert FAIL_MESSAGE in log
        retry = json.loads(next((settings.run_dir / "prompts" / job_id).glob("*.retry.json")).read_text())
        assert retry["failure"]["summary"].count("[REDACTED]") >= 20, retry["failure"]
        assert "[REDACTED]" in stored_jobs[name]["spec"]["objective"]  # redacted at submit
    if isinstance(tap, RedisTap):  # the retry message went through the broker, scrubbed
        assert any(b'"retry_context": {' in b and b"[REDACTED]" in b for w, b in broker_blobs if w.endswith("(body)"))
    else:
        assert any(w.endswith("(body)") for w, _ in broker_blobs)  # the tap saw messages
    types = {e["type"] for e in events}
    assert {"selfheal-task-step-attempt-failed", "selfheal-task-self_heal-triggered", "task-retried"} <= types
    assert any(b"task.self_heal.attempts_total" in p for p in udp.packets), udp.packets

    # The failure signature does not depend on the secrets' values.
    assert attempts["a"][0]["failureSignature"] == attempts["b"][0]["failureSignature"]
    raw = {n: failure_signature(f"exit exit=75 signal=None\n"
                                f"{summarize_failure(''.join(s.raw_out) + FAIL_MESSAGE)}")
           for n, s in scripts.items()}
    assert raw["a"] != raw["b"]  # unredacted they would differ: the equality is the redactor's doing

    # No canary anywhere.
    blobs = [*tree_blobs(settings.state_dir), ("worker log", log_path.read_bytes()), *broker_blobs,
             *((f"celery event {e['type']}", json.dumps(e, default=str).encode()) for e in events),
             ("statsd packets", b"\n".join(udp.packets)),
             *((f"CLI {k}", v.encode()) for k, v in outputs.items())]
    canaries = [*token_canaries(SEED_A), *token_canaries(SEED_B), unterminated_pem(SEED_A), unterminated_pem(SEED_B),
                *env_secret_forms(env), *spec_canaries]
    hits = find_canaries(blobs, needles(canaries))
    assert not hits, f"{len(hits)} canary hits:\n" + "\n".join(map(str, hits[:25])) + "\n" + "\n".join(
        sorted({f"{h.where}: {h.kind} ({h.how})" for h in hits}))
    assert any(w.endswith("selfheal.db") for w, _ in blobs)  # the SQLite store was searched


def test_secret_in_repo_url_is_refused_at_submit(tmp_path: Path, make_repo: Any) -> None:
    """A password in the job's repository URL would be stored, shown by ``status`` and kept by git in
    each workspace's ``.git/config``: ``selfheal submit`` refuses it (exit 2), nothing is stored."""
    canary = next(c for c in token_canaries(SEED_A) if c.kind == "url-password")
    password = canary.secrets[0]
    url = f"file://deploy:{password}@localhost{make_repo()}"
    subprocess.run(["git", "ls-remote", url], check=True, capture_output=True)  # git takes the URL as is
    state = tmp_path / "state"
    doc = {"job": {"objective": "o", "repo": url, "ref": "main", "runtime": [sys.executable, AGENT]},
           "steps": [{"id": "s", "instructions": "print hi"}]}
    (tmp_path / "job.json").write_text(json.dumps(doc))
    proc = subprocess.run([*SELFHEAL, "submit", str(tmp_path / "job.json"), "--state-dir", str(state)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc
    assert "job.repo" in proc.stderr and "contains a secret" in proc.stderr
    blobs = [("CLI submit", (proc.stdout + proc.stderr).encode()), *(tree_blobs(state) if state.exists() else [])]
    assert not find_canaries(blobs, needles([canary]))


# ---------------------------------------------------------------------------- the finder can fail


def test_finder_finds_planted_canaries(tmp_path: Path) -> None:
    """Each kind of place the canary test searches, with one unredacted secret planted: all found."""
    env = env_canaries(1)
    token, pem = token_canaries(1)[0], token_canaries(1)[-1]
    forms = env_secret_forms(env)
    found_by = needles([*token_canaries(1), *forms])
    state = tmp_path / "state"
    (state / "artifacts").mkdir(parents=True)
    (state / "broker" / "queue").mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(state / "selfheal.db")) as db:
        db.execute("create table events (body text)")
        db.execute("insert into events values (?)", (json.dumps({"reason": f"x {token.text} y"}),))
        db.commit()
    (state / "artifacts" / "tail.log").write_text(f"... [REDACTED]{token.secrets[0][-20:]}\n")  # a partial leak
    (state / "artifacts" / "pem.log").write_text(pem.secrets[2] + "\n")
    body = json.dumps([[], {"retry_context": {"s": f"pw {env['DB_PASSWORD']}"}}, {}])
    message = json.dumps({"body": base64.b64encode(body.encode()).decode(),
                          "properties": {"body_encoding": "base64"}})
    (state / "broker" / "queue" / "1_x.selfheal.msg").write_text(message)
    traffic = b'+1.0 [0 127.0.0.1:1] "LPUSH" "selfheal" ' + json.dumps(message).encode() + b"\r\n"
    url_form = next(c for c in forms if c.kind == "env-url:DB_PASSWORD").text
    blobs = [*tree_blobs(state), *monitor_blobs(traffic), ("cli", f"see {url_form}".encode())]
    where = {h.where for h in find_canaries(blobs, found_by)}
    assert {"state/selfheal.db", "state/artifacts/tail.log", "state/artifacts/pem.log",
            "state/broker/queue/1_x.selfheal.msg", "redis MONITOR", "cli"} <= where, where
    assert {w for w in where if w.endswith("(body)")} == {"state/broker/queue/1_x.selfheal.msg (body)",
                                                         "redis MONITOR (body)"}

    # and the same texts, redacted, are clean (a bare token tail has no shape: only the finder sees it)
    redactor = Redactor(env)
    texts = [b for w, b in blobs if w.endswith("(body)") or w == "cli"]
    assert not find_canaries([("redacted", redactor.redact_bytes(b)) for b in texts], found_by)


def test_catalogue_is_redacted() -> None:
    """Every canary kind, printed in a line, is removed by the redactor (and found when not)."""
    env = env_canaries(5)
    redactor = Redactor(env)
    for canary in [*token_canaries(5), unterminated_pem(5), *env_secret_forms(env)]:
        text = f"line before\ncanary: {canary.text}\nline after\n"
        found_by = needles([canary])
        assert find_canaries([("raw", text.encode())], found_by), canary.kind
        assert not find_canaries([("redacted", redactor.redact(text).encode())], found_by), canary.kind
