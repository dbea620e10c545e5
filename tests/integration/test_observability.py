"""Observability end to end (issue 6): real prefork workers of the ready app, a real Celery event
receiver, a real UDP socket for StatsD, and dead StatsD hosts."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_selfheal.cli.board import epoch_seconds
from celery_selfheal.events.celery_events import EVENT_TYPE_PREFIX, contract_event_name
from tests.integration._obs import (
    ESCALATE_BUDGETS,
    ESCALATE_STEPS,
    HEAL_BUDGETS,
    EventCapture,
    StatsdCollector,
    free_udp_port,
    heal_steps,
    parse_packet,
    worker,
)
from tests.integration.conftest import Harness

pytestmark = pytest.mark.slow

CONTRACT_FIELDS = ("jobId", "stepId", "stepIndex", "attempt", "failureClass", "failureSignature", "diffHash",
                   "strategy", "detector")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """A worker of the ready app without StatsD (the baseline)."""
    with worker(tmp_path_factory.mktemp("obs"), "plain") as h:
        yield h


@pytest.fixture
def collector() -> Iterator[StatsdCollector]:
    c = StatsdCollector()
    yield c
    c.close()


# -- Celery events -----------------------------------------------------------------------------------


def test_celery_events_of_a_soft_reset_run_arrive_live_with_the_contract_fields(plain: Harness,
                                                                                make_repo) -> None:
    repo = make_repo()
    with EventCapture(plain.settings) as capture:
        job_id = plain.submit(plain.job_file(repo, heal_steps(), **HEAL_BUDGETS))
        assert plain.wait(job_id)["status"] == "succeeded"
        got = capture.wait_for(lambda evs: any(e.get("type") == "selfheal-task-job-succeeded"
                                               and e.get("jobId") == job_id for e in evs))
    ours = [e for e in got if e["type"].startswith(EVENT_TYPE_PREFIX) and e.get("jobId") == job_id]
    stored = plain.events(job_id)
    # every persisted event went out as a Celery event of type selfheal-<name with dashes>
    assert Counter((contract_event_name(e["type"]), e.get("attempt")) for e in ours) == \
        Counter((e["event"], e.get("attempt")) for e in stored)
    assert {contract_event_name(e["type"]) for e in ours} >= {
        "task.job.started", "task.step.attempt.started", "task.step.attempt.failed", "task.self_heal.triggered",
        "task.step.attempt.finished", "task.self_heal.recovered", "task.job.succeeded"}
    failed = next(e for e in ours if e["type"] == "selfheal-task-step-attempt-failed")
    stored_failed = next(e for e in stored if e["event"] == "task.step.attempt.failed")
    for key in CONTRACT_FIELDS:
        assert failed[key] == stored_failed[key], key
    assert (failed["event"], failed["detector"], failed["strategy"], failed["failureClass"]) == \
        ("task.step.attempt.failed", "idle_timeout", "soft_reset", "transient_runtime")
    # sent as they happen (not batched at the end), from the worker that ran the step
    for e in ours:
        sent = epoch_seconds(e["ts"])
        assert sent is not None and e["local_received"] - sent < 2.0, e
    task_events = [e for e in got if e["type"].startswith("task-")]
    hosts = {e["hostname"] for e in task_events if e["type"] == "task-started"}
    assert {e["hostname"] for e in ours} <= hosts and len(hosts) == 1
    # the ready app sends task events by default: the retry carries its readable reason
    retried = [e for e in task_events if e["type"] == "task-retried"]
    assert len(retried) == 1
    assert ("step 'implement' attempt 1 of 3 failed (idle_timeout, transient_runtime) -> soft_reset: "
            "attempt 1 of 3, soft reset in 0.05s") in retried[0]["exception"]


# -- StatsD ------------------------------------------------------------------------------------------


def metrics(lines: list[str], style: str) -> Counter[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """(name, type, tags) of every line, timers without their value."""
    out: Counter[tuple[str, str, tuple[tuple[str, str], ...]]] = Counter()
    for line in lines:
        name, kind, tags, _ = parse_packet(line, style)
        out[(name, kind, tuple(tags.items()))] += 1
    return out


def c(name: str, **tags: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    return (name, "c", tuple(tags.items()))


def ms(step: str, attempt: int) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    return ("task.step.duration_seconds", "ms", (("step", step), ("attempt", str(attempt))))


ATTEMPTS = "task.self_heal.attempts_total"


def test_statsd_dogstatsd_metrics_of_soft_reset_escalation_and_exhaustion(tmp_path: Path, make_repo,
                                                                          collector: StatsdCollector) -> None:
    repo = make_repo()
    with worker(tmp_path, "dogstatsd", collector.env("dogstatsd")) as h:
        # 1. heals by a soft reset after an idle timeout
        job_id = h.submit(h.job_file(repo, heal_steps(), **HEAL_BUDGETS))
        assert h.wait(job_id)["status"] == "succeeded"
        lines = collector.drain()
        assert metrics(lines, "dogstatsd") == Counter({
            c(ATTEMPTS, **{"class": "transient_runtime"}, strategy="initial", outcome="failure"): 1,
            c("task.step.idle_timeout_total", step="implement", **{"class": "transient_runtime"}): 1,
            ms("implement", 1): 1,
            c(ATTEMPTS, **{"class": "none"}, strategy="soft_reset", outcome="success"): 1,
            ms("implement", 2): 1,
            c("task.self_heal.recovered_total", step="implement", strategy="soft_reset"): 1,
        })
        # the timer is the attempt's wall clock in milliseconds (the StatsD unit)
        first = h.attempts(job_id)[0]
        timer = next(parse_packet(line, "dogstatsd") for line in lines if "attempt:1" in line and "|ms" in line)
        assert timer[3] == pytest.approx(first["wallClockSeconds"] * 1000, abs=0.01)
        assert "task.self_heal.attempts_total:1|c|#class:transient_runtime,strategy:initial,outcome:failure" in lines

        # 2. escalates: the same failure twice (no progress) -> hard reset -> success
        job_id = h.submit(h.job_file(repo, ESCALATE_STEPS, **ESCALATE_BUDGETS))
        assert h.wait(job_id)["status"] == "succeeded"
        assert [a["attemptStrategy"] for a in h.attempts(job_id) if a["stepIndex"] == 1] == \
            ["initial", "soft_reset", "hard_reset"]
        assert metrics(collector.drain(), "dogstatsd") == Counter({
            c(ATTEMPTS, **{"class": "none"}, strategy="initial", outcome="success"): 1,
            ms("one", 1): 1,
            c(ATTEMPTS, **{"class": "transient_runtime"}, strategy="initial", outcome="failure"): 1,
            ms("two", 1): 1,
            c(ATTEMPTS, **{"class": "stuck_no_progress"}, strategy="soft_reset", outcome="failure"): 1,
            c("task.step.no_progress_total", step="two", **{"class": "stuck_no_progress"}): 1,
            ms("two", 2): 1,
            c(ATTEMPTS, **{"class": "none"}, strategy="hard_reset", outcome="success"): 1,
            ms("two", 3): 1,
            c("task.self_heal.recovered_total", step="two", strategy="hard_reset"): 1,
        })

        # 3. exhausts: a wall timeout with no budget left to recover
        job_id = h.submit(h.job_file(
            repo, [{"id": "hang", "instructions": "chatty-hang", "step_timeout_seconds": 0.6}],
            kill_grace_seconds=0.2, step_max_attempts=1, job_self_heal_max_resets=0, job_queue_max_retries=0))
        job = h.wait(job_id)
        assert (job["status"], job["retryable"]) == ("failed", True)
        assert metrics(collector.drain(), "dogstatsd") == Counter({
            c(ATTEMPTS, **{"class": "transient_runtime"}, strategy="initial", outcome="failure"): 1,
            c("task.step.wall_timeout_total", step="hang", **{"class": "transient_runtime"}): 1,
            ms("hang", 1): 1,
            c("task.self_heal.exhausted_total", step="hang", **{"class": "transient_runtime"}): 1,
        })


def test_statsd_telegraf_tags_and_prefix(tmp_path: Path, make_repo, collector: StatsdCollector) -> None:
    repo = make_repo()
    with worker(tmp_path, "telegraf", collector.env("telegraf", prefix="ci")) as h:
        job_id = h.submit(h.job_file(repo, heal_steps("build"), **HEAL_BUDGETS))
        assert h.wait(job_id)["status"] == "succeeded"
        lines = collector.drain()
    counters = sorted(line for line in lines if line.endswith("|c"))
    assert counters == sorted([
        "ci.task.self_heal.attempts_total,class=transient_runtime,strategy=initial,outcome=failure:1|c",
        "ci.task.step.idle_timeout_total,step=build,class=transient_runtime:1|c",
        "ci.task.self_heal.attempts_total,class=none,strategy=soft_reset,outcome=success:1|c",
        "ci.task.self_heal.recovered_total,step=build,strategy=soft_reset:1|c",
    ])
    timers = sorted(line.rpartition(":")[0] for line in lines if line.endswith("|ms"))
    assert timers == ["ci.task.step.duration_seconds,step=build,attempt=1",
                      "ci.task.step.duration_seconds,step=build,attempt=2"]


def noop_job_seconds(h: Harness, repo: Path, runs: int) -> list[float]:
    """Submit-to-end seconds of ``runs`` one-step no-op jobs, one after another (after a warm-up)."""
    path = h.job_file(repo, [{"id": "noop", "instructions": "print nothing to do"}])
    h.wait(h.submit(path))  # warm-up: pool children import and open their stores
    took = []
    for _ in range(runs):
        start = time.monotonic()
        job = h.wait(h.submit(path))
        took.append(time.monotonic() - start)
        assert job["status"] == "succeeded"
    return took


def test_a_dead_statsd_host_costs_a_job_nothing_measurable(plain: Harness, tmp_path: Path, make_repo,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo()
    runs = 5
    figures: dict[str, list[float]] = {"no statsd": noop_job_seconds(plain, repo, runs)}
    dead = {"unresolvable host": {"STATSD_HOST": "statsd.invalid", "STATSD_PORT": "8125"},
            "closed port": {"STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(free_udp_port())}}
    for label, env in dead.items():
        with worker(tmp_path, label.replace(" ", "-"), env) as h:
            figures[label] = noop_job_seconds(h, repo, runs)
            if label == "unresolvable host":
                # the sink was live and knew its host was dead
                assert "cannot be resolved" in h.log_path.read_text()
    with capsys.disabled():
        print("\nno-op job, submit to end (s), median / worst of", runs)
        for label, took in figures.items():
            print(f"  {label:18} {statistics.median(took):.3f} / {max(took):.3f}")
    base = statistics.median(figures["no statsd"])
    for label in dead:
        # generous: a blocking DNS lookup or connect would cost seconds, not tenths
        assert statistics.median(figures[label]) < base * 1.5 + 0.25, figures
        assert max(figures[label]) < max(figures["no statsd"]) + 1.0, figures
