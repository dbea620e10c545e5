"""Detection lag of the wall and idle watchdogs (REQ-01: within tens of ms of the threshold).

For each detector, runs a real child ``--runs`` times with a ``--threshold`` second limit and
prints the median and worst of:

- detection lag: threshold instant -> the supervisor noticed (``RuntimeResult.detection_lag``);
- return lag: threshold instant -> ``run_runtime`` returned, group killed (TERM) and reaped,
  measured outside the supervisor from the ``on_start`` / ``on_output`` callbacks.

Goal: detection under 50 ms past the threshold.

    /tmp/venv/bin/python bench/bench_detection.py [--runs 20] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from celery_selfheal.core.model import Detector
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.supervisor import RuntimeSpec, run_runtime

TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)\n"
#: idle: one line, then silence; wall: a line every 50 ms, so only the wall clock can end it
CHILDREN = {
    Detector.IDLE_TIMEOUT: ["sh", "-c", "echo started; exec sleep 600"],
    Detector.WALL_TIMEOUT: [sys.executable, "-c", TICKER],
}


def measure(detector: Detector, threshold: float, log_dir: Path, n: int) -> tuple[float, float]:
    """One run: (detection lag, return lag) in seconds."""
    idle = threshold if detector is Detector.IDLE_TIMEOUT else 600.0
    wall = threshold if detector is Detector.WALL_TIMEOUT else 600.0
    spec = RuntimeSpec(argv=CHILDREN[detector], cwd=log_dir, env=dict(os.environ), stdin_text="",
                       wall_timeout=wall, idle_timeout=idle, kill_grace=5.0)
    marks: dict[str, float] = {}
    with CappedLog(log_dir / f"{detector.value}-{n}.log") as log:
        result = run_runtime(spec, log=log, on_start=lambda pid: marks.__setitem__("start", time.monotonic()),
                             on_output=lambda text: marks.__setitem__("output", time.monotonic()))
    returned = time.monotonic()
    if result.detector is not detector or result.detection_lag is None:
        raise SystemExit(f"run {n}: expected {detector.value}, got {result}")
    threshold_at = marks["output"] + idle if detector is Detector.IDLE_TIMEOUT else marks["start"] + wall
    return result.detection_lag, returned - threshold_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    print(f"{args.runs} runs per detector, threshold {args.threshold:.3f} s, {os.cpu_count()} CPUs")
    header = ("detector", "detect median", "detect worst", "return median", "return worst")
    print(f"{header[0]:<14} {header[1]:>14} {header[2]:>13} {header[3]:>14} {header[4]:>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for detector in (Detector.IDLE_TIMEOUT, Detector.WALL_TIMEOUT):
            lags = [measure(detector, args.threshold, Path(tmp), n) for n in range(args.runs)]
            detect = [lag * 1000 for lag, _ in lags]
            ret = [lag * 1000 for _, lag in lags]
            print(f"{detector.value:<14} {statistics.median(detect):>11.2f} ms {max(detect):>10.2f} ms "
                  f"{statistics.median(ret):>11.2f} ms {max(ret):>10.2f} ms")


if __name__ == "__main__":
    main()
