"""Live progress: the step board (pure), its rich table, and ``selfheal run`` on a real terminal (pty)
and through a pipe, with ``selfheal events --follow`` tailing the same job live."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from celery_selfheal.cli.board import COLUMNS, StepBoard, epoch_seconds, seconds_text
from celery_selfheal.cli.progress import Progress, board_table, registry_idle, wants_live
from celery_selfheal.context import build_context
from celery_selfheal.events.bus import EVENT_NAMES
from celery_selfheal.settings import load_settings
from celery_selfheal.steps.running import RunningAttempts
from tests.integration._obs import worker

AGENT = str(Path(__file__).resolve().parent / "runtimes" / "agent.py")
SELFHEAL = [sys.executable, "-c", "from celery_selfheal.cli.main import main; main()"]
T0 = 1_800_000_000.0  # a fixed "now" for the pure tests


def ts(offset: float) -> str:
    """An event timestamp ``offset`` seconds after T0, as the bus writes it."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(T0 + offset, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def ev(name: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"event": name, "ts": ts(at), "jobId": "job-1", **fields}


SOFT_RESET_RUN = [
    ev("task.job.started", 0.0, steps=2),
    ev("task.step.attempt.started", 0.1, stepId="build", stepIndex=0, attempt=1, attemptStrategy="initial"),
    ev("task.step.attempt.failed", 3.1, stepId="build", stepIndex=0, attempt=1, attemptStrategy="initial",
       failureClass="transient_runtime", detector="idle_timeout", strategy="soft_reset", wallClockSeconds=3.0,
       idleSeconds=2.5),
    ev("task.self_heal.triggered", 3.1, stepId="build", stepIndex=0, attempt=1, strategy="soft_reset", countdown=1.0),
    ev("task.step.attempt.started", 4.2, stepId="build", stepIndex=0, attempt=2, attemptStrategy="soft_reset",
       strategy="soft_reset"),
]


def cells(board: StepBoard, now: float, idle: Any = None) -> dict[str, dict[str, str]]:
    """Rows keyed by step label, each a {column: cell} dict."""
    return {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in board.rows(now, idle)}


# -- the board (pure) ----------------------------------------------------------------------------


def test_board_running_attempt_shows_elapsed_idle_strategy_and_why() -> None:
    board = StepBoard("job-1", [{"stepIndex": 0, "stepId": "build"}, {"stepIndex": 1, "stepId": "test"}])
    assert cells(board, T0)["1 test"]["status"] == "pending"
    for e in SOFT_RESET_RUN:
        board.apply(e)
    rows = cells(board, T0 + 6.2, {(0, 2): 1.25})
    build = rows["0 build"]
    assert (build["status"], build["attempt"], build["strategy"]) == ("running", "2", "soft_reset")
    assert build["elapsed"] == "2.0s"  # since attempt 2 started at +4.2
    assert build["idle"] == "1.2s"  # from the registry, not from the events
    assert build["detector"] == "idle_timeout" and build["note"] == "after idle_timeout"
    assert rows["1 test"]["status"] == "pending"
    assert board.title(T0 + 6.2) == "job job-1  running  6.2s"
    # idle of a running attempt is omitted when this host does not know it
    assert cells(board, T0 + 6.2)["0 build"]["idle"] == ""


def test_board_failed_then_retrying_then_recovered_and_job_end() -> None:
    board = StepBoard()
    for e in SOFT_RESET_RUN[:3]:
        board.apply(e)
    build = cells(board, T0 + 50)["0 build"]
    # a finished attempt keeps its own wall/idle seconds, whatever the time now
    assert (build["status"], build["elapsed"], build["idle"]) == ("failed", "3.0s", "2.5s")
    assert build["note"] == "transient_runtime; next: soft_reset"
    board.apply(SOFT_RESET_RUN[3])
    assert cells(board, T0 + 50)["0 build"]["note"] == "soft_reset in 1s"
    assert cells(board, T0 + 50)["0 build"]["status"] == "retrying"
    board.apply(SOFT_RESET_RUN[4])
    board.apply(ev("task.step.attempt.finished", 5.0, stepId="build", stepIndex=0, attempt=2,
                   attemptStrategy="soft_reset", wallClockSeconds=0.8, idleSeconds=0.1, changedFiles=["a", "b"]))
    board.apply(ev("task.self_heal.recovered", 5.0, stepId="build", stepIndex=0, attempt=2,
                   attemptStrategy="soft_reset", strategy="soft_reset"))
    board.apply(ev("task.job.succeeded", 5.5, stepId="build", stepIndex=0))
    build = cells(board, T0 + 99)["0 build"]
    assert (build["status"], build["elapsed"], build["detector"]) == ("succeeded", "0.8s", "")
    assert build["note"] == "recovered by soft_reset"
    assert board.title(T0 + 99) == "job job-1  succeeded  5.5s"  # the job's clock stopped at its end


