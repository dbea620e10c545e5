"""Output-loop detector: detection time after a loop starts, and the supervisor's throughput and
peak memory on a 200 MB flood with the detector on and off (goal: on >= 90 % of off).

- detection: a real child prints a few progress lines, then the same 2-line block (a tool call
  and its error, with changing timestamps and durations) every ``--interval`` seconds; the time from
  the loop's first line reaching the supervisor to the supervisor deciding ``output_loop``
  (``--runs`` times; median and worst; the floor is ``(limit - 1) * interval``). Also a loop that
  floods (no sleep at all), where the detector samples under its CPU budget.
- flood: a child writes ``--mb`` MB of build-log lines (all different) through the real attempt
  path (stream redactor, capped log); MB/s and the peak RSS of a fresh supervising process.

    .venv/bin/python bench/bench_output_loop.py [--runs 10] [--mb 200] [--limit 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPER = """
import sys, time
interval = float(sys.argv[1])
for i in range(5):
    print(f"step {i}/5 ({i * 20}%)", flush=True)
print("LOOP-START", flush=True)
n = 0
while True:
    n += 1
    print(f"{time.strftime('%H:%M:%S')} tool_call: run_shell(cmd='make test')", flush=True)
    print(f"error: exit status 2 after {n * 37 % 900}ms", file=sys.stderr, flush=True)
    if interval:
        time.sleep(interval)
"""

FLOOD = """
import sys
w = "compiling linking module src build test ok warning note error file path lib object".split()
out, total, n, target = sys.stdout.buffer, 0, 0, int(sys.argv[1]) * 1000000
while total < target:
    buf = []
    for _ in range(1000):
        n += 1
        src = f"src/{w[n * 7 % 14]}/{w[n * 3 % 14]}_{n}.c"
        buf.append(f"[{n:7d}] {w[n % 14]} {src} -> build/obj/{n}.o ({n % 1000 / 10:.1f}%)\\n")
    s = "".join(buf).encode()
    out.write(s)
    total += len(s)
"""

# the supervising side of one flood run, in a fresh process so that its peak RSS is its own
SUPERVISE = """
import json, os, resource, sys, time
from pathlib import Path
from celery_selfheal.core.redact import Redactor, StreamRedactor
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.supervisor import RuntimeSpec, run_runtime
flood, mb, limit, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
spec = RuntimeSpec(argv=[sys.executable, "-c", flood, mb], cwd=d, env=dict(os.environ), stdin_text="",
                   wall_timeout=600, idle_timeout=600, output_loop_limit=limit)
r = Redactor(dict(os.environ))
t = time.perf_counter()
with CappedLog(d / "flood.log") as log:
    res = run_runtime(spec, log=log, redact_stream=lambda: StreamRedactor(r, batch=16 * 1024))
el = time.perf_counter() - t
print(json.dumps({"detector": res.detector.value, "mbps": res.output_bytes / 1e6 / el,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def detection(interval: float, limit: int, d: Path) -> float:
    """Seconds from the loop's first line to the output_loop decision."""
    from celery_selfheal.core.model import Detector
    from celery_selfheal.runtime.capped_log import CappedLog
    from celery_selfheal.runtime.supervisor import RuntimeSpec, run_runtime

    marks: dict[str, float] = {}

    def seen(text: str) -> None:
        if "LOOP-START" in text:
            marks["loop"] = time.monotonic()

    spec = RuntimeSpec(argv=[sys.executable, "-c", LOOPER, str(interval)], cwd=d, env=dict(os.environ),
                       stdin_text="", wall_timeout=120, idle_timeout=60, output_loop_limit=limit, kill_grace=1.0)
    with CappedLog(d / "loop.log") as log:
        res = run_runtime(spec, log=log, on_start=lambda _: marks.__setitem__("start", time.monotonic()),
                          on_output=seen)
    if res.detector is not Detector.OUTPUT_LOOP:
        raise SystemExit(f"expected output_loop, got {res.detector}")
    return marks["start"] + res.wall_seconds - marks["loop"]


def flood(mb: int, limit: int, d: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", SUPERVISE, FLOOD, str(mb), str(limit), str(d)],
                         capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--flood-runs", type=int, default=3)
    args = parser.parse_args()
    d = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    print(f"{os.cpu_count()} CPUs, limit {args.limit}, {args.runs} runs per case")
    for interval in (0.05, 0.0):
        times = [detection(interval, args.limit, d) for _ in range(args.runs)]
        label = f"loop every {interval * 1000:.0f} ms" if interval else "loop flooding (no sleep)"
        print(f"detection, {label:26s} median {statistics.median(times) * 1000:7.1f} ms   "
              f"worst {max(times) * 1000:7.1f} ms   (floor {(args.limit - 1) * interval * 1000:.0f} ms)")
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(args.flood_runs):  # interleaved, so that machine load hits both alike
        for name, limit in (("off", 0), ("on", args.limit)):
            results[name].append(flood(args.mb, limit, d))
    med = {k: statistics.median(r["mbps"] for r in v) for k, v in results.items()}
    for name in ("off", "on"):
        rss = max(r["rss_mb"] for r in results[name])
        print(f"flood {args.mb} MB, detector {name:3s}  median {med[name]:6.1f} MB/s   peak RSS {rss:6.1f} MB   "
              f"({args.flood_runs} runs; {results[name][0]['detector']})")
    print(f"on / off: {med['on'] / med['off'] * 100:.1f} % (goal >= 90 %)")


if __name__ == "__main__":
    main()
