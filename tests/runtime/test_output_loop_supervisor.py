"""The supervisor ends a looping runtime (real processes) and leaves progress output alone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from celery_selfheal.core.model import Detector
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.supervisor import RuntimeResult, RuntimeSpec, run_runtime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")

LOOPER = """
import os, sys, time
i = 0
while True:
    i += 1
    print(f"tool_call: run_tests() #{os.getpid()} at 0x7f{i:06x}", flush=True)
    print(f"error: tests/test_x.py failed after {i * 3}ms (pid={os.getpid()})", file=sys.stderr, flush=True)
    time.sleep(0.05)
"""
PROGRESS = """
import time
for i in range(60):
    print(f"tests/test_x.py::test_{i} PASSED [{i * 100 // 60}%]", flush=True)
    time.sleep(0.005)
"""


def run(tmp_path: Path, code: str, limit: int, secret: str = "") -> RuntimeResult:
    env = {**os.environ, "LOOP_SECRET": secret}
    spec = RuntimeSpec(argv=[sys.executable, "-c", code], cwd=tmp_path, env=env, stdin_text="",
                       wall_timeout=60.0, idle_timeout=30.0, kill_grace=1.0, output_loop_limit=limit)
    with CappedLog(tmp_path / "a.log") as log:
        return run_runtime(spec, log=log, redact_text=lambda t: t.replace("tool_call", "[REDACTED]"))


def test_a_looping_runtime_is_ended_within_limit_repetitions(tmp_path: Path) -> None:
    result = run(tmp_path, LOOPER, 5)
    assert result.detector is Detector.OUTPUT_LOOP and result.exit_code is None
    # caught at the 5th occurrence: 5 blocks of 2 lines (plus what came during the TERM)
    assert result.tail.count("tool_call") <= 6
    assert result.wall_seconds < 5 * 0.05 + 2.0
    assert "output loop: the same 2-line block was printed 5 times in a row" in result.note
    assert result.note.count("run_tests()") == 1 and "[REDACTED]" in result.note  # quoted once, scrubbed


def test_progress_output_and_a_disabled_detector_are_left_alone(tmp_path: Path) -> None:
    assert run(tmp_path, PROGRESS, 3).detector is Detector.EXIT
    off = RuntimeSpec(argv=[sys.executable, "-c", "for _ in range(50): print('same')"], cwd=tmp_path,
                      env=dict(os.environ), stdin_text="", wall_timeout=30.0, idle_timeout=30.0,
                      output_loop_limit=0)
    with CappedLog(tmp_path / "b.log") as log:
        assert run_runtime(off, log=log).detector is Detector.EXIT
