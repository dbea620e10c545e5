"""`StateStore.write_job` (one atomic write of a job stage: job, step entry, attempt, checkpoint,
events) and the gate's lease acquire that never takes another owner's expired lease, on both real
backends."""

from __future__ import annotations

import time
from typing import Any

import pytest

from celery_selfheal.store import StateStore
from celery_selfheal.store.base import AttemptWrite
from tests.store.test_contract import job, run_processes


def _steps(n: int = 2) -> list[dict[str, Any]]:
    return [{"stepId": f"s{i}", "status": "pending"} for i in range(n)]


def test_write_job_applies_every_part_at_once(store: StateStore) -> None:
    store.create_job(job(steps=_steps()))
    assert store.append_event("j1", {"event": "before"}) == 1
    seqs = store.write_job("j1", {"status": "running", "currentStep": 1}, expect={"epoch": 0},
                           step=(1, {"status": "running", "attempts": 1}),
                           attempt=AttemptWrite(1, 1, {"status": "running", "note": [1, 2]}),
                           events=[{"event": "a"}, {"event": "b"}])
    assert seqs == [2, 3]
    got = store.get_job("j1")
    assert got is not None and got["status"] == "running" and got["currentStep"] == 1
    assert got["steps"] == [{"stepId": "s0", "status": "pending"}, {"stepId": "s1", "status": "running", "attempts": 1}]
    assert store.get_attempt("j1", 1, 1) == {"jobId": "j1", "stepIndex": 1, "attempt": 1, "status": "running",
                                             "note": [1, 2]}
    assert [e["event"] for _, e in store.list_events("j1")] == ["before", "a", "b"]
    # the per-status index follows the status (page_jobs)
    assert [j["jobId"] for j in store.page_jobs(status="running")[0]] == ["j1"]
    assert store.page_jobs(status="queued")[0] == []
    assert store.write_job("j1", {"x": 1}) == []  # no events: applied, no numbers


def test_write_job_records_the_checkpoint_with_the_success_once(store: StateStore) -> None:
    """A step's success and its checkpoint in one write: recorded as `record_checkpoint` would, kept
    when one is already recorded for that step and epoch, and not recorded when the write is refused."""
    store.create_job(job(steps=_steps()))
    store.put_attempt("j1", 0, 1, {"status": "running"})
    success: dict[str, Any] = {"step": (0, {"status": "succeeded"}), "events": [{"event": "done"}],
               "attempt": AttemptWrite(0, 1, {"status": "succeeded"}, from_status="running")}
    assert store.write_job("j1", {"currentStep": 1}, expect={"epoch": 1}, **success,
                           checkpoint=(0, 0, {"patchSha256": "refused"})) is None
    assert store.list_checkpoints("j1") == [] and store.get_attempt("j1", 0, 1)["status"] == "running"  # type: ignore[index]
    assert store.write_job("j1", {"currentStep": 1}, expect={"epoch": 0}, **success,
                           checkpoint=(0, 0, {"patchSha256": "a"})) == [1]
    [cp] = store.list_checkpoints("j1")
    assert cp["patchSha256"] == "a" and (cp["jobId"], cp["stepIndex"], cp["epoch"]) == ("j1", 0, 0)
    assert store.get_attempt("j1", 0, 1)["status"] == "succeeded"  # type: ignore[index]
    assert not store.record_checkpoint("j1", 0, 0, {"patchSha256": "b"})  # the same record as before
    store.put_attempt("j1", 1, 1, {"status": "running"})
    store.record_checkpoint("j1", 1, 0, {"patchSha256": "first"})  # e.g. a run that crashed after it
    assert store.write_job("j1", {"currentStep": 2}, step=(1, {"status": "succeeded"}),
                           attempt=AttemptWrite(1, 1, {"status": "succeeded"}, from_status="running"),
                           checkpoint=(1, 0, {"patchSha256": "second"})) == []
    assert [c["patchSha256"] for c in store.list_checkpoints("j1")] == ["a", "first"]


