"""run_runtime against real subprocesses, process groups and signals (small thresholds)."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.core.model import Detector
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.supervisor import RuntimeResult, RuntimeSpec, run_runtime
from tests.conftest import process_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")

PY = sys.executable
#: ignores TERM, then says so (on stdout and with a ``ready`` file): only KILL ends it after that
IGNORE_TERM = ("import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "print(\"ready\", flush=True); pathlib.Path(\"ready\").touch(); time.sleep(60)")
#: prints each argument as a line, and goes on only once the test created ``go-<line>``
STEPPED = ("import os, sys, time\n"
           "for line in sys.argv[1:]:\n"
           "    print(line, flush=True)\n"
           "    while not os.path.exists('go-' + line):\n"
           "        time.sleep(0.01)\n"
           "time.sleep(60)\n")


def _gone(pid: int) -> bool:
    return not process_alive(pid)


def pids_in(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"pid=(\d+)", text)]


class JumpClock:
    """The supervisor's clock: real time plus the jumps the test makes when the child has reached a
    point of its life, so a threshold passes exactly there however slow the machine is."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


class Stepper:
    """``on_output`` for a `STEPPED` child: at each line, jump the clock by that line's amount, then
    let the child print the next one."""

    def __init__(self, folder: Path, clock: JumpClock, jumps: dict[str, float]) -> None:
        self.folder, self.clock, self.jumps, self.pending = folder, clock, jumps, ""

    def __call__(self, text: str) -> None:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self.clock.jump(self.jumps.get(line, 0.0))
            (self.folder / f"go-{line}").touch()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[CappedLog]:
    log = CappedLog(tmp_path / "attempt.log", head_bytes=64 * 1024, tail_bytes=64 * 1024)
    yield log
    log.close()


def run(log: CappedLog, argv: list[str], *, stdin: str = "", wall: float = 10.0, idle: float = 5.0,
        grace: float = 1.0, cwd: Path | None = None, **kw: Any) -> RuntimeResult:
    spec = RuntimeSpec(argv=argv, cwd=cwd or Path.cwd(), env=dict(os.environ), stdin_text=stdin,
                       wall_timeout=wall, idle_timeout=idle, kill_grace=grace)
    return run_runtime(spec, log=log, **kw)


@pytest.mark.parametrize("code", [0, 1, 3, 65, 75, 77])
def test_exit_codes(log: CappedLog, code: int) -> None:
    result = run(log, ["sh", "-c", f"echo out; echo err >&2; exit {code}"])
    assert (result.exit_code, result.signal, result.detector) == (code, None, Detector.EXIT)
    assert not result.cancelled and result.detection_lag is None
    assert "out\n" in result.tail and "err\n" in result.tail
    assert result.output_bytes == 8


def test_prompt_arrives_on_stdin_then_stdin_is_closed(log: CappedLog, tmp_path: Path) -> None:
    prompt = "Fix the bug.\nStep: implement ✓\n"
    result = run(log, ["sh", "-c", "cat > got.txt; pwd"], stdin=prompt, cwd=tmp_path)
    assert result.exit_code == 0
    assert (tmp_path / "got.txt").read_text() == prompt
    assert result.tail == f"{tmp_path}\n"


def test_large_prompt_to_a_child_that_never_reads_does_not_block(log: CappedLog) -> None:
    # the child never reads its stdin and writes more than a pipe holds: a supervisor blocked on
    # writing the prompt would never read that output, and the pair would sit until the wall timeout
    writer = "import sys\nsys.stdout.write('x' * 1_000_000)\nsys.stdout.flush()\nsys.exit(4)\n"
    result = run(log, [PY, "-c", writer], stdin="x" * 5_000_000, wall=60, idle=30)
    assert (result.exit_code, result.detector) == (4, Detector.EXIT)
    assert result.output_bytes == 1_000_000


