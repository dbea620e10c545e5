#!/usr/bin/env python3
"""Run the issue-16 benches and print one table: figure, baseline, ratio, goal, pass/fail.

Each bench runs as its own process with the defaults below (the benches' own defaults where the
issue's goals were measured, fewer runs where noted) and measures its plain-Celery baseline in the
same run, interleaved; this script only parses their output lines.

    python bench/run_all.py [--quick] [--only overhead,cluster,cancel,replay,store]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    baseline: str
    ratio: str
    goal: str
    ok: bool | None


def _run(script: str, *args: str) -> str:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=3600)
    print(f"# {script} {' '.join(args)}  ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    print(proc.stdout.rstrip(), file=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def _num(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    if not found:
        raise RuntimeError(f"no match for {pattern!r} in:\n{text}")
    return float(found.group(1))


def overhead(quick: bool) -> list[Row]:
    rows = []
    for poll, label in ((None, ""), ("0.002", ", broker poll 2 ms")):
        extra = ("--poll", poll) if poll else ()
        out = _run("bench_step_overhead.py", "--runs", "8" if quick else "20", "--steps", "3", *extra)
        ours = _num(r"celery-selfheal job : median\s+([\d.]+) ms", out)
        base = _num(r"plain Celery chain  : median\s+([\d.]+) ms", out)
        per_step = _num(r"per-step overhead (-?[\d.]+) ms", out)
        rows.append(Row(f"embedded no-op step: overhead per step{label}", f"{per_step:.1f} ms",
                        f"{base / 3:.1f} ms/step", f"{ours / base:.2f}x", "<= +10 ms", per_step <= 10))
    return rows


def cluster(quick: bool) -> list[Row]:
    args = ["--jobs", "100", "--runs", "2", "--kills", "2"] if quick else ["--runs", "3", "--kills", "3"]
    out = _run("bench_cluster.py", *args)
    ours = _num(r"celery-selfheal jobs : .*->\s+([\d.]+) steps/s", out)
    base = _num(r"plain Celery chains  : .*->\s+([\d.]+) steps/s", out)
    ratio = _num(r"throughput ratio\s+: celery-selfheal = ([\d.]+) x", out)
    pickup = _num(r"worker death -> step running again .*: median\s+([\d.]+) s", out)
    return [Row("cluster throughput (Redis)", f"{ours:.1f} steps/s", f"{base:.1f} steps/s", f"{ratio:.3f}x",
                ">= 0.5x", ratio >= 0.5),
            Row("worker SIGKILL -> step runs again", f"{pickup:.2f} s", "-", "-", "<= 10 s", pickup <= 10)]


def cancel(quick: bool) -> list[Row]:
    rows = []
    for store in ("sqlite", "redis"):
        out = _run("bench_cancel.py", "--runs", "5" if quick else "10", "--store", store)
        took = _num(r"runtime tree gone: median ([\d.]+) ms", out)
        rows.append(Row(f"cancel -> runtime tree gone, {store} store", f"{took:.1f} ms", "kill grace", "-",
                        "<= 100 ms + grace", took <= 100))
    return rows


def replay(quick: bool) -> list[Row]:
    out = _run("bench_replay.py", "--runs", "3", "--sizes", "100")
    line = next(ln for ln in out.splitlines() if re.match(r"\s+100\s", ln))
    fields = line.split()
    ours, naive = float(fields[1].rstrip("s")), float(fields[4].rstrip("s"))
    return [Row("replay of 100 checkpoints", f"{ours:.3f} s", f"{naive:.3f} s (naive)", f"{ours / naive:.2f}x",
                "<= 0.5 s", ours <= 0.5)]


def store(quick: bool) -> list[Row]:
    args = ["--jobs", "2000", "--events", "200000", "--big", "20000"] if quick else []
    out = _run("bench_store_scale.py", *args)
    rows = []
    for name in ("sqlite", "redis"):
        page = _num(rf"{name} list_jobs\(50\)\s+([\d.]+) ms", out)
        big = _num(rf"{name} tail poll, big job\s+([\d.]+) ms", out)
        small = _num(rf"{name} tail poll, small job\s+([\d.]+) ms", out)
        mem = _num(rf"{name} follow peak memory \(MiB\)\s+([\d.]+)", out)
        cli = _num(rf"{name} selfheal jobs \(whole process\)\s+([\d.]+) ms", out)
        floor = _num(rf"{name} python -c 'import celery.app'\s+([\d.]+) ms", out)
        rows += [Row(f"{name}: jobs first page", f"{page:.2f} ms", "-", "-", "<= 100 ms", page <= 100),
                 Row(f"{name}: follow poll, big job", f"{big:.2f} ms", f"{small:.2f} ms (small job)",
                     f"{big / small:.2f}x", "O(new events)", big <= 3 * small + 0.5),
                 Row(f"{name}: follow big job, peak memory", f"{mem:.1f} MiB", "-", "-", "bounded", mem <= 64),
                 Row(f"{name}: selfheal jobs, whole CLI process", f"{cli:.0f} ms", f"{floor:.0f} ms (import celery)",
                     f"{cli / floor:.2f}x", "-", None)]
    return rows


BENCHES: dict[str, Callable[[bool], list[Row]]] = {
    "overhead": overhead, "cluster": cluster, "cancel": cancel, "replay": replay, "store": store}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer runs and jobs (a few minutes)")
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args()
    rows: list[Row] = []
    for name in args.only.split(","):
        try:
            rows += BENCHES[name](args.quick)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            rows.append(Row(name, "error", "-", "-", "-", None))
            print(f"# {name}: {exc}", file=sys.stderr)
    head = ("figure", "ours", "baseline", "ratio", "goal", "result")
    table = [head, *((r.figure, r.value, r.baseline, r.ratio, r.goal,
                      "n/a" if r.ok is None else "pass" if r.ok else "FAIL") for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