def test_board_escalation_exhaustion_failure_cancel_resume_and_control() -> None:
    board = StepBoard("job-1", [{"stepIndex": 0, "stepId": "a"}, {"stepIndex": 1, "stepId": "b"}])
    board.apply(ev("task.job.started", 0))
    board.apply(ev("task.self_heal.escalated", 1, stepId="a", stepIndex=0, strategy="hard_reset"))
    assert cells(board, T0)["0 a"]["note"] == "escalated to hard_reset"
    board.apply(ev("task.self_heal.exhausted", 2, stepId="a", stepIndex=0))
    assert cells(board, T0)["0 a"]["note"] == "recovery exhausted"
    board.apply(ev("task.job.failed", 3, stepId="a", stepIndex=0, reason="exit, transient_runtime: no budget"))
    assert cells(board, T0)["0 a"]["status"] == "failed"
    assert board.title(T0 + 9).startswith("job job-1  failed  3.0s  (exit, transient_runtime")
    board.apply(ev("task.control.recovery.ack", 4, action="resume_from_step", stepIndex=0))
    assert "control resume_from_step ack" in board.title(T0)
    board.apply(ev("task.resume.from_step", 4, stepId="a", stepIndex=0, epoch=1))
    rows = cells(board, T0)
    assert rows["0 a"]["status"] == rows["1 b"]["status"] == "pending"
    assert rows["0 a"]["note"] == "resumed (epoch 1)"
    board.apply(ev("task.job.started", 5))
    board.apply(ev("task.step.attempt.started", 5, stepId="a", stepIndex=0, attempt=4))
    board.apply(ev("task.job.cancelled", 6))
    assert cells(board, T0)["0 a"]["status"] == "cancelled"


EVENT = st.fixed_dictionaries(
    {"event": st.sampled_from([*sorted(EVENT_NAMES), "task.unknown", ""])},
    optional={
        "ts": st.one_of(st.just(ts(1.0)), st.text(max_size=8), st.none(), st.integers()),
        "stepIndex": st.one_of(st.integers(0, 3), st.none(), st.text(max_size=2), st.booleans()),
        "stepId": st.one_of(st.text(max_size=6), st.none(), st.integers()),
        "attempt": st.one_of(st.integers(1, 5), st.none(), st.text(max_size=2)),
        "strategy": st.one_of(st.sampled_from(["soft_reset", "hard_reset", "queue_retry"]), st.none()),
        "wallClockSeconds": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text()),
        "idleSeconds": st.one_of(st.floats(0, 1e6), st.none(), st.booleans()),
        "countdown": st.one_of(st.floats(0, 100), st.none(), st.text(max_size=3)),
        "changedFiles": st.one_of(st.lists(st.text(max_size=3), max_size=3), st.none(), st.text(max_size=3)),
        "reason": st.one_of(st.text(max_size=20), st.none()),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(EVENT, max_size=30), st.floats(-1e3, 1e10, allow_nan=False))
def test_board_folds_any_event_sequence(events: list[dict[str, Any]], now: float) -> None:
    board = StepBoard("job-1", [{"stepIndex": 0, "stepId": "a"}])
    for e in events:
        board.apply(e)
    seen = {0} | {e["stepIndex"] for e in events
                  if isinstance(e.get("stepIndex"), int) and not isinstance(e.get("stepIndex"), bool)}
    rows = board.rows(now, {(0, 1): 2.0})
    assert len(rows) == len(seen)
    assert all(len(r) == len(COLUMNS) and all(isinstance(c, str) for c in r) for r in rows)
    assert isinstance(board.title(now), str)