def test_idle_timeout_counts_from_the_last_output(log: CappedLog, tmp_path: Path) -> None:
    clock = JumpClock()
    # 40 s after the first line but 20 s after the last one: not idle yet; then 31 s of silence
    steps = Stepper(tmp_path, clock, {"first": 20, "second": 20, "third": 31})
    result = run(log, [PY, "-c", STEPPED, "first", "second", "third"], cwd=tmp_path, wall=600, idle=30,
                 on_output=steps, clock=clock)
    assert result.detector is Detector.IDLE_TIMEOUT
    assert result.signal == signal.SIGTERM and result.exit_code is None
    assert result.tail == "first\nsecond\nthird\n"
    lag = result.detection_lag
    assert lag is not None and lag >= 1.0  # the clock went 31 s past a 30 s threshold
    assert result.idle_seconds >= 30 + lag - 1e-6  # counted from the last line, threshold first
    assert result.wall_seconds >= 20 + 20 + result.idle_seconds - 1e-6


def test_chatty_child_is_not_idle_killed_but_wall_killed(log: CappedLog, tmp_path: Path) -> None:
    clock = JumpClock()
    ticks = [f"tick-{n}" for n in range(30)]
    steps = Stepper(tmp_path, clock, dict.fromkeys(ticks, 10.0))  # a line every 10 s, for ever
    result = run(log, [PY, "-c", STEPPED, *ticks], cwd=tmp_path, wall=100, idle=30,
                 on_output=steps, clock=clock)
    assert result.detector is Detector.WALL_TIMEOUT
    lag = result.detection_lag
    assert lag is not None and lag >= 0
    assert result.wall_seconds >= 100 + lag - 1e-6  # a timeout never fires before its threshold
    assert result.max_idle_seconds < 30
    assert result.tail.count("tick") == 10  # the 10th line took the clock to 100 s


@pytest.mark.parametrize(("wall", "idle", "first"), [(100, 30, Detector.IDLE_TIMEOUT), (20, 30, Detector.WALL_TIMEOUT)])
def test_when_both_thresholds_passed_the_earlier_one_is_reported(
        log: CappedLog, tmp_path: Path, wall: float, idle: float, first: Detector) -> None:
    # as when the supervisor was stalled past both: the clock jumps 1000 s at the only line
    clock = JumpClock()
    steps = Stepper(tmp_path, clock, {"only": 1000})
    result = run(log, [PY, "-c", STEPPED, "only"], cwd=tmp_path, wall=wall, idle=idle, on_output=steps, clock=clock)
    assert result.detector is first
    threshold = wall if first is Detector.WALL_TIMEOUT else idle
    assert result.detection_lag is not None and result.detection_lag >= 1000 - threshold - 1e-6


@pytest.mark.parametrize("grandchild", ["sleep 60", f"{PY} -c '{IGNORE_TERM}'"],
                         ids=["plain", "ignores-term"])
def test_timeout_kills_the_whole_tree(log: CappedLog, tmp_path: Path, grandchild: str) -> None:
    script = f"{grandchild} & echo pid=$!; sleep 60 & echo pid=$!; wait"
    clock, seen = JumpClock(), []

    def on_output(text: str) -> None:
        seen.append(text)
        both = len(pids_in("".join(seen))) == 2
        if both and ("ready" in "".join(seen) or "IGN" not in grandchild):
            clock.jump(1000)  # the idle timeout passes once the whole tree is up

    result = run(log, ["sh", "-c", script], cwd=tmp_path, idle=30, wall=600, grace=0.3,
                 on_output=on_output, clock=clock)
    assert result.detector is Detector.IDLE_TIMEOUT
    pids = pids_in(result.tail)
    assert len(pids) == 2
    assert all(_gone(pid) for pid in pids)
    assert _gone(result.pid)


def test_leader_exit_with_grandchild_holding_stdout_returns_promptly(log: CappedLog) -> None:
    # waiting for the end of stdout (held by the grandchild) would end it as an idle timeout
    result = run(log, ["sh", "-c", "sleep 60 & echo pid=$!; exit 0"], idle=30, wall=60)
    assert (result.exit_code, result.detector) == (0, Detector.EXIT)
    [grandchild] = pids_in(result.tail)
    assert _gone(grandchild)


