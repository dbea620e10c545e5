"""The embedded broker loses no message when producers and consumers race (kombu#1551)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from kombu import Connection

from celery_selfheal.embedded.transport import TRANSPORT

N_PER_PRODUCER = 300


def _options(folder: Path) -> dict:
    return {"data_folder_in": str(folder / "q"), "data_folder_out": str(folder / "q"),
            "control_folder": str(folder / "c"), "polling_interval": 0.001}


def _produce(folder: str, tag: int) -> None:
    with Connection("filesystem://", transport=TRANSPORT, transport_options=_options(Path(folder))) as conn:
        queue = conn.SimpleQueue("race")
        for i in range(N_PER_PRODUCER):
            queue.put({"tag": tag, "i": i})
        queue.close()


def test_no_message_lost_under_concurrent_put_and_get(tmp_path: Path) -> None:
    (tmp_path / "q").mkdir()
    (tmp_path / "c").mkdir()
    ctx = multiprocessing.get_context("fork")
    producers = [ctx.Process(target=_produce, args=(str(tmp_path), t)) for t in range(2)]
    seen: set[tuple[int, int]] = set()
    with Connection("filesystem://", transport=TRANSPORT, transport_options=_options(tmp_path)) as conn:
        queue = conn.SimpleQueue("race")
        for p in producers:
            p.start()
        while len(seen) < 2 * N_PER_PRODUCER:
            msg = queue.get(timeout=20)  # raises Empty (test fails) if a message was lost
            seen.add((msg.payload["tag"], msg.payload["i"]))
            msg.ack()
        queue.close()
    for p in producers:
        p.join(10)
        assert p.exitcode == 0
    assert len(seen) == 2 * N_PER_PRODUCER
    assert not [f for f in (tmp_path / "q").iterdir() if f.name.endswith(".tmp")]
