"""Attempt leases, the gate, the lost-worker sweeper and the cluster start-up checks, against a real
redis-server (and SQLite where the backend matters), a real git repo and a real Celery producer
(messages land in Redis lists; no worker is needed to see what was sent)."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.cluster.checks import (
    ClusterOptions,
    cluster_options,
    configure_app,
    startup_warnings,
)
from celery_selfheal.cluster.gate import MAX_PRESTART_LOSSES, Delivery, GateKind, enter, hand_over_to
from celery_selfheal.cluster.leases import AttemptLease, lease_key
from celery_selfheal.cluster.sweeper import Sweeper
from celery_selfheal.context import Context, build_context
from celery_selfheal.core.budgets import Budgets
from celery_selfheal.errors import ConfigError
from celery_selfheal.jobs.submission import load_job_file, prepare_job
from celery_selfheal.settings import load_settings
from celery_selfheal.wiring.routing import RUN_STEP

QUEUE = "selfheal"


@pytest.fixture
def ctx(tmp_path: Path, redis_url: str) -> Context:
    settings = load_settings(state_dir=tmp_path / "state", broker_url=redis_url, env={})
    settings.ensure_dirs()
    return build_context(settings, sinks=[])


@pytest.fixture
def app(redis_url: str) -> Celery:
    app = Celery(f"leases-test-{uuid.uuid4().hex[:6]}", broker=redis_url, set_as_current=False)
    app.conf.update(task_default_queue=QUEUE, task_serializer="json", accept_content=["json"])
    return app


@pytest.fixture
def new_job(ctx: Context, make_repo: Callable[..., Path], tmp_path: Path) -> Callable[[], dict[str, Any]]:
    repo = make_repo()

    def make() -> dict[str, Any]:
        path = tmp_path / f"job-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({"job": {"objective": "o", "repo": str(repo), "ref": "main",
                                            "runtime": [sys.executable, "-c", "pass"]},
                                    "steps": [{"id": "a", "instructions": "x"}, {"id": "b", "instructions": "y"}]}))
        job = prepare_job(load_job_file(path), source=str(path), settings=ctx.settings, redactor=ctx.redactor,
                          env={})
        job["status"] = "running"
        ctx.store.create_job(job)
        return job

    return make


def delivery(job: dict[str, Any], *, task_id: str = "t1", retries: int = 0, host: str = "w1@h",
             step: int = 0) -> Delivery:
    return Delivery(job_id=job["jobId"], step_index=step, epoch=job["epoch"], task_id=task_id, retries=retries,
                    hostname=host, strategy="initial")


def sent(redis_url: str) -> list[dict[str, Any]]:
    """Step messages waiting in the default queue (Celery's JSON envelope, body base64 JSON)."""
    import base64

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    out = []
    for raw in client.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == RUN_STEP
        out.append(json.loads(base64.b64decode(message["body"]))[1])
    return out


def stored(ctx: Context, job: dict[str, Any]) -> dict[str, Any]:
    record = ctx.store.get_job(job["jobId"])
    assert record is not None
    return record


def held(g: Any) -> AttemptLease:
    assert g.lease is not None
    return g.lease


def gate(ctx: Context, d: Delivery, **kw: Any) -> Any:
    return enter(ctx, d, ttl=kw.get("ttl", 5.0), busy_wait=kw.get("busy_wait", 0.3),
                 sweep_interval=kw.get("sweep_interval", 0.5))


def running_attempt(ctx: Context, job: dict[str, Any], lease: AttemptLease, attempt: int = 1, step: int = 0) -> None:
    """What execute_step records when an attempt starts."""
    ctx.store.put_attempt(job["jobId"], step, attempt, {
        "jobId": job["jobId"], "stepId": "ab"[step], "stepIndex": step, "attempt": attempt, "round": 0,
        "epoch": job["epoch"], "status": "running", "attemptStrategy": "initial", "taskId": "t1",
        "hostname": "w1@h", "startedAt": "2026-01-01T00:00:00Z", **lease.record_fields()})


# -- AttemptLease ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_renewal_thread_keeps_the_lease_past_its_ttl(backend: str, ctx: Context, tmp_path: Path) -> None:
    store = ctx.store if backend == "redis" else build_context(
        load_settings(state_dir=tmp_path / "sq", env={}), sinks=[]).store
    assert store.acquire_lease("attempt:j", "me", 0.6)
    lease = AttemptLease(store, "attempt:j", "me", ttl=0.6, message="t/0")
    lease.start()
    time.sleep(1.5)
    assert not lease.lost and (store.get_lease("attempt:j") or {}).get("owner") == "me"
    assert not store.acquire_lease("attempt:j", "other", 5)
    lease.release()
    assert store.get_lease("attempt:j") is None and store.expired_leases("attempt:") == []


def test_lease_taken_after_expiry_is_lost_and_left_alone(ctx: Context) -> None:
    store = ctx.store
    assert store.acquire_lease("attempt:j", "me", 0.3)
    lease = AttemptLease(store, "attempt:j", "me", ttl=0.3, message="t/0")  # not renewed: a stalled worker
    time.sleep(0.4)
    assert store.acquire_lease("attempt:j", "sweeper", 5)
    assert not lease.confirm() and lease.lost
    lease.release()  # must not drop the new owner's lease
    assert (store.get_lease("attempt:j") or {}).get("owner") == "sweeper"


def test_lease_fences_itself_when_renewals_fail_for_two_thirds_of_the_ttl(ctx: Context) -> None:
    now = [100.0]
    assert ctx.store.acquire_lease("attempt:j", "me", 30)
    lease = AttemptLease(ctx.store, "attempt:j", "me", ttl=30, message="t/0", clock=lambda: now[0])
    now[0] += 19.0
    assert not lease.lost
    now[0] += 2.0  # 21 s > 2/3 of 30 s without a renewal: another worker may take over soon
    assert lease.lost
    lease.release()  # a lost lease is left to expire so that the sweeper finds its attempt
    assert (ctx.store.get_lease("attempt:j") or {}).get("owner") == "me"


# -- the gate ---------------------------------------------------------------------------------------

def test_gate_admits_a_first_delivery_and_records_it_inflight(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    g = gate(ctx, delivery(job))
    assert g.kind is GateKind.RUN and g.lease is not None
    try:
        assert (ctx.store.get_lease(lease_key(job["jobId"])) or {}).get("owner") == "w1@h/t1/0"
        inflight = stored(ctx, job)["inflight"]
        assert inflight["messageId"] == "t1/0" and inflight["deliveries"] == 1 and inflight["stepIndex"] == 0
    finally:
        g.lease.release()
    assert ctx.store.get_lease(lease_key(job["jobId"])) is None


def test_gate_fences_a_message_that_already_ran(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    first = gate(ctx, delivery(job))
    running_attempt(ctx, job, first.lease)
    first.lease.release()
    again = gate(ctx, delivery(job, host="w2@h"))  # redelivered to another worker
    assert again.kind is GateKind.DUPLICATE and "already ran attempt 1" in again.reason
    assert ctx.store.get_lease(lease_key(job["jobId"])) is None  # the duplicate took nothing


def test_gate_fences_recovered_messages_and_finished_steps(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    ctx.store.update_job(job["jobId"], {"recoveredMessages": ["t1/0"]})
    assert gate(ctx, delivery(job)).kind is GateKind.DUPLICATE
    steps = [{**job["steps"][0], "status": "succeeded"}, job["steps"][1]]
    ctx.store.update_job(job["jobId"], {"steps": steps})
    g = gate(ctx, delivery(job, task_id="t9"))
    assert g.kind is GateKind.DUPLICATE and "already succeeded" in g.reason


def test_gate_waits_for_a_live_lease_then_asks_for_a_requeue(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    assert ctx.store.acquire_lease(lease_key(job["jobId"]), "w9@h/other/0", 30)
    started = time.monotonic()
    g = gate(ctx, delivery(job), busy_wait=0.4)
    assert g.kind is GateKind.BUSY and g.countdown == 1.0 and "w9@h/other/0" in g.reason
    assert time.monotonic() - started >= 0.4  # it waited its busy_wait before giving up


def test_gate_gets_a_lease_freed_while_it_waits(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    key = lease_key(job["jobId"])
    assert ctx.store.acquire_lease(key, "w9@h/other/0", 30)
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # the gate's poll: the other holder leaves during the first
        polls.append(seconds)
        if len(polls) == 1:
            ctx.store.release_lease(key, "w9@h/other/0")

    g = enter(ctx, delivery(job), ttl=5.0, busy_wait=60.0, sweep_interval=0.5, sleep=sleep)
    assert g.kind is GateKind.RUN and g.lease is not None and len(polls) == 1
    g.lease.release()


def test_gate_leaves_an_expired_lease_to_the_sweeper(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    assert ctx.store.acquire_lease(lease_key(job["jobId"]), "dead@h/x/0", 0.05)
    time.sleep(0.1)
    g = gate(ctx, delivery(job), busy_wait=0.2, sweep_interval=0.5)
    assert g.kind is GateKind.BUSY and g.countdown == 0.5


def test_gate_lets_stale_and_finished_jobs_through_without_a_lease(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    stale = Delivery(job_id=job["jobId"], step_index=0, epoch=7, task_id="t", retries=0, hostname="h",
                     strategy="initial")
    g = gate(ctx, stale)
    assert g.kind is GateKind.RUN and g.lease is None  # the step runner stops it (stale epoch)
    assert ctx.store.get_lease(lease_key(job["jobId"])) is None


def test_redeliveries_that_die_before_the_attempt_end_the_job(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    for n in range(MAX_PRESTART_LOSSES + 1):  # same message, same worker: its pool child keeps dying
        g = gate(ctx, delivery(job))
        assert g.kind is GateKind.RUN, n
        assert g.lease is not None
        held(g)._stop_thread()  # the child died holding the lease: nobody releases it
    last = gate(ctx, delivery(job))
    assert last.kind is GateKind.FAILED
    failed = stored(ctx, job)
    assert failed["status"] == "failed" and failed["retryable"] is True
    assert failed["prestartLosses"] == {"0:0": MAX_PRESTART_LOSSES + 1}
    assert [e["event"] for _, e in ctx.store.list_events(job["jobId"])][-1] == "task.job.failed"


# -- the sweeper ------------------------------------------------------------------------------------

def test_sweeper_records_a_lost_attempt_and_sends_the_step_again(ctx: Context, app: Celery, redis_url: str,
                                                                 new_job: Callable[[], Any]) -> None:
    job = new_job()
    g = enter(ctx, delivery(job), ttl=0.3, busy_wait=0.1, sweep_interval=0.1)
    running_attempt(ctx, job, held(g))
    held(g)._stop_thread()  # the worker dies
    sweeper = Sweeper(app, ctx, "w2@h", ClusterOptions(lease_ttl=5, sweep_interval=0.1))
    assert sweeper.sweep_once() == []  # still live
    time.sleep(0.35)
    assert sweeper.sweep_once() == [job["jobId"]]
    lost = ctx.store.get_attempt(job["jobId"], 0, 1)
    assert lost is not None
    assert lost["status"] == "failed" and lost["detector"] == "worker_lost"
    assert lost["failureClass"] == "transient_runtime" and lost["strategy"] == "queue_retry"
    [body] = sent(redis_url)
    assert body["step_index"] == 0 and body["strategy"] == "queue_retry"
    assert body["retry_context"]["failure"]["detector"] == "worker_lost"
    assert ctx.store.get_lease(lease_key(job["jobId"])) is None  # released for the retry
    assert sweeper.sweep_once() == []  # done once
    names = [e["event"] for _, e in ctx.store.list_events(job["jobId"])]
    assert "task.step.attempt.failed" in names and "task.self_heal.triggered" in names


def test_two_sweepers_recover_a_job_once(ctx: Context, app: Celery, redis_url: str,
                                         new_job: Callable[[], Any], tmp_path: Path) -> None:
    jobs = [new_job() for _ in range(4)]
    for n, job in enumerate(jobs):
        g = enter(ctx, delivery(job, task_id=f"t{n}"), ttl=0.2, busy_wait=0.1, sweep_interval=0.1)
        running_attempt(ctx, job, held(g))
        held(g)._stop_thread()
    time.sleep(0.3)
    other = build_context(ctx.settings, sinks=[])  # a second worker: its own store connection
    sweepers = [Sweeper(app, ctx, "w2@h", ClusterOptions(lease_ttl=5)),
                Sweeper(app, other, "w3@h", ClusterOptions(lease_ttl=5))]
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.sweep_once())) for s in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for r in results for j in r) == sorted(j["jobId"] for j in jobs)
    assert sorted(b["job_id"] for b in sent(redis_url)) == sorted(j["jobId"] for j in jobs)


def test_sweeper_resends_a_message_that_died_before_its_attempt(ctx: Context, app: Celery, redis_url: str,
                                                                new_job: Callable[[], Any]) -> None:
    job = new_job()
    g = enter(ctx, delivery(job), ttl=0.2, busy_wait=0.1, sweep_interval=0.1)
    held(g)._stop_thread()  # died while preparing the workspace
    time.sleep(0.3)
    assert Sweeper(app, ctx, "w2@h", ClusterOptions(lease_ttl=5)).sweep_once() == [job["jobId"]]
    after = stored(ctx, job)
    assert after["recoveredMessages"] == ["t1/0"] and after["inflight"] is None
    assert after["prestartLosses"] == {"0:0": 1}
    [body] = sent(redis_url)
    assert body["step_index"] == 0 and body["strategy"] == "initial"
    # the original comes back later (visibility timeout): it does nothing
    assert gate(ctx, delivery(job, host="w2@h")).kind is GateKind.DUPLICATE


def test_a_retry_pinned_to_a_dead_worker_goes_to_any_worker(ctx: Context, app: Celery, redis_url: str,
                                                            new_job: Callable[[], Any]) -> None:
    job = new_job()
    d = delivery(job)
    g = enter(ctx, d, ttl=5, busy_wait=0.1, sweep_interval=0.1)
    running_attempt(ctx, job, held(g))
    ctx.store.transition_attempt(job["jobId"], 0, 1, "running", {"status": "failed"})
    envelope = {"strategy": "soft_reset", "attempt": 2}
    assert hand_over_to(ctx, held(g), d, retries=1, strategy="soft_reset", retry_context=envelope, ttl=0.2)
    held(g).release()  # handed over: stays with the retry
    assert (ctx.store.get_lease(lease_key(job["jobId"])) or {}).get("owner") == "w1@h/t1/1"
    time.sleep(0.3)  # the worker died before the retry came back to its queue
    assert Sweeper(app, ctx, "w2@h", ClusterOptions(lease_ttl=5)).sweep_once() == [job["jobId"]]
    [body] = sent(redis_url)
    assert body["strategy"] == "queue_retry" and body["retry_context"] == {"strategy": "queue_retry", "attempt": 2}
    assert stored(ctx, job)["recoveredMessages"] == ["t1/1"]
    assert stored(ctx, job).get("prestartLosses") is None  # never delivered: not a loss


def test_a_live_pinned_retry_keeps_its_lease(ctx: Context, new_job: Callable[[], Any]) -> None:
    job = new_job()
    d = delivery(job)
    g = enter(ctx, d, ttl=5, busy_wait=0.1, sweep_interval=0.1)
    assert hand_over_to(ctx, held(g), d, retries=1, strategy="soft_reset", retry_context=None, ttl=5)
    retry = gate(ctx, delivery(job, retries=1))  # the retry arrives on the same worker
    assert retry.kind is GateKind.RUN and retry.lease is not None
    assert stored(ctx, job)["inflight"]["deliveries"] == 1
    retry.lease.release()


# -- options and start-up checks -------------------------------------------------------------------

def test_cluster_options_env_over_config_over_defaults() -> None:
    assert cluster_options({}, env={}) == ClusterOptions()
    opts = cluster_options({"lease_ttl_seconds": 30, "sweep_interval_seconds": 2},
                           env={"SELFHEAL_LEASE_TTL_SECONDS": "12", "SELFHEAL_VISIBILITY_TIMEOUT": "7200"})
    assert (opts.lease_ttl, opts.sweep_interval, opts.visibility_timeout) == (12.0, 2.0, 7200.0)
    assert opts.renew_every == 1.0 and opts.worst_case_pickup == 14.0
    assert ClusterOptions().worst_case_pickup <= 10.0  # issue 16: a lost worker's step runs again within 10 s


def test_fence_leaves_the_kill_grace_before_the_lease_can_expire(ctx: Context) -> None:
    opts = ClusterOptions()  # 8 s TTL, renewed every second
    assert opts.fence_after(5.0) == 2.0 and opts.fence_after(0.0) == 8 * 2 / 3  # never over 2/3 of the TTL
    assert ClusterOptions(lease_ttl=20).fence_after(5.0) == 20 * 2 / 3  # the former defaults are unchanged
    now = [100.0]
    assert ctx.store.acquire_lease("attempt:j", "me", opts.lease_ttl)
    lease = AttemptLease(ctx.store, "attempt:j", "me", ttl=opts.lease_ttl, message="t/0", clock=lambda: now[0],
                         renew_every=opts.renew_every)
    lease.fit_kill_grace(5.0)
    assert lease.fence == opts.fence_after(5.0)
    now[0] += 1.9
    assert not lease.lost
    assert lease.renew() and not lease.lost  # a renewal moves the fence on
    now[0] += 1.9
    assert not lease.lost
    now[0] += 0.2  # 2.1 s without a renewal: TERM now, KILL after 5 s, 0.9 s before the 8 s TTL runs out
    assert lease.lost
    lease.fit_kill_grace(30.0)  # a grace longer than the TTL: fence after two renewals at least
    assert lease.fence == 2 * opts.renew_every
    lease.release()


@pytest.mark.parametrize(("table", "env", "where"), [
    ({"lease_ttl_seconds": "soon"}, {}, "config: worker.lease_ttl_seconds"),
    ({}, {"SELFHEAL_SWEEP_INTERVAL_SECONDS": "-1"}, "SELFHEAL_SWEEP_INTERVAL_SECONDS"),
    ({}, {"SELFHEAL_VISIBILITY_TIMEOUT": "inf"}, "SELFHEAL_VISIBILITY_TIMEOUT"),
    ({"lease_ttl_seconds": 0.1}, {}, "lease_ttl_seconds"),
])
def test_cluster_options_errors_name_the_key(table: dict[str, Any], env: dict[str, str], where: str) -> None:
    with pytest.raises(ConfigError) as err:
        cluster_options(table, env=env)
    assert err.value.where == where


@given(st.floats(min_value=0.5, max_value=1e6, allow_nan=False))
def test_cluster_options_accept_any_positive_ttl_text(ttl: float) -> None:
    assert cluster_options({}, env={"SELFHEAL_LEASE_TTL_SECONDS": repr(ttl)}).lease_ttl == ttl


def test_startup_warnings() -> None:
    ok: dict[str, Any] = dict(broker_url="redis://r:6379/0", store_url="redis://r:6379/0", transport_options=None,
              acks_on_failure_or_timeout=True, budgets=Budgets(), opts=ClusterOptions())
    assert startup_warnings(**ok) == []  # defaults: 935 s hard limit < 3600 s visibility
    long_steps = startup_warnings(**{**ok, "budgets": Budgets(step_timeout_seconds=4000)})
    assert len(long_steps) == 1 and "hard time limit 4035s" in long_steps[0] and "3600s" in long_steps[0]
    short_vt = startup_warnings(**{**ok, "transport_options": {"visibility_timeout": 500}})
    assert [w.split(" ")[0] for w in short_vt] == ["hard", "retry"]
    assert any("SQLite" in w or "sqlite" in w for w in startup_warnings(**{**ok, "store_url": "sqlite:///x.db"}))
    assert any("redelivered forever" in w for w in startup_warnings(**{**ok, "acks_on_failure_or_timeout": False}))
    slow = startup_warnings(**{**ok, "opts": ClusterOptions(lease_ttl=6, sweep_interval=10)})
    assert any("sweep interval" in w for w in slow) and any("kill grace" in w for w in slow)
    assert startup_warnings(**{**ok, "broker_url": "filesystem://", "store_url": "sqlite:///x"}) == []


def test_configure_app_sets_transport_and_visibility(redis_url: str) -> None:
    app = Celery("cfg", broker=redis_url, set_as_current=False)
    configure_app(app.conf, redis_url, ClusterOptions(visibility_timeout=60))
    assert app.conf.broker_transport == "celery_selfheal.cluster.redis_transport:Transport"
    assert app.conf.broker_transport_options == {"visibility_timeout": 60, "unacked_restore_interval": 10,
                                                 "unacked_restore_throttle": 1}
    mine = Celery("cfg2", broker=redis_url, set_as_current=False)
    mine.conf.broker_transport_options = {"visibility_timeout": 9}
    configure_app(mine.conf, redis_url, ClusterOptions(visibility_timeout=60))
    assert mine.conf.broker_transport_options["visibility_timeout"] == 9  # the app's own setting wins
    with mine.connection_for_write() as conn:  # the transport class resolves and talks to Redis
        conn.ensure_connection(max_retries=1)
        assert type(conn.transport).__module__ == "celery_selfheal.cluster.redis_transport"