def test_leader_exit_kills_term_ignoring_leftovers_after_grace(log: CappedLog, tmp_path: Path) -> None:
    script = f"{PY} -c '{IGNORE_TERM}' & echo pid=$!; while [ ! -e ready ]; do sleep 0.01; done; exit 0"
    result = run(log, ["sh", "-c", script], cwd=tmp_path, grace=0.3, idle=30, wall=60)
    assert (result.exit_code, result.detector) == (0, Detector.EXIT)
    assert "ready" in result.tail  # it was ignoring TERM when the leader exited
    [grandchild] = pids_in(result.tail)
    assert _gone(grandchild)


def test_cancel_ends_the_attempt(log: CappedLog) -> None:
    cancel = threading.Event()
    asked: list[bool] = []

    def cancel_check() -> bool:
        asked.append(cancel.is_set())
        return asked[-1]

    def on_output(text: str) -> None:
        if pids_in(text):
            cancel.set()  # once the tree is up

    result = run(log, ["sh", "-c", "sleep 60 & echo pid=$!; wait"], grace=0.5, idle=30, wall=60,
                 cancel_check=cancel_check, cancel_poll=0.1, on_output=on_output)
    assert result.cancelled
    assert result.detector is Detector.SIGNAL and result.signal == signal.SIGTERM
    assert asked[-1] and asked.count(True) == 1  # polled until it said yes, then no more
    assert all(_gone(pid) for pid in pids_in(result.tail))


def test_large_output_is_capped_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    writer = "import sys\nfor i in range(400_000):\n    sys.stdout.write(f'{i:049d}\\n')\n"  # 20 MB
    with CappedLog(path, head_bytes=256 * 1024, tail_bytes=256 * 1024) as log:
        result = run(log, [PY, "-c", writer])
    assert result.exit_code == 0
    assert result.output_bytes == log.total_bytes == 20_000_000
    data = path.read_bytes()
    assert len(data) < 600 * 1024
    marker = re.search(rb"\n\[\.\.\. (\d+) bytes dropped by celery-selfheal log cap \.\.\.\]\n", data)
    assert marker is not None
    assert int(marker.group(1)) == 20_000_000 - 2 * 256 * 1024
    assert data.startswith(f"{0:049d}\n{1:049d}\n".encode())
    assert data.endswith(f"{399_999:049d}\n".encode())
    assert result.tail.endswith(f"{399_999:049d}\n")


#: writes its first argument, waits for the test to create ``go``, writes the second
TWO_WRITES = ("import os, sys, time\n"
              "os.write(1, os.fsencode(sys.argv[1]))\n"
              "while not os.path.exists('go'):\n"
              "    time.sleep(0.01)\n"
              "os.write(1, os.fsencode(sys.argv[2]))\n")


def test_split_utf8_sequence_decodes(log: CappedLog, tmp_path: Path) -> None:
    text = "héllo €uro 😀 done"
    raw = text.encode()
    cut = raw.index("😀".encode()) + 2  # inside the 4-byte emoji
    writer = (
        "import os, time\n"
        f"raw = {raw!r}\n"
        f"os.write(1, raw[:{cut}])\n"
        "while not os.path.exists('go'):\n"
        "    time.sleep(0.01)\n"
        f"os.write(1, raw[{cut}:])\n"
    )
    seen: list[str] = []

    def on_output(chunk: str) -> None:
        seen.append(chunk)
        (tmp_path / "go").touch()

    result = run(log, [PY, "-c", writer], cwd=tmp_path, on_output=on_output)
    assert result.tail == text
    assert "".join(seen) == text and len(seen) == 2


