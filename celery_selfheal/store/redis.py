"""Redis state store: cluster mode (any number of workers and hosts share one Redis).

URL: ``redis://[:password@]host:port/db[?prefix=myapp:]`` (also ``rediss://`` and ``unix://``);
every key starts with the prefix (default ``selfheal:``; the ``prefix`` keyword wins over the URL).
Key layout, with ``P`` the prefix and ``J`` a job id (braces delimit the id, which cannot contain
them, so ``job:{a:b}`` never collides with another job's keys). Standalone Redis (>= 5) or a
Sentinel-managed primary; Redis Cluster is not supported (some scripts touch global keys):

==============================  ======  ================================================
key                             type    content
==============================  ======  ================================================
``P jobs``                      zset    job ids scored by creation order (``list_jobs``)
``P jobs:seq``                  string  counter giving that order
``P job:{J}``                   string  job JSON
``P job:{J}:attempts``          hash    ``"<stepIndex>:<attempt>"`` -> attempt JSON
``P job:{J}:events``            list    event JSON; the 1-based position is the sequence number
``P job:{J}:checkpoints``       hash    ``"<stepIndex>:<epoch>"`` -> checkpoint JSON
``P job:{J}:checkpoints:old``   set     fields of superseded checkpoints
``P job:{J}:control``           hash    request id -> control request JSON
``P job:{J}:control:order``     list    request ids, oldest first
``P job:{J}:audit``             list    audit JSON, oldest first
``P lease:owner``               hash    lease key -> owner
``P lease:expiry``              zset    lease key -> expiresAt (ms, Redis server clock)
==============================  ======  ================================================

Atomicity: ``RPUSH`` numbers events (its reply is the new length: no gaps, no duplicates),
``HSETNX`` records a checkpoint once, a compare-and-set script guards record updates (JSON is
merged in Python, never re-encoded in Lua: the script sets the new text only if the value is still
the text read; ``write_job`` writes a job, its attempt and its events that way in one script; the
text is the one this process last read or wrote when it has it, so a write is usually one round trip:
`_redis_writes`), Lua scripts create jobs and handle leases. Leases are
not Redis TTL keys, because an expired key vanishes with its owner and ``expired_leases`` must still
name it. The client is created lazily per process (redis-py pools must not cross ``fork()``) and
retries commands through a Redis restart of up to ~15 s (a command whose reply was lost as the old
server died may then run twice: at worst an event is appended twice; CAS updates stay correct).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from celery_selfheal.store import _codec as codec
from celery_selfheal.store import _redis_writes, _wake_redis
from celery_selfheal.store._redis_records import JobRecords
from celery_selfheal.store._redis_scripts import Scripts
from celery_selfheal.store._seen import Seen
from celery_selfheal.store.base import FINISHED, AttemptWrite, JobSnapshot, Record, StateStore, WakeListener

#: clients inherited through fork(): kept referenced so the child never closes the parent's sockets
_INHERITED: list[redis.Redis] = []

DEFAULT_PREFIX = "selfheal:"


def split_prefix(url: str) -> tuple[str, str | None]:
    """``url`` without its ``prefix`` query parameter, and that parameter (or None)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "prefix"), None)
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


