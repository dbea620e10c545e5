"""The guard's table (`runtime.guard_link`): attempts are named in a shared memfd that wakes nobody;
the guard reads it when the supervising process is gone, and a guard killed by hand is replaced."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.guard import SLOT, read_table
from celery_selfheal.runtime.guard_link import Guard
from celery_selfheal.runtime.supervisor import RuntimeSpec, run_runtime
from tests.conftest import process_alive, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux memfd and /proc")

DAEMONIZE = str(Path(__file__).resolve().parents[1] / "runtimes" / "daemonize.py")

markers = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


@settings(max_examples=50)
@given(st.dictionaries(markers, st.tuples(st.integers(0, 2**22), st.floats(0, 3600)), max_size=12),
       st.data())
def test_the_table_names_exactly_the_attempts_not_yet_released(
        attempts: dict[str, tuple[int, float]], data: st.DataObject) -> None:
    released = data.draw(st.sets(st.sampled_from(sorted(attempts))) if attempts else st.just(set()))
    # any slots, also with never-written (NUL) slots between them
    slots = data.draw(st.lists(st.integers(0, 2 * len(attempts)), min_size=len(attempts), max_size=len(attempts),
                               unique=True))
    fd = os.memfd_create("test-table")
    try:
        for slot, (marker, (pgid, grace)) in zip(slots, attempts.items(), strict=True):
            record = "" if marker in released else f"+ {marker} {pgid} {grace!r}"
            os.pwrite(fd, record.encode().ljust(SLOT - 1) + b"\n", slot * SLOT)
        expected = {m: (p, g) for m, (p, g) in attempts.items() if m not in released}
        assert read_table(fd) == expected
    finally:
        os.close(fd)


def _voluntary_switches(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


def test_attempts_do_not_wake_the_guard(tmp_path: Path) -> None:
    spec = RuntimeSpec(argv=["true"], cwd=tmp_path, env=dict(os.environ), stdin_text="", wall_timeout=30,
                       idle_timeout=30, kill_grace=0.5)

    def one() -> None:
        with CappedLog(tmp_path / "a.log") as log:
            assert run_runtime(spec, log=log).exit_code == 0

    one()  # the guard is started (it then sleeps on its pipe)
    guard = Guard.pid()
    assert guard and process_alive(guard)
    # blocked in read(0, ...) on its pipe: /proc/PID/syscall gives the call's number, then fd 0
    read_nr = {"x86_64": "0", "aarch64": "63"}.get(platform.machine())
    if read_nr is None:
        pytest.skip(f"the number of read(2) on {platform.machine()}")
    wait_for(lambda: Path(f"/proc/{guard}/syscall").read_text().startswith(f"{read_nr} 0x0 "), "the guard asleep", 10)
    before = _voluntary_switches(guard)
    for _ in range(5):
        one()
    assert _voluntary_switches(guard) == before, "an attempt woke the guard"


RESTART = """
import os, sys
from pathlib import Path
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.guard_link import Guard
from celery_selfheal.runtime.supervisor import RuntimeSpec, run_runtime
def run(argv):
    spec = RuntimeSpec(argv=argv, cwd=Path.cwd(), env=dict(os.environ), stdin_text="",
                       wall_timeout=600, idle_timeout=600, kill_grace=0.5)
    with CappedLog(Path("r.log")) as log:
        run_runtime(spec, log=log)
run(["true"])
print(Guard.pid(), flush=True)
sys.stdin.readline()  # the test kills that guard meanwhile
run(sys.argv[1:])
"""


def test_a_guard_killed_by_hand_is_replaced_by_the_next_attempt(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    sup = subprocess.Popen([sys.executable, "-c", RESTART, sys.executable, DAEMONIZE, str(pidfile), "0",
                            "--stay", "600"], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert sup.stdin is not None and sup.stdout is not None
    try:
        first_guard = int(sup.stdout.readline())
        os.kill(first_guard, signal.SIGKILL)
        wait_for(lambda: not process_alive(first_guard), "the first guard gone", 10)
        sup.stdin.write(b"go\n")
        sup.stdin.flush()
        wait_for(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2, "both daemons", 20)
        pids = [int(p) for p in pidfile.read_text().split()]
        sup.kill()
        sup.wait()
        # the replacement guard read the table: grace 0.5 s + a scan
        wait_for(lambda: not any(process_alive(p) for p in pids), "the daemons ended by the new guard", 3)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        for pid in (int(p) for p in pidfile.read_text().split()) if pidfile.exists() else ():
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
