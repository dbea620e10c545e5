"""Objects kept in memory while replay builds its trees, then written to disk as one pack.

Applying a patch in-process writes its new blobs and trees, and committing writes a commit. As
loose objects that was most of a replay's time (bench/bench_replay.py): besides the small
compressed files, libgit2 looks every new id up in all backends, re-scans the pack directory when
it is not found and tries to touch the missing loose file. Here a `MemoryObjects` backend is the
only backend of one libgit2 repository handle: writes stay in a dict (no look-up on disk), reads of
anything else go to the workspace's own object database. `write_pack` then stores the objects in one
pack (undeltified and uncompressed, see `_pack`) with its version-2 index, in the formats
of git's Documentation/gitformat-pack.txt. Used only by `workspace.patch_stack`, which verifies
every tree id against its checkpoint; the tests check each pack with ``git fsck --full``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2

#: a pack offset at or above this goes to the index's table of 8-byte offsets
_LARGE = 0x80000000
_SCRATCH = "selfheal-replay-"
_STALE_AFTER = 3600.0  # seconds; a replay takes well under a minute


class MemoryObjects(pygit2.OdbBackend):
    """A libgit2 object database backend (pygit2's ``*_cb`` API): objects written through it stay
    in memory; every other object is read from ``disk`` (the repository's own database)."""

    def __init__(self, disk: Any) -> None:
        super().__init__()
        self.disk = disk
        self.objects: dict[pygit2.Oid, tuple[int, bytes]] = {}
        # libgit2 checks that every entry of a tree it writes exists (its header), so the same
        # unchanged entries are asked for at every step; objects never change, so they are cached.
        self.headers: dict[pygit2.Oid, tuple[int, int]] = {}
        self.size = 0  # bytes held in `objects`

    def write_cb(self, oid: pygit2.Oid, data: bytes, kind: int) -> None:
        if oid not in self.objects:
            self.objects[oid] = (kind, data)
            self.size += len(data)

    def read_cb(self, oid: pygit2.Oid) -> tuple[int, bytes]:
        found = self.objects.get(oid)
        if found is not None:
            return found
        kind, data = self.disk.read(oid)  # KeyError: libgit2's "not found"
        return int(kind), data

    def read_prefix_cb(self, oid: pygit2.Oid) -> tuple[int, bytes, pygit2.Oid]:
        kind, data = self.read_cb(oid)  # only full ids: replay never abbreviates
        return kind, data, oid

    def read_header_cb(self, oid: pygit2.Oid) -> tuple[int, int]:
        found = self.objects.get(oid)
        if found is not None:
            return found[0], len(found[1])
        header = self.headers.get(oid)
        if header is None:
            kind, size = self.disk.read_header(oid)
            header = self.headers[oid] = (int(kind), size)
        return header

    def exists_cb(self, oid: pygit2.Oid) -> bool:
        # Only the memory is asked: libgit2 checks before every write, and a miss on disk made it
        # re-scan the pack directory each time. An object already on disk is at worst stored twice.
        return oid in self.objects

    def exists_prefix_cb(self, oid: pygit2.Oid) -> pygit2.Oid:
        if oid in self.objects or oid in self.disk:
            return oid
        raise KeyError(oid)

    def refresh_cb(self) -> None:
        """Nothing to re-read: the memory is always current, the disk database refreshes itself."""

    def __iter__(self) -> Iterator[pygit2.Oid]:
        return iter(list(self.objects))


def attach(repo: Any, objects_dir: Path) -> MemoryObjects:
    """Make ``repo`` (a pygit2 handle) read ``objects_dir`` and keep new objects in memory."""
    backend = MemoryObjects(pygit2.Odb(str(objects_dir)))
    odb = pygit2.Odb()
    odb.add_backend(backend, 1)
    repo.set_odb(odb)
    return backend


def _memory_tmp() -> str | None:
    """A temp directory in memory (Linux's /dev/shm), else None: the platform's default."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def scratch_repository(objects_dir: Path) -> tuple[Any, MemoryObjects, Path]:
    """A private bare repository for applying patches in-process: its objects are those of
    ``objects_dir`` plus memory (`attach`), its index (rewritten by every libgit2 apply, which was
    most of what remained of a step's cost on a busy disk) lives in a private directory in memory
    when the system has one. Returns the handle, the memory and the directory (the caller removes
    it); stale ones of killed processes are removed here."""
    parent = _memory_tmp()
    now = time.time()
    for stale in Path(parent or tempfile.gettempdir()).glob(f"{_SCRATCH}*"):
        with contextlib.suppress(OSError):
            if stale.stat().st_uid == os.getuid() and now - stale.stat().st_mtime > _STALE_AFTER:
                shutil.rmtree(stale, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=_SCRATCH, dir=parent))  # mode 0700: the user's paths stay private
    try:
        repo = pygit2.init_repository(str(path), bare=True)
        return repo, attach(repo, objects_dir), path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _header(kind: int, size: int) -> bytes:
    """A pack entry's type and size: 3 type bits, then the size 4 + 7*n bits, little end first."""
    out = bytearray([(kind << 4) | (size & 0x0F)])
    size >>= 4
    while size:
        out[-1] |= 0x80
        out.append(size & 0x7F)
        size >>= 7
    return bytes(out)


def _pack(objects: dict[pygit2.Oid, tuple[int, bytes]]) -> tuple[bytes, list[tuple[bytes, int, int]]]:
    """The pack bytes and, per object, (raw id, offset, crc32 of its entry)."""
    body = bytearray(b"PACK" + struct.pack(">II", 2, len(objects)))
    entries = []
    for oid, (kind, data) in objects.items():
        # Stored, not compressed: zlib took a quarter of a replay's time on a busy machine, and the
        # pack holds only the job's own changes (the baseline's objects stay as the clone linked them).
        entry = _header(kind, len(data)) + zlib.compress(data, 0)
        entries.append((oid.raw, len(body), zlib.crc32(entry)))
        body += entry
    body += hashlib.sha1(body).digest()
    return bytes(body), sorted(entries)


def _index(entries: list[tuple[bytes, int, int]], pack_sha: bytes) -> bytes:
    """The version-2 ``.idx`` of a pack: fan-out, sorted ids, crc32s, offsets, checksums."""
    counts = [0] * 256
    for raw, _, _ in entries:
        counts[raw[0]] += 1
    fanout, total = [], 0
    for n in counts:
        total += n
        fanout.append(total)
    small: list[int] = []
    large: list[int] = []
    for _, offset, _ in entries:
        if offset < _LARGE:
            small.append(offset)
        else:
            small.append(_LARGE | len(large))
            large.append(offset)
    out = bytearray(b"\377tOc" + struct.pack(">I", 2) + struct.pack(">256I", *fanout))
    out += b"".join(raw for raw, _, _ in entries)
    out += struct.pack(f">{len(entries)}I", *(crc for _, _, crc in entries))
    out += struct.pack(f">{len(small)}I", *small) + struct.pack(f">{len(large)}Q", *large)
    out += pack_sha
    return bytes(out + hashlib.sha1(out).digest())


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="tmp_pack_")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o444)  # git's pack files are read-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pack(backend: MemoryObjects, pack_dir: Path) -> int:
    """Write every object held in ``backend`` to one pack in ``pack_dir`` (the ``.pack`` first, its
    ``.idx`` last: git sees a pack only by its index), then forget them; returns how many."""
    if not backend.objects:
        return 0
    body, entries = _pack(backend.objects)
    name = f"pack-{body[-20:].hex()}"
    pack_dir.mkdir(parents=True, exist_ok=True)
    _write(pack_dir / f"{name}.pack", body)
    _write(pack_dir / f"{name}.idx", _index(entries, body[-20:]))
    written = len(backend.objects)
    backend.objects.clear()
    backend.size = 0
    return written
