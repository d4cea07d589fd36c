"""Live job status for the event streams, one poller per API process.

Status changes are made by other processes (the scheduler, the settler) and reach every API
process through the jobs read model, so a stream works wherever its job's reports arrive.
Rather than one query per open stream, one task per process reads every watched job in a
single query each ``interval_s`` and hands each stream the rows that moved past what it has
seen (by store position, so a stream never goes backwards). Per-step progress does not go
through here: it comes from the workers over Redis pub/sub (see routers/events.py).

Each open stream holds a slot of its user's (:class:`StreamSlots`): a stream keeps a Redis
connection for up to ``sse_max_duration_s``, so a user may hold only so many at once, by plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError

from api.cache import Breaker
from api.ratelimit import FAIL_OPEN, REJECTED

log = structlog.get_logger("api.live")

_COLUMNS = """
    job_id, user_id, status, attempt, cancel_requested, hold_mc, gpu_ms, charged_mc,
    refunded_mc, image_count, rejection_reason, rejection_detail, failure_reason,
    failure_fault, updated_at, position
"""


class _Watch:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.position = 0


class JobWatcher:
    def __init__(self, pool: asyncpg.Pool, *, interval_s: float = 0.25) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.watches: dict[UUID, set[_Watch]] = {}
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    @contextlib.asynccontextmanager
    async def watch(self, job_id: UUID) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the job's read-model rows, each newer than the last."""
        w = _Watch()
        self.watches.setdefault(job_id, set()).add(w)
        self._ensure_running()
        self.wake.set()  # a new stream gets its first state without waiting a full interval
        try:
            yield w.queue
        finally:
            watches = self.watches.get(job_id)
            if watches is not None:
                watches.discard(w)
                if not watches:
                    del self.watches[job_id]

    def _ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="job-watcher")

    async def _run(self) -> None:
        while self.watches:
            try:
                await self.poll()
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
                log.warning("job watcher poll failed", error=repr(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval_s)
            self.wake.clear()

    async def poll(self) -> None:
        ids = list(self.watches)
        if not ids:
            return
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ANY($1::uuid[])", ids
        )
        for row in rows:
            for w in list(self.watches.get(row["job_id"], ())):
                if row["position"] > w.position:
                    w.position = row["position"]
                    w.queue.put_nowait(dict(row))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


# ------------------------------------------------------------------------- stream slots

# Live event streams a user may hold open at once, by plan: enough for every job the plan
# can run at once and a few browser tabs. Unknown plans get the smallest.
STREAMS_PER_PLAN: dict[str, int] = {
    "trial": 3,
    "starter": 5,
    "pro": 10,
    "tester": 10,
    "studio": 20,
    "enterprise": 50,
}

# A sorted set per user: member = one stream's slot, score = when it lapses (Redis's clock,
# in ms, so API hosts with different clocks agree). A slot is renewed while its stream runs
# and removed when it ends; one whose process died lapses after the TTL, and taking a slot
# first drops the lapsed ones: nothing leaks, whatever happened to the stream.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# Renewing puts the slot back even if it lapsed meanwhile (a slow heartbeat must not end a
# live stream); the set lives as long as its newest slot.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


def streams_allowed(plan: str) -> int:
    return STREAMS_PER_PLAN.get(plan, min(STREAMS_PER_PLAN.values()))


class StreamSlot:
    """One stream's hold on a slot: renewed while :meth:`kept` runs, released after it (and
    by :meth:`release`, which may be called any number of times)."""

    def __init__(self, slots: StreamSlots | None, key: str, member: str) -> None:
        self.slots = slots  # None: not counted (Redis could not be asked)
        self.key = key
        self.member = member
        self.released = False

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        renewer = None
        if self.slots is not None:
            renewer = asyncio.create_task(self._renew_forever(self.slots))
        try:
            yield
        finally:
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            await self.release()

    async def _renew_forever(self, slots: StreamSlots) -> None:
        while True:
            await asyncio.sleep(slots.ttl_s / 3)
            try:
                await slots.renew_script(keys=[self.key], args=[self.member, slots.ttl_ms])
            except (RedisError, OSError) as e:
                log.warning("stream slot not renewed", key=self.key, error=repr(e))

    async def release(self) -> None:
        if self.released or self.slots is None:
            return
        self.released = True
        # Shielded: a stream that ends by cancellation (a disconnect, a shutdown) still gives
        # its slot back; if even this fails, the slot lapses after the TTL.
        with anyio.CancelScope(shield=True):
            try:
                await self.slots.client.zrem(self.key, self.member)
            except (RedisError, OSError) as e:
                log.warning("stream slot not released", key=self.key, error=repr(e))


class StreamSlots:
    """The per-user bound on open event streams, shared by every API process through Redis.
    Like the rate limits it fails open: without Redis a stream is not counted (and has no
    progress either; its status changes still come from PostgreSQL)."""

    def __init__(
        self, client: redis.Redis, prefix: str, *, ttl_s: float, breaker: Breaker | None = None
    ) -> None:
        self.client = client
        self.prefix = f"{prefix}streams:"
        self.ttl_s = ttl_s
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.breaker = breaker or Breaker()
        self.take_script = client.register_script(_TAKE)
        self.renew_script = client.register_script(_RENEW)

    @property
    def retry_after_s(self) -> int:
        """When a refused client may try again: by then a crashed stream's slot has lapsed."""
        return max(1, math.ceil(self.ttl_s))

    def key(self, user_id: str) -> str:
        return f"{self.prefix}{user_id}"

    async def take(self, user_id: str, plan: str) -> StreamSlot | None:
        """A slot for a new stream of ``user_id``, or None when all of theirs are taken."""
        key, member = self.key(user_id), uuid.uuid4().hex
        if self.breaker.open:
            FAIL_OPEN.inc()
            return StreamSlot(None, key, member)
        try:
            taken = await self.take_script(
                keys=[key], args=[member, streams_allowed(plan), self.ttl_ms]
            )
        except (RedisError, OSError) as e:
            self.breaker.trip()
            FAIL_OPEN.inc()
            log.warning("stream slots unavailable: not counted", error=repr(e))
            return StreamSlot(None, key, member)
        if not taken:
            REJECTED.labels("streams").inc()
            return None
        return StreamSlot(self, key, member)
