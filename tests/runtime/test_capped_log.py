"""CappedLog: head + marker + tail, written live, bounded on disk."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from celery_selfheal.runtime.capped_log import CappedLog

MARKER = re.compile(rb"\n\[\.\.\. (\d+) bytes dropped by celery-selfheal log cap \.\.\.\]\n")


def split_file(data: bytes) -> tuple[bytes, int, bytes]:
    """(head, dropped, tail) of a capped log file; dropped 0 and tail b"" when there is no marker."""
    match = MARKER.search(data)
    if match is None:
        return data, 0, b""
    return data[: match.start()], int(match.group(1)), data[match.end() :]


def test_small_output_is_kept_whole(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "logs" / "a.log", head_bytes=100, tail_bytes=100)
    log.write("hello ")
    log.write("world\n")
    log.close()
    assert (tmp_path / "logs" / "a.log").read_bytes() == b"hello world\n"
    assert log.total_bytes == 12
    assert log.tail_text() == "hello world\n"


def test_large_output_keeps_head_and_tail_with_marker(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    lines = [f"line {i:07d}\n" for i in range(200_000)]  # 2.6 MB
    full = "".join(lines).encode()
    with CappedLog(path, head_bytes=1000, tail_bytes=2000) as log:
        for line in lines:
            log.write(line)
    head, dropped, tail = split_file(path.read_bytes())
    assert head == full[:1000]
    assert tail == full[-2000:]
    assert dropped == len(full) - 3000
    assert log.tail_text(13) == "line 0199999\n"


def test_file_is_live_and_bounded_before_close(tmp_path: Path) -> None:
    path = tmp_path / "live.log"
    log = CappedLog(path, head_bytes=50, tail_bytes=100, flush_interval=3600)
    log.write("first words\n")
    assert path.read_bytes() == b"first words\n"  # on disk before close
    for i in range(5000):
        log.write(f"{i}\n")
        data = path.read_bytes()
        assert len(data) <= 50 + 100 + 100 + 80
    head, dropped, tail = split_file(data)
    assert head.startswith(b"first words\n") and len(head) == 50
    assert tail.endswith(b"4999\n")  # everything written is already in the file
    assert dropped > 0
    log.close()
    assert len(split_file(path.read_bytes())[2]) <= 100


def test_flush_interval_compacts_over_cap_tail(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    log = CappedLog(path, head_bytes=0, tail_bytes=10, flush_interval=0.0)
    log.write("0123456789abc")
    assert split_file(path.read_bytes()) == (b"", 3, b"3456789abc")
    log.close()


def test_write_after_close_is_an_error(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "c.log")
    log.close()
    log.close()  # idempotent
    try:
        log.write("x")
    except ValueError:
        pass
    else:
        raise AssertionError("write after close must fail")


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.text(max_size=40), max_size=30),
    head=st.integers(0, 60),
    tail=st.integers(0, 60),
    interval=st.sampled_from([0.0, 3600.0]),
)
def test_capped_file_is_head_prefix_marker_and_tail_suffix(
    chunks: list[str], head: int, tail: int, interval: float
) -> None:
    full = "".join(chunks).encode("utf-8", errors="replace")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.log"
        log = CappedLog(path, head_bytes=head, tail_bytes=tail, flush_interval=interval)
        for chunk in chunks:
            log.write(chunk)
        log.close()
        data = path.read_bytes()
    got_head, dropped, got_tail = split_file(data)
    if dropped == 0:
        assert data == full
    else:
        assert full.startswith(got_head) and full.endswith(got_tail)
        assert len(got_head) <= head and len(got_tail) <= tail
        assert len(got_head) + dropped + len(got_tail) == len(full)
        # Cuts never split a UTF-8 character: both parts decode strictly.
        got_head.decode("utf-8")
        got_tail.decode("utf-8")
    assert log.total_bytes == len(full)
    assert full.decode("utf-8", errors="replace").endswith(log.tail_text(20))
