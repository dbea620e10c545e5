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
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def _gone(pid: int) -> bool:
    return not process_alive(pid)


def pids_in(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"pid=(\d+)", text)]


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
    started = time.monotonic()
    result = run(log, ["sh", "-c", "sleep 0.2; exit 4"], stdin="x" * 5_000_000)
    assert result.exit_code == 4
    assert time.monotonic() - started < 2.0


def test_idle_timeout_fires_just_after_the_last_output(log: CappedLog) -> None:
    started = time.monotonic()
    result = run(log, ["sh", "-c", "echo working; sleep 60"], idle=0.4)
    took = time.monotonic() - started
    assert result.detector is Detector.IDLE_TIMEOUT
    assert result.detection_lag is not None and 0 <= result.detection_lag < 0.25
    assert 0.4 <= result.idle_seconds < 0.65
    assert result.signal == signal.SIGTERM and result.exit_code is None
    assert took < 1.5
    assert result.tail == "working\n"


def test_chatty_child_is_not_idle_killed_but_wall_killed(log: CappedLog) -> None:
    chatty = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)\n"
    result = run(log, [PY, "-c", chatty], wall=1.0, idle=0.4)
    assert result.detector is Detector.WALL_TIMEOUT
    assert result.detection_lag is not None and 0 <= result.detection_lag < 0.25
    assert 1.0 <= result.wall_seconds < 1.25
    assert result.max_idle_seconds < 0.4
    assert result.tail.count("tick") >= 5


@pytest.mark.parametrize("grandchild", ["sleep 60", f"{PY} -c '{IGNORE_TERM}'"],
                         ids=["plain", "ignores-term"])
def test_timeout_kills_the_whole_tree(log: CappedLog, grandchild: str) -> None:
    script = f"{grandchild} & echo pid=$!; sleep 60 & echo pid=$!; wait"
    started = time.monotonic()
    result = run(log, ["sh", "-c", script], idle=0.5, grace=0.3)
    assert result.detector is Detector.IDLE_TIMEOUT
    pids = pids_in(result.tail)
    assert len(pids) == 2
    assert all(_gone(pid) for pid in pids)
    assert _gone(result.pid)
    assert time.monotonic() - started < 0.5 + 0.3 + 1.0


def test_leader_exit_with_grandchild_holding_stdout_returns_promptly(log: CappedLog) -> None:
    started = time.monotonic()
    result = run(log, ["sh", "-c", "sleep 60 & echo pid=$!; exit 0"], idle=30, wall=60)
    assert time.monotonic() - started < 1.0
    assert (result.exit_code, result.detector) == (0, Detector.EXIT)
    [grandchild] = pids_in(result.tail)
    assert _gone(grandchild)


def test_leader_exit_kills_term_ignoring_leftovers_after_grace(log: CappedLog) -> None:
    script = f"{PY} -c '{IGNORE_TERM}' & echo pid=$!; sleep 0.3; exit 0"
    started = time.monotonic()
    result = run(log, ["sh", "-c", script], grace=0.3)
    assert result.exit_code == 0
    [grandchild] = pids_in(result.tail)
    assert _gone(grandchild)
    assert time.monotonic() - started < 2.0


def test_cancel_ends_the_attempt_within_poll_plus_grace(log: CappedLog) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result = run(log, ["sh", "-c", "sleep 60 & echo pid=$!; wait"], grace=0.5,
                 cancel_check=cancel.is_set, cancel_poll=0.1)
    took = time.monotonic() - started
    assert result.cancelled
    assert result.detector is Detector.SIGNAL and result.signal == signal.SIGTERM
    assert 0.3 <= took < 0.3 + 0.1 + 0.5
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


def test_split_utf8_sequence_decodes(log: CappedLog) -> None:
    text = "héllo €uro 😀 done"
    raw = text.encode()
    cut = raw.index("😀".encode()) + 2  # inside the 4-byte emoji
    writer = (
        "import os, time\n"
        f"raw = {raw!r}\n"
        f"os.write(1, raw[:{cut}]); time.sleep(0.15); os.write(1, raw[{cut}:])\n"
    )
    seen: list[str] = []
    result = run(log, [PY, "-c", writer], on_output=seen.append)
    assert result.tail == text
    assert "".join(seen) == text and len(seen) == 2


def test_stream_redactor_sees_every_chunk_and_is_flushed(log: CappedLog, tmp_path: Path) -> None:
    class HoldBack:
        """Replaces SECRET even when split across chunks (holds back a 5-char window)."""

        def __init__(self) -> None:
            self.pending = ""

        def feed(self, text: str) -> str:
            self.pending = (self.pending + text).replace("SECRET", "***")
            out, self.pending = self.pending[:-5], self.pending[-5:]
            return out

        def flush(self) -> str:
            out, self.pending = self.pending, ""
            return out

    writer = "import os, time\nos.write(1, b'token SEC'); time.sleep(0.15); os.write(1, b'RET end')\n"
    result = run(log, [PY, "-c", writer], redact_stream=HoldBack)
    log.close()
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
    previous = signal.signal(signal.SIGUSR1, handler)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    try:
        with pytest.raises(FakeSoftTimeLimit):
            run(log, ["sh", "-c", "sleep 60 & echo pid=$!; wait"], on_output=seen.append, grace=0.5)
    finally:
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
    started = time.monotonic()
    result = run(log, ["sh", "-c", "sleep 0.2; exit 5"], idle=0.5)
    assert result.exit_code == 5
    assert time.monotonic() - started < 0.5
