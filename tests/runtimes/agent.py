#!/usr/bin/env python3
"""Scripted test runtime. Directives (one per line) in the prompt; ``@N`` limits a directive to
attempt N (e.g. ``silent@1``). The retry strategy comes from SELFHEAL_RETRY_CONTEXT_FILE.

  write PATH: TEXT        write a file (relative to the workspace)
  silent[@N]              print one line then hang silently
  chatty-hang[@N]         keep printing progress forever (only the wall timeout stops it)
  tool-loop[@N]           print the same tool call and the same error forever (an output loop)
  daemon[@N] PIDFILE      leave a setsid + double-forked daemon and a group child, both ignoring
                          SIGTERM (daemonize.py), then go on
  grandchild-hang[@N] PIDFILE
                          start a grandchild that ignores SIGTERM, record its pid in PIDFILE, hang
  fail CODE[@N] MESSAGE   print MESSAGE and exit CODE
  fail-unless-hard-reset  same failure, no change, unless started by a hard reset
  vary-fail CODE          fail with CODE and a different message and change each time
  print TEXT              print TEXT
  leak-token PATH         write (and print) a GitHub-shaped token made here, as a careless agent would
  sleep[@N] SECONDS       print one line, then sleep (an attempt that takes a while)
  wait-for[@N] PATH       until PATH (absolute) exists, print a numbered line every 0.1 s (not idle,
                          not a loop): the test decides when the attempt goes on
  env                     print the SELFHEAL_* env vars
  dump-env PATH           write the whole environment as JSON to PATH (absolute, outside the workspace)
  play[@N] PATH           play the JSON script at PATH: a list of {"out": TEXT} / {"err": TEXT} (write,
                          flush), {"sleep": S}, {"env": NAME, "form": plain|base64|base64nl|url, "to":
                          "out"|"err", "slice": [A, B]} (write that env var's value so encoded, or
                          the slice [A:B] of it), {"close-err": true}
                          (stderr becomes /dev/null: its pipe ends here); for the canary tests
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

ENCODE = {
    "plain": lambda v: v,
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64nl": lambda v: base64.b64encode(v.encode() + b"\n").decode(),  # as `echo $X | base64`
    "url": lambda v: quote(v, safe=""),
}


def play(script: list[dict[str, object]]) -> None:
    """Write a script to stdout/stderr, each write flushed (a separate pipe chunk after a sleep)."""
    streams = {"out": sys.stdout, "err": sys.stderr}
    for op in script:
        if "sleep" in op:
            time.sleep(float(op["sleep"]))  # type: ignore[arg-type]
        elif "env" in op:
            stream = streams[str(op.get("to", "out"))]
            cut = slice(*op.get("slice", (None, None)))  # type: ignore[misc]
            stream.write(ENCODE[str(op["form"])](os.environ[str(op["env"])])[cut])
            stream.flush()
        elif op.get("close-err"):
            sys.stderr.flush()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        else:
            ((key, text),) = op.items()
            streams[key].write(str(text))
            streams[key].flush()


def main() -> int:
    prompt = sys.stdin.read()
    attempt = int(os.environ["SELFHEAL_ATTEMPT"])
    strategy = "initial"
    if os.environ.get("SELFHEAL_RETRY_CONTEXT_FILE"):
        strategy = json.loads(Path(os.environ["SELFHEAL_RETRY_CONTEXT_FILE"]).read_text())["strategy"]
    print(f"agent attempt={attempt}", flush=True)
    writes = []
    for raw in prompt.splitlines():
        line = raw.strip()
        word, _, rest = line.partition(" ")
        word, _, only = word.partition("@")
        if only and int(only) != attempt:
            continue
        if word == "write":
            writes.append(rest)
        elif word == "leak-token":
            token = "ghp_" + "Z" * 36  # built here: a token in the prompt would have been redacted
            print(f"using token {token}", flush=True)
            writes.append(f"{rest}: GITHUB = '{token}'")
        elif word == "print":
            print(rest, flush=True)
        elif word == "play":
            play(json.loads(Path(rest.strip()).read_text()))
        elif word == "env":
            for k in sorted(os.environ):
                if k.startswith("SELFHEAL_"):
                    print(f"{k}={os.environ[k]}", flush=True)
        elif word == "dump-env":
            Path(rest.strip()).write_text(json.dumps(dict(os.environ)))  # unredacted, outside the workspace
        elif word == "sleep":
            print(f"sleeping {rest}", flush=True)
            time.sleep(float(rest))
        elif word == "wait-for":
            checks = 0
            while not Path(rest.strip()).exists():
                checks += 1
                print(f"waiting for the test, check {checks}", flush=True)
                time.sleep(0.1)
        elif word == "silent":
            print("thinking", flush=True)
            time.sleep(3600)
        elif word == "tool-loop":
            n = 0
            while True:  # an agent repeating the same tool call and getting the same error
                n += 1
                print(f"{time.strftime('%H:%M:%S')} tool_call: read_file(path='src/missing.py')", flush=True)
                print(f"error: [Errno 2] No such file or directory (took {n * 7 % 90}ms, pid={os.getpid()})",
                      file=sys.stderr, flush=True)
                time.sleep(0.05)
        elif word == "daemon":
            daemonize = str(Path(__file__).with_name("daemonize.py"))
            subprocess.run([sys.executable, daemonize, rest.strip(), "0"], check=True)
        elif word == "chatty-hang":
            done = 0
            while True:  # progress that never ends: a counter, so not an output loop
                done += 1
                print(f"still working ({done} files checked)", flush=True)
                time.sleep(0.05)
        elif word == "grandchild-hang":
            child = subprocess.Popen([sys.executable, "-c",
                                      "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      "time.sleep(3600)"])
            Path(rest.strip()).write_text(str(child.pid))
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
        elif word == "fail":
            code, _, message = rest.partition(" ")
            print(message or "failed", flush=True)
            return int(code)
        elif word == "fail-unless-hard-reset" and strategy != "hard_reset":
            print(f"FAILED test_x - AssertionError at 0x{id(prompt):x} pid {os.getpid()}", flush=True)
            return 1
        elif word == "vary-fail":
            Path(f"attempt-{attempt}.txt").write_text(str(time.time()))
            print(f"connection reset by peer #{attempt}", flush=True)
            return int(rest)
    for spec in writes:
        path, _, text = spec.partition(":")
        target = Path(path.strip())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.strip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