def test_stream_redactor_sees_every_chunk_and_is_flushed(log: CappedLog, tmp_path: Path) -> None:
    fed: list[str] = []

    class HoldBack:
        """Replaces SECRET even when split across chunks (holds back a 5-char window)."""

        def __init__(self) -> None:
            self.pending = ""

        def feed(self, text: str) -> str:
            fed.append(text)
            self.pending = (self.pending + text).replace("SECRET", "***")
            out, self.pending = self.pending[:-5], self.pending[-5:]
            return out

        def flush(self) -> str:
            out, self.pending = self.pending, ""
            return out

    result = run(log, [PY, "-c", TWO_WRITES, "token SEC", "RET end"], cwd=tmp_path, redact_stream=HoldBack,
                 on_output=lambda text: (tmp_path / "go").touch())
    log.close()
    assert fed[:2] == ["token SEC", "RET end"]  # the secret really was split
    assert result.tail == "token *** end"
    assert "SECRET" not in (tmp_path / "attempt.log").read_text()


def test_on_start_gets_the_group_leader(log: CappedLog) -> None:
    seen: list[tuple[int, int]] = []
    result = run(log, ["sleep", "0.1"], on_start=lambda pid: seen.append((pid, os.getpgid(pid))))
    assert seen == [(result.pid, result.pid)]


@pytest.mark.parametrize("problem", ["missing", "not-executable", "no-cwd"])
def test_runtime_that_cannot_start_gives_127(log: CappedLog, tmp_path: Path, problem: str) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    argv, cwd = {
        "missing": ([str(tmp_path / "no-such-agent")], tmp_path),
        "not-executable": ([str(script)], tmp_path),
        "no-cwd": (["true"], tmp_path / "gone"),
    }[problem]
    result = run(log, argv, cwd=cwd)
    assert (result.exit_code, result.detector, result.pid) == (127, Detector.EXIT, 0)
    assert result.tail.startswith("selfheal: cannot start runtime")
    assert "Traceback" not in result.tail
    assert log.total_bytes > 0


def test_foreign_signal_is_reported(log: CappedLog) -> None:
    result = run(log, ["sh", "-c", "kill -KILL $$"])
    assert (result.exit_code, result.signal, result.detector) == (None, signal.SIGKILL, Detector.SIGNAL)


class FakeSoftTimeLimit(BaseException):
    """Stands for Celery's SoftTimeLimitExceeded, raised from a signal handler."""


def test_exception_from_a_signal_handler_kills_the_group_and_reraises(log: CappedLog) -> None:
    def handler(signum: int, frame: object) -> None:
        raise FakeSoftTimeLimit()

    seen: list[str] = []
    up = threading.Event()

    def on_output(text: str) -> None:
        seen.append(text)
        up.set()

    def signal_once_up() -> None:
        if up.wait(30):  # the tree is up; the signal lands while the supervisor waits for output
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    sender = threading.Thread(target=signal_once_up)
    sender.start()
    try:
        with pytest.raises(FakeSoftTimeLimit):
            run(log, ["sh", "-c", "sleep 60 & echo pid=$!; wait"], on_output=on_output, grace=0.5)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR1, previous)
    [grandchild] = pids_in("".join(seen))
    assert _gone(grandchild)
    with pytest.raises(ValueError):
        log.write("closed")


def test_keyboard_interrupt_from_a_callback_kills_the_group(log: CappedLog) -> None:
    pids: list[int] = []

    def on_output(text: str) -> None:
        pids.extend(pids_in(text))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(log, ["sh", "-c", "sleep 60 & echo pid=$!; wait"], on_output=on_output)
    assert pids and all(_gone(pid) for pid in pids)


def test_without_pidfd_the_waiter_thread_notices_the_exit(
    log: CappedLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    # the grandchild keeps stdout open: only the waiter thread can tell that the leader is gone
    # (else this would end as an idle timeout)
    result = run(log, ["sh", "-c", "sleep 60 & exit 5"], idle=30, wall=60)
    assert (result.exit_code, result.detector) == (5, Detector.EXIT)
