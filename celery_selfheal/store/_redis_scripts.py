"""Lua scripts of the Redis store: the operations that must read and write in one atomic step.

Records are never decoded in Lua (cjson would turn ``[]`` into ``{}`` and round floats to 14
digits); scripts only move JSON text and compare plain strings and numbers. Lease times come from
the Redis server clock (``TIME``), so workers on different hosts agree on expiry without synced
clocks. Requires Redis >= 5 (effect replication lets a script write after ``TIME``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: job key, jobs zset, jobs counter, zset of the job's status. ARGV: job JSON, job id.
#: Returns 1 if created.
CREATE_JOB = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[2])
redis.call('ZADD', KEYS[4], seq, ARGV[2])
return 1
"""

#: KEYS: the key. ARGV: hash field ('' for a string key), the JSON text read, the new JSON text.
#: Sets the new text only if the value is still exactly the text read (compare-and-set); returns 1.
CAS = """
local cur
if ARGV[1] == '' then cur = redis.call('GET', KEYS[1]) else cur = redis.call('HGET', KEYS[1], ARGV[1]) end
if cur ~= ARGV[2] then return 0 end
if ARGV[1] == '' then redis.call('SET', KEYS[1], ARGV[3]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
"""

#: `RedisStore.write_job`. KEYS: job key, attempts hash, events list, jobs zset, zset of the old
#: status, zset of the new status, checkpoints hash. ARGV: job text read, new job text, attempt
#: field ('' for none), attempt mode ('put', or 'cas': only if the attempt is still the text read),
#: attempt text read, new attempt text, job id, '1' if the status changes, checkpoint field ('' for
#: none; kept if already there, as HSETNX), checkpoint text, then the event texts. Returns the
#: events' sequence numbers (the list's length after each RPUSH), or nil when a value changed since
#: read (then nothing was written).
WRITE_JOB = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return nil end
if ARGV[4] == 'cas' and redis.call('HGET', KEYS[2], ARGV[3]) ~= ARGV[5] then return nil end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[6]) end
if ARGV[9] ~= '' then redis.call('HSETNX', KEYS[7], ARGV[9], ARGV[10]) end
if ARGV[8] == '1' then
  local seq = redis.call('ZSCORE', KEYS[4], ARGV[7])
  if seq then
    redis.call('ZREM', KEYS[5], ARGV[7])
    redis.call('ZADD', KEYS[6], seq, ARGV[7])
  end
end
local out = {}
for i = 11, #ARGV do out[#out + 1] = redis.call('RPUSH', KEYS[3], ARGV[i]) end
return out
"""

# Leases. KEYS: owner hash (lease key -> owner), expiry zset (lease key -> expiresAt in ms).
# A lease stays recorded until released by its owner or taken by another owner after it expired,
# which is what lets expired_leases() name the owner of a lease whose time ran out.

#: ARGV: lease key, owner, ttl ms, '1' to take an expired lease of another owner ('0': only a free
#: one or ours). Free, (expired) or already ours: take it and return 1.
ACQUIRE = _NOW_MS + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cur ~= ARGV[2] and (ARGV[4] == '0' or tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0') > now) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""

#: ARGV: lease key, owner, ttl ms. Still ours (nobody took it): extend and return 1.
RENEW = _NOW_MS + """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""

#: ARGV: lease key, owner. Ours: drop it and return 1.
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

#: ARGV: lease key. Returns {owner, expiresAt ms} of a live lease, or nil.
GET = _NOW_MS + """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not owner or not expires or tonumber(expires) <= now then return nil end
return {owner, expires}
"""

#: ARGV: key prefix. Returns a flat list key, owner, expiresAt ms of leases that ran out.
EXPIRED = _NOW_MS + """
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES')
for i = 1, #due, 2 do
  local key = due[i]
  if string.sub(key, 1, #ARGV[1]) == ARGV[1] then
    local owner = redis.call('HGET', KEYS[1], key)
    if owner then
      out[#out + 1] = key; out[#out + 1] = owner; out[#out + 1] = due[i + 1]
    end
  end
end
return out
"""


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client (redis-py sends EVALSHA, falling back to EVAL)."""

    create_job: Any
    acquire: Any
    renew: Any
    release: Any
    get: Any
    expired: Any
    cas: Any
    write_job: Any

    @classmethod
    def register(cls, client: Any) -> Scripts:
        """Register every script on ``client``."""
        sources = (CREATE_JOB, ACQUIRE, RENEW, RELEASE, GET, EXPIRED, CAS, WRITE_JOB)
        return cls(*(client.register_script(src) for src in sources))
