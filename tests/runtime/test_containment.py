"""Containment with real processes: what an attempt started (also ``setsid`` + double fork, also
ignoring SIGTERM) is gone when the attempt ends, whatever the ending, and when the process that
supervises it is SIGKILLed (the guard)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from celery_selfheal.core.model import Detector
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.containment import MARKER_VAR, marked_pids, new_marker
from celery_selfheal.runtime.supervisor import RuntimeResult, RuntimeSpec, run_runtime
from tests.conftest import process_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

DAEMONIZE = str(Path(__file__).resolve().parents[1] / "runtimes" / "daemonize.py")


def wait_for(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def leftovers(pidfile: Path) -> list[int]:
    return [int(x) for x in pidfile.read_text().split()] if pidfile.exists() else []


def run(tmp_path: Path, argv: list[str], **kw: object) -> RuntimeResult:
    spec = RuntimeSpec(argv=argv, cwd=tmp_path, env=dict(os.environ), stdin_text="",
                       wall_timeout=float(kw.pop("wall", 30.0)),  # type: ignore[arg-type]
                       idle_timeout=30.0, kill_grace=0.5)
    with CappedLog(tmp_path / "a.log") as log:
        return run_runtime(spec, log=log, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [0, 1])
def test_setsid_daemon_is_ended_after_the_step_exits(tmp_path: Path, code: int) -> None:
    pidfile = tmp_path / "pids"

    def both_spawned(_: str) -> None:
        assert wait_for(lambda: len(leftovers(pidfile)) == 2)

    result = run(tmp_path, [sys.executable, DAEMONIZE, str(pidfile), str(code), "--stay", "0.3"],
                 on_output=lambda text: both_spawned(text) if "spawned" in text else None)
    assert (result.detector, result.exit_code) == (Detector.EXIT, code)
    pids = leftovers(pidfile)
    assert len(pids) == 2
    # run_runtime returns only once they are gone: no waiting here
    assert [p for p in pids if process_alive(p)] == []


def test_setsid_daemon_is_ended_on_cancel_and_on_wall_timeout(tmp_path: Path) -> None:
    for how in ("cancel", "wall"):
        pidfile = tmp_path / f"pids-{how}"
        spawned = lambda pidfile=pidfile: len(leftovers(pidfile)) == 2  # noqa: E731
        kw: dict[str, object] = ({"cancel_check": spawned, "cancel_poll": 0.05} if how == "cancel"
                                 else {"wall": 1.0})
        result = run(tmp_path, [sys.executable, DAEMONIZE, str(pidfile), "0", "--stay", "60"], **kw)
        assert result.cancelled is (how == "cancel")
        assert result.detector is (Detector.WALL_TIMEOUT if how == "wall" else Detector.SIGNAL)
        pids = leftovers(pidfile)
        assert len(pids) == 2 and [p for p in pids if process_alive(p)] == []


SUPERVISE = """
import os, sys, threading
from pathlib import Path
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.supervisor import RuntimeSpec, run_runtime
def one(k):
    argv = [a.replace("PIDFILE", f"pids-{k}") for a in sys.argv[2:]]
    spec = RuntimeSpec(argv=argv, cwd=Path.cwd(), env=dict(os.environ), stdin_text="",
                       wall_timeout=600, idle_timeout=600, kill_grace=0.5)
    with CappedLog(Path(f"sup-{k}.log")) as log:
        run_runtime(spec, log=log)
threads = [threading.Thread(target=one, args=(k,)) for k in range(int(sys.argv[1]))]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.parametrize("attempts", [1, 2])
def test_guard_ends_everything_when_the_supervisor_is_sigkilled_as_a_group(tmp_path: Path, attempts: int) -> None:
    # one guard per supervising process, however many attempts it runs (threads pool: 2)
    pidfiles = [tmp_path / f"pids-{k}" for k in range(attempts)]
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(attempts), sys.executable, DAEMONIZE, "PIDFILE",
                            "0", "--stay", "600"], cwd=tmp_path, start_new_session=True)
    try:
        assert wait_for(lambda: all(len(leftovers(p)) == 2 for p in pidfiles), 20)
        os.killpg(sup.pid, signal.SIGKILL)  # no code of ours runs in the supervisor now
        sup.wait()
        killed_at = time.monotonic()
        pids = [pid for p in pidfiles for pid in leftovers(p)]
        # documented bound: kill_grace (0.5 s here) + a /proc scan
        assert wait_for(lambda: not any(process_alive(p) for p in pids), 0.5 + 2.0), \
            [p for p in pids if process_alive(p)]
        print(f"leftovers gone {time.monotonic() - killed_at:.2f} s after the SIGKILL")
    finally:
        for pid in [pid for p in pidfiles for pid in leftovers(p)]:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_marker_reaches_the_runtime_and_its_descendants_only(tmp_path: Path) -> None:
    out: list[str] = []
    script = f"import os; print(os.environ.get({MARKER_VAR!r}, 'none'))"
    result = run(tmp_path, [sys.executable, "-c", script], on_output=out.append)
    marker = "".join(out).strip()
    assert result.exit_code == 0 and len(marker) == 32 and marker != "none"
    assert MARKER_VAR not in os.environ  # ours is untouched
    # a process carrying a marker is found; another marker is not
    mine, other = new_marker(), new_marker()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             env={**os.environ, MARKER_VAR: mine})
    try:
        assert wait_for(lambda: marked_pids(mine) == [child.pid])
        assert marked_pids(other) == []
    finally:
        child.kill()
        child.wait()


