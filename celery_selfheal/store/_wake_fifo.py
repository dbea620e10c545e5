"""Wake-ups for the SQLite store (one host, no server to push through): a FIFO per listening attempt.

Each listener makes a FIFO in a private directory next to the database (``<db>.wake/``, mode 0700),
named ``<hash of the job id>.<pid>.<random>`` (a hash: no job id ever becomes a path), and keeps it
open for reading (non-blocking: the read end is what the supervisor selects on) and for writing (an
end of its own, so the FIFO never reports end-of-file, readable for ever, once a waker closed it).
A waker opens each FIFO of the job with O_WRONLY|O_NONBLOCK and writes one byte. ENXIO there means
no process has it open for reading: its listener died without closing (SIGKILL), so the FIFO is
removed; each new listener sweeps the directory the same way. No thread, nothing to reconnect.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from celery_selfheal.store.base import drain_fd

log = logging.getLogger(__name__)

#: the names of listeners' FIFOs (anything else in the directory is left alone)
_NAME = re.compile(r"[0-9a-f]{32}\.[0-9]+\.[0-9a-f]{8}")


def wake_dir(db_path: Path) -> Path:
    """The wake-up directory of the SQLite database at ``db_path``."""
    return db_path.with_name(db_path.name + ".wake")


def _stem(job_id: str) -> str:
    return hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _private_dir(path: Path) -> None:
    """Create ``path`` mode 0700, or check that it is our own directory (not a symlink)."""
    path.parent.mkdir(parents=True, exist_ok=True)  # as the store does for its database
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(errno.EPERM, "not a private directory of this user", str(path))
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _poke(path: Path) -> bool:
    """Write one byte into the FIFO at ``path``; False (and the FIFO removed) when nobody reads it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader: its listener died without closing it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        if exc.errno == errno.ENOENT:  # closed meanwhile
            return False
        raise
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            with contextlib.suppress(BlockingIOError):  # full: woken already
                os.write(fd, b"!")
                return True
        return False
    finally:
        os.close(fd)


def _fifos(directory: Path, stem: str = "") -> list[Path]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / name for name in names if _NAME.fullmatch(name) and name.startswith(stem)]


def wake(directory: Path, job_id: str) -> None:
    """Wake every listener of ``job_id`` (`StateStore.wake`: never raises)."""
    try:
        for path in _fifos(directory, _stem(job_id) + "."):
            _poke(path)
    except OSError as exc:
        log.debug("celery-selfheal: waking job %s through %s failed: %s", job_id, directory, exc)


def sweep(directory: Path) -> int:
    """Remove the FIFOs nobody reads any more; returns how many."""
    gone = 0
    for path in _fifos(directory):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    gone += 1
            continue
        os.close(fd)
    return gone


#: directory -> the process that made it private and swept it: once per process (a FIFO is made
#: per attempt, and each of these checks costs file system calls on every step); a waker removes
#: the FIFOs of dead listeners it meets in between
_READY: dict[Path, int] = {}


def _prepare(directory: Path, *, again: bool = False) -> None:
    if again or _READY.get(directory) != os.getpid():
        _private_dir(directory)
        sweep(directory)
        _READY[directory] = os.getpid()


class FifoListener:
    """One attempt's FIFO (see the module docstring): ``fileno`` to select on, ``drain``, ``close``."""

    def __init__(self, directory: Path, job_id: str) -> None:
        _prepare(directory)
        # made under a name no waker or sweeper matches, and renamed once open for reading: a
        # sweep between mkfifo and open would otherwise see no reader and remove it
        temp = directory / f".new-{secrets.token_hex(8)}"
        try:
            os.mkfifo(temp, 0o600)
        except FileNotFoundError:  # the directory was removed since this process made it
            _prepare(directory, again=True)
            os.mkfifo(temp, 0o600)
        fds: list[int] = []
        try:
            fds.append(os.open(temp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
            fds.append(os.open(temp, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
            self.path = directory / f"{_stem(job_id)}.{os.getpid()}.{secrets.token_hex(4)}"
            os.rename(temp, self.path)
        except BaseException:
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self._read, self._keep = fds
        self._open = True

    def fileno(self) -> int:
        """The read end: readable once the job was woken."""
        return self._read

    def drain(self) -> None:
        """Read what the wakers wrote (one wake-up however many bytes)."""
        drain_fd(self._read)

    def close(self) -> None:
        """Remove the FIFO and close both ends (idempotent)."""
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._keep)
        os.close(self._read)
