"""Size-capped attempt log: the first and the last bytes of a runtime's output, with a marker between.

Layout of the file once output exceeded the cap::

    <first head_bytes>
    [... 1234567 bytes dropped by celery-selfheal log cap ...]
    <last tail_bytes>

Every write reaches the file at once (a killed worker loses nothing the OS already has). The part
after the head is appended as it comes and compacted back to ``tail_bytes`` when it has doubled,
when it is over the cap and ``flush_interval`` has passed since the last compaction, and on close;
so the file never exceeds ``head + marker + 2 * tail`` bytes and is a faithful head/marker/tail
picture at every moment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def _head_cut(data: bytes | bytearray, limit: int) -> int:
    """Largest cut <= limit that does not split a UTF-8 sequence."""
    cut = min(limit, len(data))
    while 0 < cut < len(data) and _is_continuation(data[cut]):
        cut -= 1
    return cut


def _tail_cut(data: bytes | bytearray, keep: int) -> int:
    """Start offset keeping at most ``keep`` trailing bytes, not starting inside a UTF-8 sequence."""
    start = max(len(data) - keep, 0)
    while start < len(data) and _is_continuation(data[start]):
        start += 1
    return start


def _marker(dropped: int) -> bytes:
    return f"\n[... {dropped} bytes dropped by celery-selfheal log cap ...]\n".encode()


class CappedLog:
    """Size-capped attempt log: keeps the first ``head_bytes`` and the last ``tail_bytes``, with a
    marker line saying how many bytes were dropped in between.

    Written live: the head goes straight to the file, later output is appended and the tail region
    compacted at least every ``flush_interval`` seconds once over its cap (and on close), so a crash
    loses nothing already written and the file stays bounded. Text is expected to be redacted
    already. Not thread-safe: one writer.
    """

    def __init__(
        self,
        path: Path,
        *,
        head_bytes: int = 256 * 1024,
        tail_bytes: int = 256 * 1024,
        flush_interval: float = 2.0,
    ) -> None:
        if head_bytes < 0 or tail_bytes < 0:
            raise ValueError("head_bytes and tail_bytes must be >= 0")
        self.path = Path(path)
        self._head_cap = head_bytes
        self._tail_cap = tail_bytes
        self._flush_interval = flush_interval
        # 0600 like the other artifacts, whatever the umask (the output is scrubbed, still private)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:  # the folder is made on first use only (no mkdir call per attempt)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, flags, 0o600)
        self._fh = open(fd, "wb")  # noqa: SIM115
        self._head = bytearray()
        self._head_full = head_bytes == 0
        #: exactly the bytes after the head (and after the marker, once something was dropped)
        self._tail = bytearray()
        self._dropped = 0
        self._total = 0
        self._last_compact = time.monotonic()

    # -- writing ---------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Append ``text`` (already redacted) to the log."""
        if self._fh.closed:
            raise ValueError(f"write to closed log {self.path}")
        data = text.encode("utf-8", errors="replace")
        if not data:
            return
        self._total += len(data)
        if not self._head_full:
            cut = _head_cut(data, self._head_cap - len(self._head))
            if cut == len(data) and len(self._head) + cut < self._head_cap:
                self._append_file(data)
                self._head += data
                return
            self._append_file(data[:cut])
            self._head += data[:cut]
            self._head_full = True
            data = data[cut:]
        self._tail += data
        over = len(self._tail) > self._tail_cap
        due = time.monotonic() - self._last_compact >= self._flush_interval
        if len(self._tail) > 2 * self._tail_cap or (over and due):
            self._compact()
        else:
            self._append_file(data)

    def _append_file(self, data: bytes | bytearray) -> None:
        if data:
            self._fh.write(data)
            self._fh.flush()

    def _compact(self) -> None:
        """Rewrite everything after the head as marker + the last ``tail_bytes``."""
        start = _tail_cut(self._tail, self._tail_cap)
        if start:
            self._dropped += start
            del self._tail[:start]
        self._fh.seek(len(self._head))
        if self._dropped:
            self._fh.write(_marker(self._dropped))
        self._fh.write(self._tail)
        self._fh.truncate()
        self._fh.flush()
        self._last_compact = time.monotonic()

    def close(self) -> None:
        """Compact the tail to its cap and close the file. Idempotent."""
        if self._fh.closed:
            return
        try:
            if len(self._tail) > self._tail_cap:
                self._compact()
        finally:
            self._fh.close()

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Bytes written so far (before capping)."""
        return self._total

    @property
    def dropped_bytes(self) -> int:
        """Bytes dropped from the middle so far (the file is compacted lazily; see class doc)."""
        return self._dropped + max(len(self._tail) - self._tail_cap, 0)

    def tail_text(self, max_chars: int = 8192) -> str:
        """The last ``max_chars`` characters of output, for classification and summaries."""
        if max_chars <= 0:
            return ""
        want = max_chars * 4  # a UTF-8 character is at most 4 bytes
        data = self._tail[-want:]
        if len(data) < want and not self._dropped:
            # Nothing dropped yet: head and tail are contiguous output.
            data = self._head[-(want - len(data)) :] + data
        text = bytes(data[_tail_cut(data, len(data)) :]).decode("utf-8", errors="replace")
        return text[-max_chars:]
