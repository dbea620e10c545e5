"""Server-sent events: one poller per followed job, fanned out to every client following it.

The stores have no push channel, so the console polls: each job that at least one client follows
has one asyncio task reading ``list_events(after=last)`` every `POLL_SECONDS` (in a thread: store
calls block). Fifty clients on one job cost one indexed range query per interval, not fifty. A client
first reads its own backlog (``after`` / ``Last-Event-ID``) from the store, then takes new events
from the feed's buffer. The stream ends as ``selfheal follow`` does (`api.job_finished`): after the
job's terminal event, unless an operator request is pending that revives the job.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from celery_selfheal.api import job_finished
from celery_selfheal.context import Context
from celery_selfheal.events.bus import TERMINAL_JOB_EVENTS

#: store poll interval: half of it is the mean added latency (see bench/bench_web.py)
POLL_SECONDS = 0.1
#: a comment line this often keeps proxies and browsers from dropping an idle stream
KEEPALIVE_SECONDS = 15.0
#: a job that ended without us seeing its terminal event (a client resuming after it) ends the
#: stream once it has looked finished, with no new event, for this long
QUIET_END_SECONDS = 1.0
#: events a feed keeps for clients that fall slightly behind (others re-read the store)
BUFFER = 2000
Event = tuple[int, dict[str, Any]]


def frame(seq: int, event: dict[str, Any]) -> str:
    """One SSE message: ``id: SEQ`` and ``data: JSON``."""
    return f"id: {seq}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


@dataclass
class Feed:
    """The shared view of one job's event stream."""

    job_id: str
    last: int
    #: (seq, SSE frame) of the latest events, encoded once for all the feed's clients
    buffer: collections.deque[tuple[int, str]] = field(default_factory=lambda: collections.deque(maxlen=BUFFER))
    finished: bool = False  # the job is over for good (api.job_finished)
    clients: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Feeds:
    """The feeds of one console process."""

    def __init__(self, ctx: Context, *, poll: float = POLL_SECONDS, keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.ctx, self.poll, self.keepalive = ctx, poll, keepalive
        self._feeds: dict[str, Feed] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def close(self) -> None:
        """End every stream now (the server is shutting down; from any thread). Without this,
        uvicorn would wait for the streams, then cancel them with a traceback in the log."""
        def close_in_loop() -> None:
            self.closed = True
            for feed in list(self._feeds.values()):
                feed.notify()

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(close_in_loop)
        else:
            self.closed = True

    @property
    def followed(self) -> dict[str, int]:
        """Clients per followed job (for tests and benchmarks)."""
        return {job_id: feed.clients for job_id, feed in self._feeds.items()}

    async def stream(self, job_id: str, after: int) -> AsyncIterator[str]:
        """The SSE text of the job's events after ``after``, live, until the job has ended."""
        backlog = await run_in_threadpool(self.ctx.store.list_events, job_id, after)
        feed = self._join(job_id, backlog[-1][0] if backlog else after)
        try:
            yield f"retry: 2000\n: following job {job_id} after {after}\n\n"
            cursor = after
            while True:
                batch = [(seq, frame(seq, event)) for seq, event in backlog] or self._since(feed, cursor)
                backlog = []
                if batch is None:  # fell behind the buffer: read the store
                    found = await run_in_threadpool(self.ctx.store.list_events, job_id, cursor)
                    batch = [(seq, frame(seq, event)) for seq, event in found]
                if batch:  # one write per wake-up, not one per event
                    cursor = batch[-1][0]
                    yield "".join(text for _, text in batch)
                if (feed.finished and cursor >= feed.last) or self.closed:
                    return
                if not batch:
                    waiter = feed.changed
                    try:
                        await asyncio.wait_for(waiter.wait(), self.keepalive)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
        finally:
            self._leave(feed)

    @staticmethod
    def _since(feed: Feed, cursor: int) -> list[tuple[int, str]] | None:
        if cursor >= feed.last:
            return []
        if not feed.buffer or feed.buffer[0][0] > cursor + 1:
            return None
        return [item for item in feed.buffer if item[0] > cursor]

    def _join(self, job_id: str, last: int) -> Feed:
        self._loop = asyncio.get_running_loop()
        feed = self._feeds.get(job_id)
        if feed is None or feed.finished:  # a finished feed may be for a job revived since
            feed = self._feeds[job_id] = Feed(job_id=job_id, last=last)
            feed.task = asyncio.get_running_loop().create_task(self._run(feed))
        feed.clients += 1
        return feed

    def _leave(self, feed: Feed) -> None:
        feed.clients -= 1
        if feed.clients <= 0 and self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]
            if feed.task is not None:
                feed.task.cancel()

    async def _run(self, feed: Feed) -> None:
        """Poll the store for the feed until nobody follows it or the job is over."""
        quiet, ended = 0.0, False
        while not feed.finished and not self.closed:
            batch = await run_in_threadpool(self.ctx.store.list_events, feed.job_id, feed.last)
            if batch:
                feed.buffer.extend((seq, frame(seq, event)) for seq, event in batch)
                feed.last, quiet = batch[-1][0], 0.0
                ended = ended or any(e.get("event") in TERMINAL_JOB_EVENTS for _, e in batch)
            else:
                quiet += self.poll
            if ended or quiet >= QUIET_END_SECONDS:
                # on quiet alone, only a job that ended a while ago: its terminal event may still be
                # on its way to the store (the status changes first)
                feed.finished = await run_in_threadpool(job_finished, self.ctx, feed.job_id,
                                                        0.0 if ended else QUIET_END_SECONDS)
                # not over (revived, or just quiet): its next terminal event, or a quiet second, asks again
                ended, quiet = False, 0.0
            if batch or feed.finished:
                feed.notify()
            if not feed.finished:
                await asyncio.sleep(self.poll)
