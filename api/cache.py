"""Redis caches of query results. A cache miss is always correct, so Redis trouble only
costs speed: every error is swallowed and the caller reads the database.

- Balance (``balance:<user>``): a short TTL, deleted by every command this API runs for the
  user. The ledger projection runs in another process and does not delete it (yet), so a
  change made elsewhere (a renewal, a settled job) shows after at most the TTL. A query with
  ``X-Min-Position`` always reads the database, so read-your-writes holds regardless.
- Job views (``jobcache:<job>``): only finished jobs, whose view no longer changes except by
  an admin refund or an image deletion, both run here and delete the entry; 24 hours.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as redis
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

log = structlog.get_logger("api.cache")

HITS = Counter("pinksea_api_cache_hits_total", "Cache hits", ["cache"])
MISSES = Counter("pinksea_api_cache_misses_total", "Cache misses", ["cache"])


class JsonCache:
    def __init__(self, client: redis.Redis, prefix: str, name: str, ttl_s: float) -> None:
        self.client = client
        self.prefix = f"{prefix}{name}:"
        self.name = name
        self.ttl_ms = int(ttl_s * 1000)

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0

    async def get(self, key: str) -> Any | None:
        if not self.enabled:
            return None
        try:
            raw = await self.client.get(self.prefix + key)
        except RedisError as e:
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
        except RedisError as e:
            log.debug("cache write failed", cache=self.name, error=repr(e))

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        try:
            await self.client.delete(*(self.prefix + k for k in keys))
        except RedisError as e:
            log.warning("cache delete failed", cache=self.name, error=repr(e))