@pytest.mark.parametrize("why", ["expect", "attempt status", "missing attempt", "no such step", "unknown job"])
def test_write_job_writes_nothing_when_a_guard_fails(store: StateStore, why: str) -> None:
    store.create_job(job(steps=_steps()))
    store.put_attempt("j1", 0, 1, {"status": "succeeded"})
    kwargs: dict[str, Any] = {"expect": {"epoch": 0}, "step": (0, {"status": "succeeded"}),
                              "attempt": AttemptWrite(0, 1, {"status": "failed"}, from_status="succeeded"),
                              "events": [{"event": "x"}]}
    job_id = "j1"
    if why == "expect":
        kwargs["expect"] = {"epoch": 1}
    elif why == "attempt status":
        kwargs["attempt"] = AttemptWrite(0, 1, {"status": "failed"}, from_status="running")
    elif why == "missing attempt":
        kwargs["attempt"] = AttemptWrite(0, 2, {"status": "failed"}, from_status="running")
    elif why == "no such step":
        kwargs["step"] = (5, {"status": "succeeded"})
    else:
        job_id = "nope"
    before = store.get_job("j1")
    assert store.write_job(job_id, {"status": "running"}, **kwargs) is None
    assert store.get_job("j1") == before
    assert store.get_attempt("j1", 0, 1) == {"jobId": "j1", "stepIndex": 0, "attempt": 1, "status": "succeeded"}
    assert store.get_attempt("j1", 0, 2) is None
    assert store.list_events("j1") == [] and store.list_events("nope") == []
    assert [j["jobId"] for j in store.page_jobs(status="queued")[0]] == ["j1"]


def test_write_job_transitions_an_attempt_once(store: StateStore) -> None:
    store.create_job(job(steps=_steps(1)))
    store.put_attempt("j1", 0, 1, {"status": "running", "pid": 7})
    done = AttemptWrite(0, 1, {"status": "succeeded"}, from_status="running")
    assert store.write_job("j1", step=(0, {"status": "succeeded"}), attempt=done, events=[{"event": "f"}]) == [1]
    assert store.get_attempt("j1", 0, 1) == {"jobId": "j1", "stepIndex": 0, "attempt": 1, "status": "succeeded",
                                             "pid": 7}
    assert store.write_job("j1", attempt=done, events=[{"event": "f"}]) is None
    assert len(store.list_events("j1")) == 1


def test_write_job_refuses_non_json_before_writing(store: StateStore) -> None:
    store.create_job(job(steps=_steps(1)))
    with pytest.raises((TypeError, ValueError)):
        store.write_job("j1", {"x": 1}, events=[{"bad": float("nan")}])
    assert store.get_job("j1") == job(steps=_steps(1))


def _race_writes(store: StateStore, n: int) -> list[bool]:
    wins = []
    for i in range(10):
        seqs = store.write_job("j1", {"by": n}, step=(0, {f"p{n}": i}),
                               attempt=AttemptWrite(0, i + 1, {"status": "done", "by": n}, from_status="running"),
                               events=[{"event": "e", "by": n, "i": i}])
        wins.append(seqs is not None)
    return wins


def test_racing_writes_apply_once_and_lose_nothing(store: StateStore) -> None:
    store.create_job(job(steps=_steps(1)))
    for i in range(10):
        store.put_attempt("j1", 0, i + 1, {"status": "running"})
    wins = run_processes(store, _race_writes)
    for i in range(10):
        winners = [n for n in range(4) if wins[n][i]]
        assert len(winners) == 1
        assert store.get_attempt("j1", 0, i + 1)["by"] == winners[0]  # type: ignore[index]
    events = store.list_events("j1")
    assert [seq for seq, _ in events] == list(range(1, 11))  # one event per applied write, no gaps
    got = store.get_job("j1")
    assert got is not None
    step = got["steps"][0]
    for n in range(4):  # no process's step merge was lost to another's
        mine = [i for i in range(10) if wins[n][i]]
        assert (f"p{n}" in step) == bool(mine)