def test_a_thread_can_run_attempts_side_by_side_without_ending_the_others(tmp_path: Path) -> None:
    # the threads pool: one attempt's end must not end another's processes
    long_pidfile = tmp_path / "long"
    results: list[RuntimeResult] = []
    t = threading.Thread(target=lambda: results.append(run(
        tmp_path, [sys.executable, DAEMONIZE, str(long_pidfile), "0", "--stay", "3"])))
    t.start()
    assert wait_for(lambda: len(leftovers(long_pidfile)) == 2)
    short = run(tmp_path, [sys.executable, DAEMONIZE, str(tmp_path / "short"), "0"])
    assert short.exit_code == 0
    assert all(process_alive(p) for p in leftovers(long_pidfile))
    t.join()
    assert results[0].exit_code == 0 and not any(process_alive(p) for p in leftovers(long_pidfile))


SCRUBBED_DAEMON = """
import os, sys
pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # a daemon that also clears its environment: no marker left
        code = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)")
        os.execve(sys.executable, [sys.executable, "-c", code, pidfile], {})
    os._exit(0)
"""

# the runtime: start the daemon, wait until it has written its pid, exit 0
WAIT_FOR_DAEMON = """
import os, subprocess, sys, time
subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], check=True)
deadline = time.monotonic() + 10
while not (os.path.exists(sys.argv[2]) and open(sys.argv[2]).read()) and time.monotonic() < deadline:
    time.sleep(0.01)
"""

IN_SUBREAPER = """
import os, sys
from pathlib import Path
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.containment import become_subreaper
from celery_selfheal.runtime.supervisor import RuntimeSpec, run_runtime
assert become_subreaper() is (sys.argv[1] == "on") or sys.argv[1] == "off"
spec = RuntimeSpec(argv=sys.argv[2:], cwd=Path.cwd(), env=dict(os.environ), stdin_text="",
                   wall_timeout=60, idle_timeout=60, kill_grace=0.3)
with CappedLog(Path("sub.log")) as log:
    run_runtime(spec, log=log)
print("returned", flush=True)
"""


@pytest.mark.parametrize("subreaper", ["on", "off"])
def test_a_subreaper_also_ends_a_daemon_that_cleared_its_environment(tmp_path: Path, subreaper: str) -> None:
    pidfile = tmp_path / f"scrubbed-{subreaper}"
    argv = [sys.executable, "-c", WAIT_FOR_DAEMON, SCRUBBED_DAEMON, str(pidfile)]
    code = IN_SUBREAPER if subreaper == "on" else IN_SUBREAPER.replace("become_subreaper() is", "True or")
    out = subprocess.run([sys.executable, "-c", code, subreaper, *argv], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert "returned" in out.stdout, out.stderr
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text() != "")
    daemon = int(pidfile.read_text())
    try:
        if subreaper == "on":
            assert not process_alive(daemon), "the subreaper let a scrubbed daemon survive"
        else:  # documented limitation: no marker, not in the group, no subreaper
            assert process_alive(daemon)
    finally:
        if process_alive(daemon):
            os.kill(daemon, signal.SIGKILL)


# the runtime: ignore TERM, say its pid, stay
STUBBORN = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)")


def test_the_guard_ends_the_runtime_itself_when_its_supervisor_alone_is_sigkilled(tmp_path: Path) -> None:
    # The runtime is started without the parent-death signal while a guard runs: the guard must
    # end the leader too (TERM ignored here: KILL after the grace), not only what left the group.
    pidfile = tmp_path / "leader"
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISE, "1", sys.executable, "-c", STUBBORN, str(pidfile)],
                           cwd=tmp_path)
    try:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text() != "", 20)
        leader = int(pidfile.read_text())
        sup.kill()  # the supervising process only: its runtime's session is its own
        sup.wait()
        assert wait_for(lambda: not process_alive(leader), 0.5 + 2.0), "the runtime outlived its supervisor"
    finally:
        if pidfile.exists() and pidfile.read_text() and process_alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


PROBE_PDEATHSIG = ("import ctypes; sig = ctypes.c_int(-1); "
                   "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0); print('pdeathsig', sig.value)")


def test_the_parent_death_signal_is_set_only_when_no_guard_covers_the_supervisor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With a guard the runtime is started with vfork (no preexec hook, ~10-25 ms less per attempt);
    # a process whose guard could not start still has the kernel's parent-death signal.
    from celery_selfheal.runtime.containment import Guard

    for guarded, expected in ((True, "pdeathsig 0"), (False, f"pdeathsig {int(signal.SIGKILL)}")):
        if not guarded:
            monkeypatch.setattr(Guard, "running", classmethod(lambda cls: False))
        out: list[str] = []
        result = run(tmp_path, [sys.executable, "-c", PROBE_PDEATHSIG], on_output=out.append)
        assert result.exit_code == 0 and "".join(out).strip() == expected, (guarded, out)


@pytest.mark.parametrize("why", ["lap", "other_namespace"])
def test_daemons_are_ended_also_when_the_pid_window_cannot_be_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    # every process is looked at then, as without a window
    from celery_selfheal.runtime import pid_window

    if why == "lap":  # as if the pids had gone round since the attempt started
        monkeypatch.setattr(pid_window, "_LAP_MARGIN", 10**9)
    else:  # /proc numbers processes of another pid namespace: no window at all
        monkeypatch.setattr(pid_window, "_proc_is_ours", lambda: False)
    pidfile = tmp_path / "pids"

    def both_spawned(text: str) -> None:
        if "spawned" in text:
            assert wait_for(lambda: len(leftovers(pidfile)) == 2)

    result = run(tmp_path, [sys.executable, DAEMONIZE, str(pidfile), "0", "--stay", "0.3"], on_output=both_spawned)
    assert result.exit_code == 0
    pids = leftovers(pidfile)
    assert len(pids) == 2 and [p for p in pids if process_alive(p)] == []
