#!/usr/bin/env python3
"""A demo "coding agent" runtime that misbehaves on purpose, to show self-healing.

It follows the runtime protocol: the prompt arrives on stdin (and in SELFHEAL_PROMPT_FILE), the retry
envelope in SELFHEAL_RETRY_CONTEXT_FILE on retries. Directives in the step's instructions:

  write PATH: TEXT         create/overwrite PATH with TEXT
  silent-once              on the first attempt, print a little, then hang silently (idle timeout)
  same-failure-until-hard-reset
                           fail with the same error (and no change) until started by a hard reset
  exit N                   exit with status N
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def say(text: str) -> None:
    print(f"[demo-agent] {text}", flush=True)


def main() -> int:
    prompt = sys.stdin.read()
    attempt = int(os.environ.get("SELFHEAL_ATTEMPT", "1"))
    strategy = "initial"
    retry_file = os.environ.get("SELFHEAL_RETRY_CONTEXT_FILE")
    if retry_file:
        strategy = json.loads(Path(retry_file).read_text()).get("strategy", "?")
    say(f"working on step {os.environ.get('SELFHEAL_STEP_ID')} (attempt {attempt})")
    directives = [line.strip() for line in prompt.splitlines() if line.strip()]
    for line in directives:
        if line == "silent-once" and attempt == 1:
            say("thinking about the problem...")
            time.sleep(3600)  # goes silent: the idle watchdog ends this
        if line == "same-failure-until-hard-reset" and strategy != "hard_reset":
            say("running tests")
            print(f"FAILED tests/test_client.py::test_retry_backoff - AssertionError: expected 3 retries, "
                  f"got 0 (client at 0x{id(prompt):x}, pid {os.getpid()}, {time.time():.3f}s)", flush=True)
            return 1
        if line.startswith("exit "):
            return int(line.split()[1])
    for line in directives:
        if line.startswith("write ") and ":" in line:
            path, text = line[len("write "):].split(":", 1)
            target = Path(path.strip())
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text.strip() + "\n")
            say(f"wrote {target}")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