@pytest.mark.parametrize(("value", "text"), [(None, ""), (0.04, "0.0s"), (59.94, "59.9s"), (60.0, "1m00s"),
                                             (245.9, "4m05s"), (-3.0, "0.0s")])
def test_seconds_text(value: float | None, text: str) -> None:
    assert seconds_text(value) == text


def test_epoch_seconds() -> None:
    assert epoch_seconds(ts(2.5)) == pytest.approx(T0 + 2.5)
    assert epoch_seconds("not a time") is None and epoch_seconds(None) is None


# -- rendering and its inputs ------------------------------------------------------------------------


def test_board_table_renders_every_column_and_step() -> None:
    board = StepBoard("job-1", [{"stepIndex": 0, "stepId": "build"}, {"stepIndex": 1, "stepId": "test"}])
    for e in SOFT_RESET_RUN:
        board.apply(e)
    console = Console(file=io.StringIO(), width=140, record=True)
    console.print(board_table(board, T0 + 6.2, {(0, 2): 1.25}))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "status" in line)
    assert header.split() == list(COLUMNS)
    row = next(line for line in text.splitlines() if "build" in line).split()
    assert row == ["0", "build", "running", "2", "soft_reset", "2.0s", "1.2s", "idle_timeout", "after", "idle_timeout"]
    assert "job job-1  running  6.2s" in text


def test_registry_idle_reads_the_worker_side_files(tmp_path: Path) -> None:
    registry = RunningAttempts(tmp_path)
    registry.register("task-1", {"jobId": "job-1", "stepIndex": 0, "attempt": 2})
    registry.register("task-2", {"jobId": "job-2", "stepIndex": 0, "attempt": 1})
    path = tmp_path / "attempts" / "task-1.json"
    past = time.time() - 7.0
    os.utime(path, (past, past))  # last output 7 s ago
    idle = registry_idle(tmp_path, "job-1")
    assert list(idle) == [(0, 2)]
    assert 6.9 <= idle[(0, 2)] < 9.0
    assert registry_idle(None, "job-1") == {}
    assert registry_idle(tmp_path / "nowhere", "job-1") == {}


def test_live_only_on_an_interactive_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert not wants_live(Console(file=io.StringIO()))
    read_fd, write_fd = os.pipe()
    master, slave = pty.openpty()
    try:
        with open(write_fd, "w", closefd=False) as pipe:
            monkeypatch.setenv("FORCE_COLOR", "1")  # colours forced, but a pipe is still not a screen
            assert not wants_live(Console(file=pipe))
            monkeypatch.delenv("FORCE_COLOR")
        with open(slave, "w", closefd=False) as tty:
            assert wants_live(Console(file=tty))
            assert not Progress(as_json=True, console=Console(file=tty)).live
            assert Progress(console=Console(file=tty)).live
    finally:
        for fd in (read_fd, write_fd, master, slave):
            os.close(fd)


def test_progress_plain_and_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(console=Console(file=io.StringIO())) as progress:
        assert not progress.live
        for e in SOFT_RESET_RUN:
            progress.event(e)
    plain = capsys.readouterr().out.splitlines()
    assert len(plain) == len(SOFT_RESET_RUN)
    assert "step 0 build: attempt 1 FAILED by idle_timeout (silent 2.5s) -> transient_runtime; next: soft_reset" \
        in plain[2]
    with Progress(as_json=True) as progress:
        for e in SOFT_RESET_RUN:
            progress.event(e)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == SOFT_RESET_RUN


