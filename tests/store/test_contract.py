"""The state-store contract, run against both real backends: SQLite in tmp_path and a real
redis-server (tests/redis_server.py). Concurrency is tested with real forked processes that share
a store object created (and used) before the fork, as Celery's prefork pool does."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_selfheal.errors import ConfigError
from celery_selfheal.store import StateStore, open_store
from celery_selfheal.store.redis import RedisStore
from celery_selfheal.store.sqlite import SQLiteStore

FORK = multiprocessing.get_context("fork")


def job(job_id: str = "j1", **fields: Any) -> dict[str, Any]:
    return {"jobId": job_id, "status": "queued", "epoch": 0, **fields}


# -- jobs ------------------------------------------------------------------------------------
def test_jobs_create_get_list(store: StateStore) -> None:
    assert store.get_job("j1") is None
    for n in range(3):
        store.create_job(job(f"j{n}", steps=[], objective="ünïcode ✓"))
    assert store.get_job("j1") == job("j1", steps=[], objective="ünïcode ✓")
    with pytest.raises(KeyError):
        store.create_job(job("j1", status="running"))
    assert store.get_job("j1")["status"] == "queued"  # type: ignore[index]
    assert [j["jobId"] for j in store.list_jobs()] == ["j2", "j1", "j0"]
    assert [j["jobId"] for j in store.list_jobs(limit=2)] == ["j2", "j1"]


def test_update_job_merges_and_compares(store: StateStore) -> None:
    store.create_job(job(owner=None, tags=["a"]))
    assert store.update_job("j1", {"status": "running", "extra": {"k": [1, 2]}})
    assert store.update_job("j1", {"epoch": 1}, expect={"status": "running", "epoch": 0, "owner": None})
    assert not store.update_job("j1", {"epoch": 9}, expect={"epoch": 0})
    assert not store.update_job("j1", {"epoch": 9}, expect={"status": "running", "missing": 1})
    assert store.update_job("j1", {"tags": ["b"]}, expect={"tags": ("a",)})  # compared as JSON
    assert store.get_job("j1") == job(status="running", epoch=1, owner=None, tags=["b"], extra={"k": [1, 2]})
    assert not store.update_job("nope", {"status": "x"})
    assert store.get_job("nope") is None


def test_records_are_json_only(store: StateStore) -> None:
    with pytest.raises(TypeError):
        store.create_job(job(when=object()))
    with pytest.raises(ValueError):
        store.append_event("j1", {"x": float("nan")})
    store.create_job(job())
    with pytest.raises(TypeError):
        store.update_job("j1", {"bad": {1, 2}})
    assert store.get_job("j1") == job() and store.list_events("j1") == []


# -- attempts --------------------------------------------------------------------------------
def test_attempts_put_get_transition_list(store: StateStore) -> None:
    for step, attempt in [(1, 2), (0, 2), (1, 1), (0, 1), (10, 1)]:
        store.put_attempt("j1", step, attempt, {"status": "running", "n": f"{step}/{attempt}"})
    assert store.get_attempt("j1", 0, 3) is None
    assert store.get_attempt("j1", 1, 2) == {"status": "running", "n": "1/2", "jobId": "j1",
                                              "stepIndex": 1, "attempt": 2}
    order = [(a["stepIndex"], a["attempt"]) for a in store.list_attempts("j1")]
    assert order == [(0, 1), (0, 2), (1, 1), (1, 2), (10, 1)]
    assert [a["attempt"] for a in store.list_attempts("j1", step_index=1)] == [1, 2]
    assert store.list_attempts("other") == []

    assert store.transition_attempt("j1", 0, 1, "running", {"status": "failed", "exit": 1})
    assert not store.transition_attempt("j1", 0, 1, "running", {"status": "lost"})
    assert not store.transition_attempt("j1", 7, 1, "running", {"status": "lost"})
    assert store.get_attempt("j1", 0, 1)["status"] == "failed"  # type: ignore[index]
    store.put_attempt("j1", 0, 1, {"status": "replaced"})
    assert store.get_attempt("j1", 0, 1)["status"] == "replaced"  # type: ignore[index]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.dictionaries(st.text(max_size=10), JSON, max_size=5))
def test_any_json_record_round_trips(store: StateStore, record: dict[str, Any]) -> None:
    store.put_attempt("rt", 0, 1, record)
    assert store.get_attempt("rt", 0, 1) == {**record, "jobId": "rt", "stepIndex": 0, "attempt": 1}
    seq = store.append_event("rt", record)
    assert store.list_events("rt", after=seq - 1) == [(seq, record)]


# -- events ----------------------------------------------------------------------------------
def test_events_numbered_per_job_and_paged(store: StateStore) -> None:
    assert store.list_events("j1") == []
    seqs = [store.append_event("j1", {"event": "e", "i": i}) for i in range(10)]
    assert seqs == list(range(1, 11))
    assert store.append_event("j2", {"event": "other"}) == 1
    assert [s for s, _ in store.list_events("j1")] == seqs
    assert store.list_events("j1", after=3, limit=2) == [(4, {"event": "e", "i": 3}),
                                                          (5, {"event": "e", "i": 4})]
    assert [s for s, _ in store.list_events("j1", after=8)] == [9, 10]
    assert store.list_events("j1", after=10) == [] and store.list_events("j1", after=2, limit=0) == []
    assert store.list_events("j2") == [(1, {"event": "other"})]


# -- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_recorded_once_per_step_and_epoch(store: StateStore) -> None:
    assert store.record_checkpoint("j1", 0, 0, {"patchSha256": "a"})
    assert not store.record_checkpoint("j1", 0, 0, {"patchSha256": "b"})
    assert store.list_checkpoints("j1") == [{"patchSha256": "a", "jobId": "j1", "stepIndex": 0, "epoch": 0,
                                             "superseded": False}]


def test_superseded_checkpoints_kept_as_history(store: StateStore) -> None:
    for step in (2, 0, 1):
        assert store.record_checkpoint("j1", step, 0, {"sha": f"{step}@0"})
    assert [c["sha"] for c in store.list_checkpoints("j1")] == ["0@0", "1@0", "2@0"]
    assert store.supersede_checkpoints("j1", 1) == 2
    assert store.supersede_checkpoints("j1", 1) == 0  # already superseded
    assert [c["sha"] for c in store.list_checkpoints("j1")] == ["0@0"]
    assert store.record_checkpoint("j1", 1, 1, {"sha": "1@1"})
    assert not store.record_checkpoint("j1", 1, 0, {"sha": "again"})  # superseded still counts
    assert [c["sha"] for c in store.list_checkpoints("j1")] == ["0@0", "1@1"]
    history = store.list_checkpoints("j1", include_superseded=True)
    assert [(c["sha"], c["superseded"]) for c in history] == [
        ("0@0", False), ("1@0", True), ("1@1", False), ("2@0", True)]
    assert store.supersede_checkpoints("j1", 0) == 2
    assert store.list_checkpoints("j1") == [] and store.list_checkpoints("other") == []


# -- control and audit -----------------------------------------------------------------------
def test_control_requests_queue_and_resolve(store: StateStore) -> None:
    ids = [store.add_control("j1", {"action": a, "by": "op"}) for a in ("pause", "cancel", "resume")]
    assert len(set(ids)) == 3
    pending = store.pending_control("j1")
    assert [r["action"] for r in pending] == ["pause", "cancel", "resume"]
    assert pending[0] == {"action": "pause", "by": "op", "jobId": "j1", "requestId": ids[0],
                          "state": "pending"}
    assert store.resolve_control("j1", ids[1], {"ackedAt": 1.5})
    assert not store.resolve_control("j1", ids[1], {"ackedAt": 2})
    assert store.resolve_control("j1", ids[0], {"state": "rejected", "reason": "wrong state"})
    assert not store.resolve_control("j1", "no-such-id", {}) and not store.resolve_control("j2", ids[2], {})
    assert [r["action"] for r in store.pending_control("j1")] == ["resume"]
    assert [(r["action"], r["state"]) for r in store.list_control("j1")] == [
        ("pause", "rejected"), ("cancel", "done"), ("resume", "pending")]
    assert store.list_control("j1")[1]["ackedAt"] == 1.5 and store.pending_control("j2") == []


def test_audit_oldest_first(store: StateStore) -> None:
    for n in range(3):
        store.append_audit("j1", {"who": "op", "action": "pause", "n": n})
    assert [r["n"] for r in store.list_audit("j1")] == [0, 1, 2] and store.list_audit("j2") == []


# -- leases ----------------------------------------------------------------------------------
def test_lease_ownership(store: StateStore) -> None:
    before = time.time()
    assert store.acquire_lease("attempt:j1:0", "w1", 30)
    assert store.acquire_lease("attempt:j1:0", "w1", 30)  # ours already: re-acquire extends
    assert not store.acquire_lease("attempt:j1:0", "w2", 30)
    lease = store.get_lease("attempt:j1:0")
    assert lease is not None and lease["owner"] == "w1" and before + 29 < lease["expiresAt"] < before + 31
    assert store.renew_lease("attempt:j1:0", "w1", 60) and not store.renew_lease("attempt:j1:0", "w2", 60)
    assert store.get_lease("attempt:j1:0")["expiresAt"] > before + 59  # type: ignore[index]
    assert not store.release_lease("attempt:j1:0", "w2")
    assert store.release_lease("attempt:j1:0", "w1") and not store.release_lease("attempt:j1:0", "w1")
    assert store.get_lease("attempt:j1:0") is None and store.acquire_lease("attempt:j1:0", "w2", 30)


def test_lease_expiry(store: StateStore) -> None:
    assert store.acquire_lease("attempt:j1:0", "w1", 0.2)
    assert store.acquire_lease("attempt:j2:0", "w1", 0.2)
    assert store.acquire_lease("attempt:j3:0", "w1", 0.2)
    assert store.acquire_lease("other:j1", "w1", 0.2)
    assert store.acquire_lease("attempt:live", "w1", 30)
    assert store.expired_leases("attempt:") == []
    time.sleep(0.3)
    assert store.get_lease("attempt:j1:0") is None
    assert store.release_lease("attempt:j3:0", "w1")  # released late by its owner: not listed
    expired = dict(store.expired_leases("attempt:"))
    assert sorted(expired) == ["attempt:j1:0", "attempt:j2:0"] and expired["attempt:j1:0"]["owner"] == "w1"
    assert expired["attempt:j1:0"]["expiresAt"] <= time.time()
    assert sorted(k for k, _ in store.expired_leases("")) == ["attempt:j1:0", "attempt:j2:0", "other:j1"]
    # a recoverer claims a lapsed lease: the late owner can no longer renew it
    assert store.acquire_lease("attempt:j1:0", "recoverer", 30)
    assert not store.renew_lease("attempt:j1:0", "w1", 30)
    assert store.renew_lease("attempt:j2:0", "w1", 30)  # lapsed but unclaimed: still ours
    assert store.expired_leases("attempt:") == []


# -- concurrency with real processes ---------------------------------------------------------
def _child(work: Callable[..., Any], store: StateStore, barrier: Any, results: Any, n: int) -> None:
    barrier.wait(timeout=20)
    try:
        results.put((n, work(store, n)))
    except BaseException as exc:
        results.put((n, f"error: {exc!r}"))


def run_processes(store: StateStore, work: Callable[[StateStore, int], Any], count: int = 4) -> list[Any]:
    """Run ``work(store, n)`` in ``count`` forked processes released together; their results by n."""
    barrier, results = FORK.Barrier(count), FORK.Queue()
    procs = [FORK.Process(target=_child, args=(work, store, barrier, results, n)) for n in range(count)]
    for proc in procs:
        proc.start()
    found = dict(results.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0
    assert not [r for r in found.values() if isinstance(r, str) and r.startswith("error")], found
    return [found[n] for n in range(count)]


def _append_50(store: StateStore, n: int) -> list[int]:
    return [store.append_event("j1", {"proc": n, "i": i}) for i in range(50)]


def test_concurrent_events_get_gapless_sequence(store: StateStore) -> None:
    # the store is not used before the fork: for SQLite the children also race to create the file
    # and switch it to WAL (this caught SQLite answering "locked" at once during that switch)
    seqs = run_processes(store, _append_50)
    assert sorted(s for per_proc in seqs for s in per_proc) == list(range(1, 201))
    assert all(per_proc == sorted(per_proc) for per_proc in seqs)
    events = store.list_events("j1")
    assert [s for s, _ in events] == list(range(1, 201))
    for n in range(4):
        assert [e["i"] for _, e in events if e["proc"] == n] == list(range(50))


def test_threads_share_a_store(store: StateStore) -> None:
    # worker threads (watchdogs, output readers) append events next to the task's own thread
    with ThreadPoolExecutor(4) as pool:
        seqs = list(pool.map(lambda n: _append_50(store, n), range(4)))
    assert sorted(s for per_thread in seqs for s in per_thread) == list(range(1, 201))


def _race_checkpoints(store: StateStore, n: int) -> list[bool]:
    return [store.record_checkpoint("j1", step, 1, {"by": n}) for step in range(20)]


def test_racing_checkpoints_recorded_once(store: StateStore) -> None:
    store.create_job(job())  # used before the fork: children must not share the connection
    wins = run_processes(store, _race_checkpoints)
    winners = {step: [n for n in range(4) if wins[n][step]] for step in range(20)}
    assert all(len(w) == 1 for w in winners.values()), winners
    assert [c["by"] for c in store.list_checkpoints("j1")] == [winners[s][0] for s in range(20)]


def _race_transitions(store: StateStore, n: int) -> list[bool]:
    return [store.transition_attempt("j1", step, 1, "running", {"status": "lost", "by": n})
            for step in range(20)]


def test_racing_transitions_apply_once(store: StateStore) -> None:
    for step in range(20):
        store.put_attempt("j1", step, 1, {"status": "running"})
    wins = run_processes(store, _race_transitions)
    for step in range(20):
        winners = [n for n in range(4) if wins[n][step]]
        assert len(winners) == 1 and store.get_attempt("j1", step, 1)["by"] == winners[0]  # type: ignore[index]


def _cas_increment(store: StateStore, n: int) -> int:
    tries = 0
    for _ in range(25):
        while True:
            tries += 1
            count = store.get_job("j1")["count"]  # type: ignore[index]
            if store.update_job("j1", {"count": count + 1}, expect={"count": count}):
                break
    return tries


def test_compare_and_set_loses_no_update(store: StateStore) -> None:
    store.create_job(job(count=0))
    run_processes(store, _cas_increment)
    assert store.get_job("j1")["count"] == 100  # type: ignore[index]


def _control_traffic(store: StateStore, n: int) -> list[bool]:
    for i in range(10):
        store.add_control("j1", {"action": "pause", "proc": n, "i": i})
    deadline = time.monotonic() + 60  # every process has added its requests: all resolve the same ones
    while len(store.list_control("j1")) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    return [store.resolve_control("j1", r["requestId"], {"by": n}) for r in store.list_control("j1")]


def test_control_requests_never_lost_and_resolved_once(store: StateStore) -> None:
    outcomes = run_processes(store, _control_traffic)
    requests = store.list_control("j1")
    assert sorted((r["proc"], r["i"]) for r in requests) == [(n, i) for n in range(4) for i in range(10)]
    assert all(r["state"] == "done" for r in requests) and store.pending_control("j1") == []
    assert sum(sum(o) for o in outcomes) == 40


def _race_lease(store: StateStore, n: int) -> bool:
    return store.acquire_lease("attempt:j1:0", f"w{n}", 30)


def test_racing_lease_has_one_owner(store: StateStore) -> None:
    wins = run_processes(store, _race_lease)
    assert wins.count(True) == 1
    assert store.get_lease("attempt:j1:0")["owner"] == f"w{wins.index(True)}"  # type: ignore[index]


# -- backend specifics -----------------------------------------------------------------------
# -- retention (selfheal gc) ------------------------------------------------------------------
def test_finished_jobs_before_a_time(store: StateStore) -> None:
    store.create_job(job("old-ok", status="succeeded", finishedAt="2026-01-01T00:00:00.000Z"))
    store.create_job(job("old-failed", status="failed", finishedAt="2026-01-02T00:00:00.000Z"))
    store.create_job(job("new-cancelled", status="cancelled", finishedAt="2026-03-01T00:00:00.000Z"))
    store.create_job(job("running", status="running", finishedAt="2025-01-01T00:00:00.000Z"))  # stale field
    store.create_job(job("paused", status="paused"))
    store.create_job(job("no-time", status="succeeded"))
    found = store.finished_jobs("2026-02-01T00:00:00.000Z")
    assert [j["jobId"] for j in found] == ["old-ok", "old-failed"]
    assert [j["jobId"] for j in store.finished_jobs("2026-02-01T00:00:00.000Z", limit=1)] == ["old-ok"]
    assert [j["jobId"] for j in store.finished_jobs("2027-01-01T00:00:00.000Z")] == ["old-ok", "old-failed",
                                                                                   "new-cancelled"]


def test_delete_job_removes_everything_under_it_and_nothing_else(store: StateStore) -> None:
    for job_id in ("gone", "kept"):
        store.create_job(job(job_id, status="succeeded"))
        store.put_attempt(job_id, 0, 1, {"status": "succeeded"})
        store.append_event(job_id, {"event": "task.job.started"})
        store.record_checkpoint(job_id, 0, 0, {"stepIndex": 0})
        store.supersede_checkpoints(job_id, 0)
        store.record_checkpoint(job_id, 0, 1, {"stepIndex": 0})
        store.add_control(job_id, {"action": "pause"})
        store.append_audit(job_id, {"action": "pause", "outcome": "requested"})
        assert store.acquire_lease(f"attempt:{job_id}", "w1", 0.05)
        assert store.acquire_lease(f"control:{job_id}", "w1", 60)
    time.sleep(0.1)
    assert store.delete_job("gone") is True
    assert store.get_job("gone") is None and store.list_attempts("gone") == []
    assert store.list_events("gone") == [] and store.list_checkpoints("gone", include_superseded=True) == []
    assert store.list_control("gone") == [] and store.list_audit("gone") == []
    assert store.get_lease("control:gone") is None
    assert [k for k, _ in store.expired_leases("attempt:")] == ["attempt:kept"]
    assert [j["jobId"] for j in store.list_jobs()] == ["kept"]
    assert len(store.list_checkpoints("kept", include_superseded=True)) == 2 and store.list_audit("kept")
    assert store.get_lease("control:kept") is not None
    assert store.delete_job("gone") is False
    store.create_job(job("gone"))  # the id is free again, its history starts from nothing
    assert store.append_event("gone", {"event": "x"}) == 1


def test_sqlite_url_paths_and_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///rel/dir/state.db")
    assert isinstance(relative, SQLiteStore) and relative.path == Path("rel/dir/state.db")
    relative.create_job(job())
    assert (tmp_path / "rel/dir/state.db").exists()
    absolute = open_store(f"sqlite:///{tmp_path}/abs/state.db")  # four slashes: absolute path
    absolute.append_event("j1", {})
    with sqlite3.connect(tmp_path / "abs/state.db") as conn:
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)
    for bad in ("sqlite://", "sqlite:///", "postgres://x"):
        with pytest.raises(ConfigError):
            open_store(bad)


def test_redis_keys_live_under_the_prefix(redis_url: str) -> None:
    a = open_store(redis_url + "?prefix=app-a:")
    b = RedisStore(redis_url + "?prefix=ignored:", prefix="app-b:")
    assert isinstance(a, RedisStore) and (a.prefix, b.prefix) == ("app-a:", "app-b:")
    assert RedisStore(redis_url).prefix == "selfheal:"
    for s in (a, b):
        s.create_job(job())
        s.append_event("j1", {})
        s.record_checkpoint("j1", 0, 0, {})
        s.add_control("j1", {})
        s.acquire_lease("attempt:j1:0", "w", 30)
    assert a.list_events("j1") == [(1, {})] and b.list_events("j1") == [(1, {})]
    keys: list[str] = a._r().keys("*")
    assert keys and all(k.startswith(("app-a:", "app-b:")) for k in keys)


def test_redis_store_survives_a_restart_with_persistence(redis_server_factory: Callable[..., Any]) -> None:
    server = redis_server_factory(appendonly="yes")
    store = RedisStore(server.url)
    store.create_job(job())
    assert store.append_event("j1", {"n": 1}) == 1
    server.restart()
    assert store.append_event("j1", {"n": 2}) == 2  # same store object: reconnects on its own
    assert store.get_job("j1") == job() and store.update_job("j1", {"status": "running"})


# -- job pages (list_jobs of the API: `selfheal jobs`, /api/jobs) ---------------------------------
def test_page_jobs_newest_first_with_cursor_and_status_filter(store: StateStore) -> None:
    for n in range(7):
        store.create_job(job(f"p{n}", status="queued"))
    for n in (1, 4, 5):
        assert store.update_job(f"p{n}", {"status": "running"})
    assert store.update_job("p5", {"status": "failed"})
    assert store.update_job("p0", {"epoch": 3})  # no status change: the index is unchanged
    seen, before = [], None
    while True:
        rows, before = store.page_jobs(limit=3, before=before)
        seen.append([r["jobId"] for r in rows])
        if before is None:
            break
    assert seen == [["p6", "p5", "p4"], ["p3", "p2", "p1"], ["p0"]]
    assert [r["jobId"] for r in store.page_jobs(status="running", limit=10)[0]] == ["p4", "p1"]
    assert [r["jobId"] for r in store.page_jobs(status="failed")[0]] == ["p5"]
    rows, nxt = store.page_jobs(status="queued", limit=2)
    assert [r["jobId"] for r in rows] == ["p6", "p3"] and nxt is not None
    rows, nxt = store.page_jobs(status="queued", limit=2, before=nxt)
    assert [r["jobId"] for r in rows] == ["p2", "p0"] and nxt is None
    assert store.page_jobs(status="cancelled") == ([], None)
    assert store.page_jobs(limit=0) == ([], None)
    assert not store.update_job("p4", {"status": "succeeded"}, expect={"status": "queued"})
    assert [r["jobId"] for r in store.page_jobs(status="running")[0]] == ["p4", "p1"]