def test_gate_acquire_never_takes_another_owners_expired_lease(store: StateStore) -> None:
    assert store.acquire_lease("attempt:j1", "w1", 0.1, take_expired=False)
    assert store.acquire_lease("attempt:j1", "w1", 0.1, take_expired=False)  # ours: extended
    assert not store.acquire_lease("attempt:j1", "w2", 30, take_expired=False)
    time.sleep(0.25)
    assert not store.acquire_lease("attempt:j1", "w2", 30, take_expired=False)  # expired, not swept
    assert [k for k, _ in store.expired_leases("attempt:")] == ["attempt:j1"]
    assert store.acquire_lease("attempt:j1", "w1", 30, take_expired=False)  # its owner may take it back
    assert store.release_lease("attempt:j1", "w1")
    assert store.acquire_lease("attempt:j1", "w2", 30, take_expired=False)  # free


def test_a_stale_guess_of_another_writer_never_decides(redis_url: str) -> None:
    """The Redis store sends a compare-and-set with the text it last saw (one round trip); another
    process's write in between makes that a stale guess: the write must still apply (or be refused)
    on what is stored now."""
    from celery_selfheal.store.redis import RedisStore

    mine, other = RedisStore(redis_url), RedisStore(redis_url)
    try:
        mine.create_job(job(steps=_steps(1)))
        mine.put_attempt("j1", 0, 1, {"status": "running"})
        assert mine.get_job("j1") is not None and mine.get_attempt("j1", 0, 1) is not None  # guesses
        assert other.update_job("j1", {"epoch": 1})
        assert other.transition_attempt("j1", 0, 1, "running", {"pid": 5})
        # the guess says epoch 0: the guard is checked again on the stored record
        assert mine.write_job("j1", {"x": 1}, expect={"epoch": 1}, events=[{"event": "e"}]) == [1]
        assert mine.write_job("j1", {"x": 2}, expect={"epoch": 0}) is None
        done = AttemptWrite(0, 1, {"status": "succeeded"}, from_status="running")
        assert mine.write_job("j1", attempt=done) == []
        assert mine.get_attempt("j1", 0, 1) == {"jobId": "j1", "stepIndex": 0, "attempt": 1, "status": "succeeded",
                                                "pid": 5}
        assert other.update_job("j1", {"y": 1})  # its own guess is stale now: refused, read, applied
        assert mine.transition_attempt("j1", 0, 1, "succeeded", {"z": 1})
        assert other.get_job("j1") == {**job(steps=_steps(1)), "epoch": 1, "x": 1, "y": 1}
    finally:
        mine.close()
        other.close()


def test_job_state_reads_everything_a_step_needs_with_the_lease(store: StateStore) -> None:
    store.create_job(job(steps=_steps()))
    store.put_attempt("j1", 0, 1, {"status": "succeeded"})
    store.record_checkpoint("j1", 0, 0, {"patchSha256": "a"})
    rid = store.add_control("j1", {"action": "pause"})
    empty = store.get_job_state("nope")
    assert (empty.job, empty.attempts, empty.pending, empty.checkpoints, empty.leased) == (None, [], [], [], False)
    snap = store.get_job_state("j1", lease=("attempt:j1", "w1", 30))
    assert snap.leased and store.get_lease("attempt:j1")["owner"] == "w1"  # type: ignore[index]
    assert snap.job == store.get_job("j1") and snap.attempts == store.list_attempts("j1")
    assert [r["requestId"] for r in snap.pending] == [rid] and snap.checkpoints == store.list_checkpoints("j1")
    assert not store.get_job_state("j1", lease=("attempt:j1", "w2", 30)).leased  # someone else's
    assert store.get_job_state("j1", lease=("attempt:j1", "w1", 30)).leased  # ours again
    assert not store.get_job_state("j1").leased  # no lease asked for