def test_progress_live_prints_lines_above_a_refreshing_table() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, force_interactive=True, width=120, color_system=None)
    with Progress(console=console, live=True, job_id="job-1", steps=[{"stepIndex": 0, "stepId": "build"}]) as p:
        for e in SOFT_RESET_RUN:
            p.event(e)
        deadline = time.monotonic() + 30  # rich redraws from its own thread: wait for two redraws
        while strip_ansi(out.getvalue()).count("job job-1  running") < 2:
            assert time.monotonic() < deadline, "the live table was not redrawn"
            time.sleep(0.05)
    text = strip_ansi(out.getvalue())
    assert "step 0 build: attempt 2 started (soft_reset)" in text
    assert text.count("job job-1  running") >= 2  # redrawn, not printed once
    assert "\x1b[?25l" in out.getvalue()  # rich hid the cursor: a live display, not plain lines


# -- the real CLI on a terminal and through a pipe ---------------------------------------------------

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>])")


def strip_ansi(text: str) -> str:
    """The characters a terminal would show, line by line (escape sequences dropped, CR as NL)."""
    return ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


def cli_env(**extra: str) -> dict[str, str]:
    drop = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
            "SELFHEAL_STATE_DIR", "SELFHEAL_BROKER_URL", "SELFHEAL_STORE_URL", "SELFHEAL_CONFIG",
            "SELFHEAL_ARTIFACT_ROOT", "SELFHEAL_WORKSPACE_ROOT", "STATSD_HOST")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "TERM": "xterm-256color", **extra}


def heal_job(tmp_path: Path, repo: Path, gate: Path | None = None) -> Path:
    """Two steps; the second hangs silently on attempt 1 and heals by a soft reset. With ``gate``, the
    first step waits for that file to exist (the test holds the job running until then)."""
    wait = f"wait-for {gate}\n" if gate else ""
    doc = {"job": {"objective": "progress", "repo": str(repo), "ref": "main", "runtime": [sys.executable, AGENT],
                   "selfheal": {"step_idle_timeout_seconds": 1.5, "soft_reset_backoff_seconds": 0.1}},
           "steps": [{"id": "prepare", "instructions": f"{wait}print ready\nwrite p.txt: p"},
                     {"id": "implement", "instructions": "silent@1\nwrite out.txt: done"}]}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(doc))
    return path


def run_in_pty(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 60.0,
               size: tuple[int, int] = (40, 140)) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin/stdout/stderr; returns (exit status, raw output)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child side is closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError("selfheal run did not end:\n" + strip_ansi(b"".join(chunks).decode(errors="replace")))
        return proc.wait(10), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def last_frame(screen: str) -> list[str]:
    """The last table drawn: its title, header and step rows."""
    lines = screen.splitlines()
    start = max(i for i, line in enumerate(lines) if line.split()[:3] == ["step", "status", "attempt"])
    frame = []
    for line in lines[start + 2:]:  # after the header and its rule
        if not re.match(r"\s*\d+ \S", line):
            break
        frame.append(line)
    return [lines[start - 1], lines[start], *frame]


@pytest.mark.slow
def test_selfheal_run_on_a_terminal_draws_the_live_step_table(tmp_path: Path, make_repo) -> None:
    job = heal_job(tmp_path, make_repo())
    code, raw = run_in_pty([*SELFHEAL, "run", str(job), "--state-dir", str(tmp_path / "state")], tmp_path,
                           cli_env())
    screen = strip_ansi(raw)
    assert code == 0, screen[-3000:]
    assert "\x1b[?25l" in raw, "no live display on a terminal"
    title, header, *rows = last_frame(screen)
    assert re.match(r"job job-\S+  succeeded  \d+\.\ds", title.strip()), title
    assert header.split() == list(COLUMNS)
    by_step = {row.split()[1]: row.split() for row in rows}
    assert set(by_step) == {"prepare", "implement"}
    assert by_step["prepare"][2:5] == ["succeeded", "1", "initial"]
    assert by_step["implement"][2:5] == ["succeeded", "2", "soft_reset"]
    # frames drawn while attempt 1 hung: running, with idle seconds from the worker's registry
    running = [line.split() for line in screen.splitlines()
               if line.split()[:5] == ["1", "implement", "running", "1", "initial"]]
    assert len(running) >= 2, "the table was not redrawn while the attempt ran"
    assert any(len(r) >= 7 and r[6].endswith("s") and float(r[6][:-1]) >= 0.3 for r in running), running
    assert "FAILED by idle_timeout" in screen and "self-heal soft_reset" in screen
    assert re.search(r"job job-\S+ SUCCEEDED: 2 steps, 3 attempts, 1 soft_reset", screen)


