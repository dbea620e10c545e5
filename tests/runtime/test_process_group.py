"""Process-group helpers against real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from celery_selfheal.runtime.process_group import (
    group_alive,
    kill_process_group,
    start_group_child_preexec,
)
from tests.conftest import process_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")

IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(60)"
)


def _gone(pid: int) -> bool:
    return not process_alive(pid)


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE)


def test_kill_gone_group_is_safe() -> None:
    proc = spawn(["true"])
    proc.wait()
    assert not group_alive(proc.pid)
    assert kill_process_group(proc.pid, grace=1.0) is False


def test_unreaped_zombie_leader_does_not_count_as_alive() -> None:
    proc = spawn(["true"])
    deadline = time.monotonic() + 5
    while not _gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Path(f"/proc/{proc.pid}").exists(), "still a zombie: we have not reaped it"
    assert not group_alive(proc.pid)
    proc.wait()


def test_term_respecting_group_ends_well_within_grace() -> None:
    proc = spawn(["sh", "-c", "sleep 60 & echo started; sleep 60"])
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    assert group_alive(proc.pid)
    # a grace of 10 minutes: the call returns once the group is gone, long before it
    outcome: list[bool] = []
    killer = threading.Thread(target=lambda: outcome.append(kill_process_group(proc.pid, grace=600.0)))
    killer.start()
    killer.join(timeout=60)
    assert outcome == [True], "kill_process_group waited for the grace although the group was gone"
    assert not group_alive(proc.pid)
    assert proc.wait(timeout=1) == -signal.SIGTERM


def test_term_ignoring_member_is_killed_after_grace() -> None:
    proc = spawn([sys.executable, "-c", IGNORE_TERM])
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert kill_process_group(proc.pid, grace=0.3) is True
    assert time.monotonic() - started >= 0.3  # never a KILL before the grace is over
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_pdeathsig_kills_child_when_its_parent_is_sigkilled() -> None:
    # The parent stands for a Celery pool child killed by the hard time limit.
    parent_code = (
        "import subprocess, sys, time\n"
        "from celery_selfheal.runtime.process_group import start_group_child_preexec\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True,\n"
        "                     preexec_fn=start_group_child_preexec)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not _gone(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 3
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(child)


def test_preexec_sets_pdeathsig_and_child_leads_its_own_group() -> None:
    probe = (
        "import ctypes, os\n"
        "sig = ctypes.c_int(-1)\n"
        "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG\n"
        "print(sig.value, os.getpgid(0) == os.getpid())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], start_new_session=True, preexec_fn=start_group_child_preexec,
        capture_output=True, check=True, text=True,
    )
    assert out.stdout.split() == [str(int(signal.SIGKILL)), "True"]