class RedisStore(JobRecords, StateStore):
    """The state store in Redis (see the module docstring for URL, key layout and atomicity)."""

    #: commands are retried on connection errors with backoff 0.05 s doubling up to 1 s: ~15 s in all
    RETRIES = 20

    def __init__(self, url: str, *, prefix: str | None = None) -> None:
        self.url = url
        self._client_url, url_prefix = split_prefix(url)
        self.prefix = prefix if prefix is not None else (url_prefix or DEFAULT_PREFIX)
        self._client: redis.Redis | None = None
        self._pid = 0
        self._scripts: Scripts | None = None
        self._lease_keys = [f"{self.prefix}lease:owner", f"{self.prefix}lease:expiry"]
        self._seen = Seen()  # first guesses of compare-and-set writes (`_seen`)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    # -- connection handling ----------------------------------------------------------------
    def _r(self) -> Any:
        # typed Any: redis-py's annotations ignore decode_responses=True (they promise bytes | str)
        if self._client is not None and self._pid == os.getpid():
            return self._client
        if self._client is not None:  # inherited through fork(): leave it to the parent
            _INHERITED.append(self._client)
        client = self._new_client()
        self._scripts = Scripts.register(client)
        self._client, self._pid = client, os.getpid()
        return client

    def _new_client(self) -> Any:
        return redis.Redis.from_url(
            self._client_url, decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), self.RETRIES),
            socket_connect_timeout=5, socket_timeout=30, socket_keepalive=True,
            health_check_interval=15)  # pings idle connections first, so a restart is noticed early

    def _lua(self) -> Scripts:
        self._r()
        assert self._scripts is not None
        return self._scripts

    def close(self) -> None:
        """Drop this process's connection pool."""
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None

    def _job(self, job_id: str, part: str = "") -> str:
        return f"{self.prefix}job:{{{job_id}}}{part}"

    def _update(self, key: str, field: str | None, change: Callable[[Record], str | None]) -> bool:
        """Compare-and-set one JSON value (`_redis_writes.cas_update`)."""
        return _redis_writes.cas_update(self, key, field, change)

    # -- jobs -------------------------------------------------------------------------------
    def _by_status(self, status: Any) -> str:
        """The zset of the jobs whose status is ``status`` (score: creation order, as in ``jobs``)."""
        return f"{self.prefix}jobs:status:{status}"

    def create_job(self, job: Record) -> None:
        job_id = job["jobId"]
        keys = [self._job(job_id), f"{self.prefix}jobs", f"{self.prefix}jobs:seq", self._by_status(job.get("status"))]
        if not self._lua().create_job(keys=keys, args=[codec.dumps(job), job_id]):
            raise KeyError(job_id)

    def get_job(self, job_id: str) -> Record | None:
        raw = self._r().get(self._job(job_id))
        self._seen.put(self._job(job_id), "", raw)
        return codec.loads(raw) if raw is not None else None

    def update_job(self, job_id: str, changes: Record, *, expect: Record | None = None) -> bool:
        return self.write_job(job_id, changes, expect=expect) is not None

    def write_job(self, job_id: str, changes: Record | None = None, *, expect: Record | None = None,
                  step: tuple[int, Record] | None = None, attempt: AttemptWrite | None = None,
                  events: Sequence[Record] = (), checkpoint: tuple[int, int, Record] | None = None,
                  ) -> list[int] | None:
        return _redis_writes.write_job(self, job_id, changes, expect, step, attempt, events, checkpoint)

    def get_job_state(self, job_id: str, *, lease: tuple[str, str, float] | None = None) -> JobSnapshot:
        return _redis_writes.job_state(self, job_id, lease)

    def list_jobs(self, limit: int = 100) -> list[Record]:
        if limit <= 0:
            return []
        ids = self._r().zrevrange(f"{self.prefix}jobs", 0, limit - 1)
        raws = self._r().mget([self._job(job_id) for job_id in ids]) if ids else []
        return [codec.loads(raw) for raw in raws if raw is not None]

    def page_jobs(self, *, status: str | None = None, limit: int = 50,
                  before: int | None = None) -> tuple[list[Record], int | None]:
        if limit <= 0:
            return [], None
        index = f"{self.prefix}jobs" if status is None else self._by_status(status)
        top = f"({before}" if before is not None else "+inf"
        found = self._r().zrevrangebyscore(index, top, "-inf", start=0, num=limit + 1, withscores=True)
        page = found[:limit]
        raws = self._r().mget([self._job(job_id) for job_id, _ in page]) if page else []
        records = [codec.loads(raw) for raw in raws if raw is not None]
        return records, (int(page[-1][1]) if len(found) > limit else None)

    # -- attempts ---------------------------------------------------------------------------
    def put_attempt(self, job_id: str, step_index: int, attempt: int, record: Record) -> None:
        data = codec.dumps({**record, "jobId": job_id, "stepIndex": step_index, "attempt": attempt})
        self._r().hset(self._job(job_id, ":attempts"), f"{step_index}:{attempt}", data)
        self._seen.put(self._job(job_id, ":attempts"), f"{step_index}:{attempt}", data)

    def get_attempt(self, job_id: str, step_index: int, attempt: int) -> Record | None:
        raw = self._r().hget(self._job(job_id, ":attempts"), f"{step_index}:{attempt}")
        self._seen.put(self._job(job_id, ":attempts"), f"{step_index}:{attempt}", raw)
        return codec.loads(raw) if raw is not None else None

    def transition_attempt(
        self, job_id: str, step_index: int, attempt: int, from_status: str, changes: Record
    ) -> bool:
        codec.dumps(changes)
        return self._update(
            self._job(job_id, ":attempts"), f"{step_index}:{attempt}",
            lambda rec: codec.merged(rec, changes) if rec.get("status") == from_status else None)

    def list_attempts(self, job_id: str, step_index: int | None = None) -> list[Record]:
        records = [codec.loads(raw) for raw in self._r().hgetall(self._job(job_id, ":attempts")).values()]
        if step_index is not None:
            records = [rec for rec in records if rec["stepIndex"] == step_index]
        return sorted(records, key=lambda rec: (rec["stepIndex"], rec["attempt"]))

    # -- events -----------------------------------------------------------------------------
    def append_event(self, job_id: str, event: Record) -> int:
        return int(self._r().rpush(self._job(job_id, ":events"), codec.dumps(event)))

    def list_events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[tuple[int, Record]]:
        if limit is not None and limit <= 0:
            return []
        # LRANGE walks from the nearer end of the list: a follower near the tail reads cheaply
        stop = -1 if limit is None else after + limit - 1
        raws = self._r().lrange(self._job(job_id, ":events"), max(after, 0), stop)
        first = max(after, 0) + 1
        return [(first + i, codec.loads(raw)) for i, raw in enumerate(raws)]

    # -- leases -----------------------------------------------------------------------------
    def acquire_lease(self, key: str, owner: str, ttl: float, *, take_expired: bool = True) -> bool:
        return bool(self._lua().acquire(keys=self._lease_keys,
                                        args=[key, owner, _ms(ttl), "1" if take_expired else "0"]))

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        return bool(self._lua().renew(keys=self._lease_keys, args=[key, owner, _ms(ttl)]))

    def release_lease(self, key: str, owner: str) -> bool:
        return bool(self._lua().release(keys=self._lease_keys, args=[key, owner]))

    def get_lease(self, key: str) -> Record | None:
        found = self._lua().get(keys=self._lease_keys, args=[key])
        return {"owner": found[0], "expiresAt": float(found[1]) / 1000} if found else None

    def expired_leases(self, prefix: str) -> list[tuple[str, Record]]:
        flat = self._lua().expired(keys=self._lease_keys, args=[prefix])
        return [(flat[i], {"owner": flat[i + 1], "expiresAt": float(flat[i + 2]) / 1000})
                for i in range(0, len(flat), 3)]

    # -- wake-ups (`_wake_redis`: PUBLISH, one subscriber thread per process) ------------------
    def _wake_channel(self) -> str:
        # channels are server-wide, not per database: the db is part of the name
        return f"{self.prefix}wake:{self._r().connection_pool.connection_kwargs.get('db', 0)}"

    def wake(self, job_id: str) -> None:
        _wake_redis.publish(self._r, self._wake_channel(), job_id)

    def wake_listener(self, job_id: str) -> WakeListener | None:
        try:
            # a client of its own: the subscriber outlives this store object (and its `close`)
            hub = _wake_redis.hub(self._client_url, self._wake_channel(), lambda: self._new_client().pubsub())
            return hub.listen(job_id)
        except OSError as exc:  # e.g. out of file descriptors for the pipe: the attempt polls
            _wake_redis.log.debug("celery-selfheal: no wake-up listener for job %s: %s", job_id, exc)
            return None

    # -- retention --------------------------------------------------------------------------
    def finished_jobs(self, before: str, limit: int = 1000) -> list[Record]:
        r, out = self._r(), []
        ids = r.zrange(f"{self.prefix}jobs", 0, -1)
        for i in range(0, len(ids), 500):
            for raw in r.mget([self._job(j) for j in ids[i:i + 500]]):
                job = codec.loads(raw) if raw is not None else {}
                if job.get("status") in FINISHED and str(job.get("finishedAt") or "~") < before:
                    out.append(job)
                    if len(out) >= limit:
                        return out
        return out

    def delete_job(self, job_id: str) -> bool:
        r = self._r()
        parts = ("", ":attempts", ":events", ":checkpoints", ":checkpoints:old", ":control", ":control:order",
                 ":audit")
        leases = [k for k in r.hkeys(self._lease_keys[0]) if k.endswith(":" + job_id)]
        pipe = r.pipeline(transaction=True)
        pipe.exists(self._job(job_id))
        pipe.delete(*[self._job(job_id, part) for part in parts])
        pipe.zrem(f"{self.prefix}jobs", job_id)
        if leases:
            pipe.hdel(self._lease_keys[0], *leases)
            pipe.zrem(self._lease_keys[1], *leases)
        return bool(pipe.execute()[0])


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1."""
    return max(1, round(seconds * 1000))
