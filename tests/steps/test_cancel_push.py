"""A cancel reaches the running attempt by push (`StateStore.wake`), and the rare fallback read
still catches one whose push was lost. The engine in-process with a real store (SQLite in
tmp_path, a real redis-server), real git workspaces and a real runtime subprocess.

To prove the push, the fallback read is set to an hour and the cancel is requested only once the
attempt's first read of the job (made at the start) is done: nothing but a wake-up can then make
the attempt read the job again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_selfheal.context import build_context
from celery_selfheal.control.requests import request_control
from celery_selfheal.settings import load_settings
from celery_selfheal.steps import execute
from celery_selfheal.steps.outcome import StepOutcome
from celery_selfheal.store import _wake_fifo
from tests.conftest import process_alive, wait_for
from tests.engine import Engine


class Checks:
    """Counts the attempt's reads of its job (`execute.preempt_check` calls)."""

    def __init__(self) -> None:
        self.count = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = execute.preempt_check

        def counted(ctx: Any, job_id: str, epoch: int) -> Callable[[], bool]:
            check = real(ctx, job_id, epoch)

            def run() -> bool:
                self.count += 1
                return check()

            return run

        monkeypatch.setattr(execute, "preempt_check", counted)


@pytest.fixture(params=["sqlite", "redis"])
def push_engine(request: pytest.FixtureRequest, tmp_path: Path, make_repo: Callable[..., Path],
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    for name in ("SELFHEAL_BROKER_URL", "SELFHEAL_STORE_URL", "SELFHEAL_CONFIG", "STATSD_HOST"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "redis":
        monkeypatch.setenv("SELFHEAL_STORE_URL", request.getfixturevalue("redis_url"))
    config = tmp_path / "config.toml"
    config.write_text("")
    settings = load_settings(state_dir=tmp_path / "state", config_path=config)
    engine = Engine(ctx=build_context(settings, sinks=[]), repo=make_repo())
    yield engine
    engine.ctx.store.close()


def start_attempt(engine: Engine, checks: Checks) -> tuple[str, int, threading.Thread, list[StepOutcome]]:
    """Submit a job whose step sleeps, run it in a thread, wait for its first read of the job."""
    job_id = engine.submit("sleep 60 & sleep 60")
    done: list[StepOutcome] = []
    worker = threading.Thread(target=lambda: done.append(engine.run(job_id)), daemon=True)
    worker.start()
    attempt = wait_for(lambda: next((a for a in engine.ctx.store.list_attempts(job_id) if a.get("pid")), None),
                       "the attempt's runtime started")
    wait_for(lambda: checks.count >= 1, "the attempt's first read of its job")
    return job_id, int(attempt["pid"]), worker, done


def cancel(engine: Engine, job_id: str) -> None:
    request_control(engine.ctx, job_id, "cancel", reason="test", enqueue_apply=lambda _job_id: None)


def wait_cancelled(engine: Engine, job_id: str, pid: int, worker: threading.Thread, done: list[StepOutcome]) -> None:
    wait_for(lambda: not worker.is_alive(), "the attempt to end")
    assert done and done[0].preempted
    assert engine.ctx.store.get_attempt(job_id, 0, 1)["status"] == "cancelled"  # type: ignore[index]
    assert engine.job(job_id)["status"] == "cancelled"
    assert not process_alive(pid)


def test_a_cancel_is_pushed_to_the_running_attempt(push_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "PREEMPT_FALLBACK_SECONDS", 3600.0)
    checks = Checks()
    checks.install(monkeypatch)
    job_id, pid, worker, done = start_attempt(push_engine, checks)
    before = checks.count
    cancel(push_engine, job_id)
    wait_cancelled(push_engine, job_id, pid, worker, done)
    assert checks.count > before  # read again: only the wake-up asked for it


def test_a_lost_push_is_caught_by_the_fallback_read(push_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "PREEMPT_FALLBACK_SECONDS", 0.2)
    checks = Checks()
    checks.install(monkeypatch)
    store = push_engine.ctx.store
    job_id, pid, worker, done = start_attempt(push_engine, checks)
    if store.url.startswith("sqlite"):
        directory = _wake_fifo.wake_dir(Path(store.url[len("sqlite:///"):]))
        for fifo in directory.iterdir():  # the publisher finds no FIFO to write to
            fifo.unlink()
    else:
        monkeypatch.setattr(store, "wake", lambda _job_id: None)  # as a publish that failed
    cancel(push_engine, job_id)
    wait_cancelled(push_engine, job_id, pid, worker, done)


def test_a_publish_lost_while_the_subscriber_reconnects_is_caught(
        redis_url: str, tmp_path: Path, make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """CLIENT KILL of the subscriber and the publish in one MULTI: nobody hears it (PUBLISH counts
    0 receivers); the resubscription makes the attempt read the job, long before the fallback."""
    for name in ("SELFHEAL_BROKER_URL", "SELFHEAL_CONFIG", "STATSD_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SELFHEAL_STORE_URL", redis_url)
    monkeypatch.setattr(execute, "PREEMPT_FALLBACK_SECONDS", 3600.0)
    config = tmp_path / "config.toml"
    config.write_text("")
    engine = Engine(ctx=build_context(load_settings(state_dir=tmp_path / "state", config_path=config), sinks=[]),
                    repo=make_repo())
    checks = Checks()
    checks.install(monkeypatch)
    job_id, pid, worker, done = start_attempt(engine, checks)
    store: Any = engine.ctx.store
    with redis.Redis.from_url(redis_url) as client:
        wait_for(lambda: client.pubsub_numsub(store._wake_channel())[0][1] >= 1, "the subscriber")
    lost: list[int] = []
    monkeypatch.setattr(store, "wake", lambda j: lost.append(_kill_and_publish(redis_url, store._wake_channel(), j)))
    cancel(engine, job_id)
    assert lost == [0]  # the publish reached no subscriber
    wait_cancelled(engine, job_id, pid, worker, done)
    engine.ctx.store.close()


def _kill_and_publish(url: str, channel: str, job_id: str) -> int:
    with redis.Redis.from_url(url) as client:
        pipe = client.pipeline(transaction=True)
        pipe.client_kill_filter(_type="pubsub")
        pipe.publish(channel, job_id)
        killed, receivers = pipe.execute()
    assert killed >= 1
    return int(receivers)
