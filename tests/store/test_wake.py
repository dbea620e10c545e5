"""Wake-ups (`StateStore.wake` / `wake_listener`) against both real backends: a FIFO per listener
next to a SQLite file, PUBLISH to one subscriber thread per process on a real redis-server; real
forked processes for the dead-listener and at-fork cases."""

from __future__ import annotations

import os
import select
import shutil
import stat
from pathlib import Path
from typing import Any

from celery_selfheal.store import StateStore, _wake_fifo, open_store
from tests.conftest import wait_for


def readable(listener: Any, timeout: float) -> bool:
    return bool(select.select([listener], [], [], timeout)[0])


def test_a_wake_reaches_the_listeners_of_its_job_only(store: StateStore) -> None:
    mine, again, other = (store.wake_listener(j) for j in ("j1", "j1", "j2"))
    assert mine is not None and again is not None and other is not None
    assert not readable(mine, 0)
    store.wake("j1")
    wait_for(lambda: readable(mine, 0.1) and readable(again, 0.1), "both listeners of j1 woken")
    assert not readable(other, 0.2)  # no wake-up of j2 (a wait for one that must not come)
    mine.drain()
    assert not readable(mine, 0)
    for listener in (mine, again, other):
        listener.close()
        listener.close()  # idempotent
    store.wake("j1")  # nobody listens: nothing to do, nothing raised


def test_a_wake_of_a_store_that_cannot_be_reached_does_not_raise(tmp_path: Path) -> None:
    store = open_store("redis://127.0.0.1:1/0")
    store.RETRIES = 0  # type: ignore[attr-defined]
    store.wake("j1")


def sqlite_wake_dir(store: StateStore) -> Path:
    return _wake_fifo.wake_dir(Path(store.url[len("sqlite:///"):]))


def _listen_and_die(store: StateStore, job_id: str) -> None:
    pid = os.fork()
    if pid == 0:  # the child listens and dies without closing (as a SIGKILLed pool child)
        store.wake_listener(job_id)
        os._exit(0)
    os.waitpid(pid, 0)


def test_fifos_of_dead_processes_are_removed(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    directory = sqlite_wake_dir(store)
    _listen_and_die(store, "j1")
    (stale,) = directory.iterdir()
    _listen_and_die(store, "j2")  # its process's first listener swept the first one's FIFO, and left its own
    (second,) = directory.iterdir()
    assert second != stale
    live = store.wake_listener("j1")  # this process's first listener sweeps the stale one
    assert live is not None
    assert [p.name for p in directory.iterdir()] == [live.path.name]  # type: ignore[attr-defined]
    _listen_and_die(store, "j1")
    assert len(list(directory.iterdir())) == 2
    store.wake("j1")  # the waker removes the stale one it finds, and wakes the live one
    assert [p.name for p in directory.iterdir()] == [live.path.name]  # type: ignore[attr-defined]
    assert readable(live, 5)
    live.close()
    assert list(directory.iterdir()) == []


def test_the_directory_is_checked_once_per_process_and_made_again_if_removed(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    directory = sqlite_wake_dir(store)
    first = store.wake_listener("j1")
    assert first is not None
    _listen_and_die(store, "j2")
    assert len(list(directory.iterdir())) == 2
    second = store.wake_listener("j3")  # no sweep: the dead one stays until a waker meets it
    assert second is not None and len(list(directory.iterdir())) == 3
    for listener in (first, second):
        listener.close()
    shutil.rmtree(directory)
    third = store.wake_listener("j1")  # the directory was removed: made again, private
    assert third is not None and (directory.stat().st_mode & 0o777) == 0o700
    store.wake("j1")
    assert readable(third, 5)
    third.close()


def test_fifo_names_come_from_a_hash_in_a_private_directory(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    listener = store.wake_listener("../../etc/x\x00y")
    assert listener is not None
    path: Path = listener.path  # type: ignore[attr-defined]
    assert path.parent == sqlite_wake_dir(store) == tmp_path / "store.db.wake"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_ISFIFO(path.lstat().st_mode) and stat.S_IMODE(path.lstat().st_mode) == 0o600
    store.wake("../../etc/x\x00y")
    assert readable(listener, 5)
    listener.close()


def test_a_forked_child_gets_a_subscriber_of_its_own(redis_url: str) -> None:
    store: Any = open_store(redis_url)
    parent = store.wake_listener("jp")
    parent_thread = parent.hub._thread
    assert parent_thread is not None and parent_thread.is_alive()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(r)
            fresh = parent.hub._thread is None and not parent.hub._listeners  # reset at the fork
            child = store.wake_listener("jc")
            os.write(w, b"r")
            code = 0 if fresh and readable(child, 10) else 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        assert os.read(r, 1) == b"r"  # the child listens
        store.wake("jc")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
    assert os.waitstatus_to_exitcode(status) == 0
    store.wake("jp")  # the parent's subscriber still works
    assert readable(parent, 5)
    parent.close()
    store.close()
