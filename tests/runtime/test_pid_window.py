"""The pid window (`runtime.pid_window`): the processes forked since it opened, with real processes;
the cyclic interval as a property of a simulated pid allocator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.runtime import pid_window
from celery_selfheal.runtime.pid_window import PidWindow, proc_pids

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


@st.composite
def allocations(draw: st.DrawFn) -> tuple[int, int, list[int], list[int]]:
    """A cyclic allocator as Linux's: pid_max, the cursor's start, pids still held from before
    (skipped), and the pids handed out since (fewer than a lap)."""
    pid_max = draw(st.integers(min_value=400, max_value=5000))
    after = draw(st.integers(min_value=300, max_value=pid_max - 1))
    held = draw(st.lists(st.integers(min_value=300, max_value=pid_max - 1), max_size=50, unique=True))
    count = draw(st.integers(min_value=0, max_value=(pid_max - 300) // 2))
    out: list[int] = []
    used = set(held)
    cursor = after + 1
    while len(out) < count:
        if cursor >= pid_max:
            cursor = 300  # wraps to RESERVED_PIDS, as the kernel does
        if cursor not in used:
            used.add(cursor)
            out.append(cursor)
        cursor += 1
    return pid_max, after, held, out


@given(allocations())
def test_every_pid_handed_out_since_the_window_opened_is_in_it(case: tuple[int, int, list[int], list[int]]) -> None:
    pid_max, after, held, handed = case
    window = PidWindow(after=after, forks=0, pid_max=pid_max)
    last = handed[-1] if handed else after
    assert all(window.contains(pid, last) for pid in handed)
    # the last pid allocated before, and any pid when nothing was allocated since, are outside
    assert not window.contains(after, last)
    if not handed:
        assert not any(window.contains(pid, last) for pid in held)


@linux
def test_a_process_forked_after_opening_is_listed_and_older_ones_are_not() -> None:
    window = PidWindow.open()
    assert window is not None
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert window.covers(child.pid)
        names = window.names()
        assert names is not None
        assert str(child.pid) in names
        assert str(os.getpid()) not in names and "1" not in names
        assert set(names) <= set(proc_pids(None))
    finally:
        child.kill()
        child.wait()


@linux
def test_after_a_possible_lap_every_process_is_looked_at(monkeypatch: pytest.MonkeyPatch) -> None:
    window = PidWindow.open()
    assert window is not None
    lapped = replace(window, forks=window.forks - window.pid_max)  # as many forks since as pids
    assert lapped.names() is None
    assert str(os.getpid()) in proc_pids(lapped)
    monkeypatch.setattr(pid_window, "_last_pid", lambda: None)  # /proc/loadavg unreadable
    assert window.names() is None and PidWindow.open() is None


@linux
def test_no_window_where_proc_loadavg_is_someone_elses(tmp_path: Path) -> None:
    # LXCFS-style: a /proc/loadavg of other numbers mounted over the kernel's (here in a private
    # mount namespace, so nothing else sees it)
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    fake = tmp_path / "loadavg"
    fake.write_text("0.00 0.00 0.00 1/1 5\n")
    probe = "from celery_selfheal.runtime.pid_window import PidWindow; print(PidWindow.open())"
    out = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$1" /proc/loadavg && exec "$2" -c "$3"',
                          "sh", str(fake), sys.executable, probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None", out.stderr
    assert PidWindow.open() is not None  # and here, outside it, there is one
