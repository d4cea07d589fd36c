"""Redis caches of query results. A cache miss is always correct, so Redis trouble only
costs speed: every error is swallowed and the caller reads the database.

- Balance (``balance:<user>``): a short TTL, deleted by every command this API runs for the
  user. The ledger projection runs in another process and does not delete it (yet), so a
  change made elsewhere (a renewal, a settled job) shows after at most the TTL. A query with
  ``X-Min-Position`` always reads the database, so read-your-writes holds regardless.
- Job views (``jobsealed:<job>``): only finished jobs, whose view no longer changes except by
  an admin refund or an image deletion, both run here and delete the entry; 24 hours. Their
  prompts are kept sealed and opened on each read (api/job_views.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as redis
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

log = structlog.get_logger("api.cache")

HITS = Counter("pinksea_api_cache_hits_total", "Cache hits", ["cache"])
MISSES = Counter("pinksea_api_cache_misses_total", "Cache misses", ["cache"])


class Breaker:
    """After a Redis failure, skip Redis for a few seconds: while it is down (or blackholed),
    requests should not each wait for a connect timeout."""

    def __init__(self, pause_s: float = 5.0) -> None:
        self.pause_s = pause_s
        self.open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self.open_until

    def trip(self) -> None:
        self.open_until = time.monotonic() + self.pause_s


class JsonCache:
    def __init__(self, client: redis.Redis, prefix: str, name: str, ttl_s: float) -> None:
        self.client = client
        self.prefix = f"{prefix}{name}:"
        self.name = name
        self.ttl_ms = int(ttl_s * 1000)
        self.breaker = Breaker()

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0 and not self.breaker.open

    async def get(self, key: str) -> Any | None:
        if not self.enabled:
            return None
        try:
            raw = await self.client.get(self.prefix + key)
        except (RedisError, OSError) as e:
            self.breaker.trip()
            log.debug("cache read failed", cache=self.name, error=repr(e))
            raw = None
        if raw is None:
            MISSES.labels(self.name).inc()
            return None
        HITS.labels(self.name).inc()
        return json.loads(raw)

    async def set(self, key: str, value: Any) -> None:
        if not self.enabled:
            return
        try:
            await self.client.set(self.prefix + key, json.dumps(value), px=self.ttl_ms)
        except (RedisError, OSError) as e:
            self.breaker.trip()
            log.debug("cache write failed", cache=self.name, error=repr(e))

    async def delete(self, *keys: str) -> None:
        # While the breaker is open the delete would fail too, after a timeout when Redis
        # hangs: either way the entry lives to its TTL, so skip it rather than make every
        # command wait.
        if not keys or not self.enabled:
            return
        try:
            await self.client.delete(*(self.prefix + k for k in keys))
        except (RedisError, OSError) as e:
            # Tripping also keeps reads off the entry that could not be deleted for a while.
            self.breaker.trip()
            log.warning("cache delete failed", cache=self.name, error=repr(e))
