"""run_runtime's wake-up check (`WakeCheck`) against real subprocesses: the check runs at the
start, once per wake-up (drained, not again and again while nothing new came), and a True from
it ends the whole attempt as cancelled."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.supervisor import RuntimeSpec, WakeCheck, run_runtime
from tests.conftest import process_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")


class Pipe:
    """A wake-up on a plain pipe, as the stores' listeners."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK)

    def fileno(self) -> int:
        return self.r

    def drain(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    found = Pipe()
    yield found
    found.close()


def spec(argv: list[str]) -> RuntimeSpec:
    return RuntimeSpec(argv=argv, cwd=Path.cwd(), env=dict(os.environ), stdin_text="", wall_timeout=20,
                       idle_timeout=20, kill_grace=1.0)


def test_the_check_runs_at_the_start_and_once_per_wake_up(tmp_path: Path, pipe: Pipe) -> None:
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return False

    os.write(pipe.w, b"!!!")  # three bytes, one wake-up
    with CappedLog(tmp_path / "a.log") as log:
        result = run_runtime(spec(["sleep", "0.5"]), log=log, wake=WakeCheck(check, 3600.0, pipe))
    assert not result.cancelled and result.exit_code == 0
    assert len(calls) == 2  # the start, the wake-up: the fallback (an hour) never came


def test_a_wake_up_whose_check_says_stop_cancels_the_tree(tmp_path: Path, pipe: Pipe) -> None:
    child = tmp_path / "child.pid"
    stop: list[bool] = [False]

    def on_output(text: str) -> None:  # the runtime is up, its child started: push the cancel
        if "up" in text:
            stop[0] = True
            os.write(pipe.w, b"!")

    with CappedLog(tmp_path / "a.log") as log:
        result = run_runtime(spec(["sh", "-c", f"sleep 60 & echo $! > {child}; echo up; sleep 60"]), log=log,
                             wake=WakeCheck(lambda: stop[0], 3600.0, pipe), on_output=on_output)
    assert result.cancelled
    assert not process_alive(int(child.read_text()))
