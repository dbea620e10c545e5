"""Time from starting a `selfheal` command to its one error line, per kind of unreachable service.

    .venv/bin/python bench/bench_unreachable.py [--runs 5]

Runs ``selfheal submit`` against a closed Redis broker port, a closed AMQP port, a closed Redis
store port and an unknown transport (``bogus://``), plus ``selfheal status`` against the closed
Redis store, each ``--runs`` times, and prints the median and worst seconds (whole process: Python
start-up and imports included) with the line printed. Goal (DESIGN): one line within 5 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import make_baseline_repo

JOB = """[job]
objective = "bench"
repo = "repo"
ref = "main"
runtime = ["true"]
[[steps]]
id = "a"
instructions = "x"
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    port = closed_port()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_baseline_repo(tmp)
        (tmp / "job.toml").write_text(JOB)
        sqlite = f"sqlite:///{tmp / 's.db'}"
        kinds = {
            "redis broker": (["submit", "job.toml"], {"SELFHEAL_BROKER_URL": f"redis://127.0.0.1:{port}/0",
                                                      "SELFHEAL_STORE_URL": sqlite}),
            "amqp broker": (["submit", "job.toml"], {"SELFHEAL_BROKER_URL": f"amqp://127.0.0.1:{port}//",
                                                     "SELFHEAL_STORE_URL": sqlite}),
            "redis store": (["submit", "job.toml"], {"SELFHEAL_BROKER_URL": f"redis://127.0.0.1:{port}/0"}),
            "redis store (status)": (["status", "job-x"], {"SELFHEAL_BROKER_URL": f"redis://127.0.0.1:{port}/0"}),
            "unknown transport": (["submit", "job.toml"], {"SELFHEAL_BROKER_URL": "bogus://",
                                                           "SELFHEAL_STORE_URL": sqlite}),
        }
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "STATSD_"))}
        for kind, (argv, env) in kinds.items():
            times, line = [], ""
            for _ in range(args.runs):
                started = time.monotonic()
                proc = subprocess.run([sys.executable, "-c", "from celery_selfheal.cli.main import main; main()",
                                       *argv], cwd=tmp, env={**base, **env, "SELFHEAL_STATE_DIR": str(tmp / "st")},
                                      capture_output=True, text=True, timeout=60)
                times.append(time.monotonic() - started)
                line = proc.stderr.strip()
            print(f"{kind:22s} median {statistics.median(times):.2f}s  worst {max(times):.2f}s  | {line}")


if __name__ == "__main__":
    main()