@pytest.mark.slow
def test_selfheal_run_through_a_pipe_prints_plain_lines_and_events_follow_tails_it(tmp_path: Path,
                                                                                    make_repo) -> None:
    gate = tmp_path / "follower-attached"
    job = heal_job(tmp_path, make_repo(), gate)
    # a worker already runs on the state dir, so `run` only submits and follows (the pty test above
    # covers `run` starting its own local worker)
    with worker(tmp_path, "piped") as h:
        _run_piped_and_follow(tmp_path, job, h.settings.state_dir, gate)


def _run_piped_and_follow(tmp_path: Path, job: Path, state: Path, gate: Path) -> None:
    run = subprocess.Popen([*SELFHEAL, "run", str(job), "--state-dir", str(state)], cwd=tmp_path, env=cli_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None
    first = run.stdout.readline()
    job_id = re.match(r"submitted (\S+) ", first).group(1)  # type: ignore[union-attr]
    follow = subprocess.Popen([*SELFHEAL, "events", job_id, "--follow", "--json", "--state-dir", str(state)],
                              cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert follow.stdout is not None
    ctx = build_context(load_settings(state_dir=state, env={}), sinks=[])
    followed = [json.loads(follow.stdout.readline())]
    status_at_first_line = (ctx.store.get_job(job_id) or {}).get("status")
    gate.touch()  # the job's first step waited for this: however slow the machine, follow came first
    followed += [json.loads(line) for line in follow.stdout]
    out, err = run.communicate(timeout=60)
    assert follow.wait(10) == 0, follow.stderr.read() if follow.stderr else ""
    assert run.returncode == 0, err
    assert status_at_first_line in ("queued", "running"), "events --follow did not attach while the job ran"
    # the follower saw the whole stream, in order, and stopped by itself at the end
    stored = [e for _, e in ctx.store.list_events(job_id)]
    assert [e["event"] for e in followed] == [e["event"] for e in stored]
    assert followed[-1]["event"] == "task.job.succeeded"
    # plain lines: no escape sequences, one timestamped line per event, then the summary
    text = first + out
    assert "\x1b" not in text
    lines = text.splitlines()
    events = [line for line in lines if re.match(r"\d\d:\d\d:\d\d  ", line)]
    assert len(events) == len(stored)
    assert any("step 1 implement: attempt 1 FAILED by idle_timeout" in line and "next: soft_reset" in line
               for line in events)
    assert any("step 1 implement: recovered on attempt 2 (soft_reset)" in line for line in events)
    summary = [i for i, line in enumerate(lines) if line.startswith(f"job {job_id} SUCCEEDED: ")]
    assert summary and lines[summary[0]].startswith(f"job {job_id} SUCCEEDED: 2 steps, 3 attempts, 1 soft_reset")
    # then where the result is: the workspace at its final commit, how to take it, the artifacts
    tail = lines[summary[0] + 1:]
    assert tail[0].startswith("result: workspace ") and " at commit " in tail[0], tail
    assert tail[1].strip().startswith("take it: git -C ") and f"refs/heads/selfheal/{job_id}" in tail[1]
    assert tail[2].strip().startswith(f"artifacts: selfheal artifacts {job_id} --export DIR")


def test_a_failure_by_signal_names_the_signal() -> None:
    from celery_selfheal.cli.render import describe_event

    e = {"event": "task.step.attempt.failed", "stepId": "build", "stepIndex": 0, "attempt": 1,
         "detector": "signal", "signal": 9, "failureClass": "transient_runtime", "strategy": "soft_reset"}
    assert "attempt 1 FAILED by signal SIGKILL (9) -> transient_runtime" in describe_event(e)
    assert "FAILED by signal ? " in describe_event({**e, "signal": None})
    assert "FAILED by signal 99 " in describe_event({**e, "signal": 99})
