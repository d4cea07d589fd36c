"""Rate limits per user and endpoint group, sized by plan, counted in Redis.

A sliding window approximated from two fixed one-minute counters (the current and the previous
window, weighted by how much of it still overlaps): one pipelined round trip, shared by every
API process, with no burst of twice the limit at a window edge.

Headers (draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Limit``, ``RateLimit-Remaining``,
``RateLimit-Reset`` (seconds) and ``RateLimit-Policy`` on every limited response; a 429 adds
``Retry-After``.

**Fails open.** When Redis is unreachable or slow (1 s timeout), requests are let through
(and for 5 s after a failure Redis is not asked at all, so an outage adds no latency);
``pinksea_api_ratelimit_fail_open_total`` counts them: the limits protect capacity, and
the domain's own queue limit (unfinished jobs per plan) still bounds what a user can hold.
Refusing every request because the limiter is down would turn a Redis outage into an API one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass

import redis.asyncio as redis
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

from api.cache import Breaker

log = structlog.get_logger("api.ratelimit")

WINDOW_S = 60

# Requests per minute for each endpoint group on the smallest plan ...
GROUP_BASE: dict[str, int] = {
    "submit": 20,  # POST /v1/jobs
    "command": 30,  # other commands (cancel, image deletion, API keys)
    "query": 300,  # reads
    "stream": 20,  # opening an SSE stream
    "admin": 600,  # admin routes (per admin)
    "auth": 30,  # failed API-key attempts, per client address (see api/deps.py)
    "auth_key": 10,  # failed API-key attempts, per key prefix (see api/deps.py)
}
# Bounds on guessing, not on capacity: no plan or load-test multiplier moves them.
FIXED_GROUPS = frozenset({"auth", "auth_key"})
# ... scaled by the plan.
PLAN_FACTOR: dict[str, int] = {
    "trial": 1,
    "starter": 3,
    "pro": 6,
    "studio": 12,
    "tester": 12,
    "enterprise": 60,
}

REJECTED = Counter("pinksea_api_rate_limited_total", "Requests refused by rate limits", ["group"])
FAIL_OPEN = Counter(
    "pinksea_api_ratelimit_fail_open_total", "Requests let through because Redis failed"
)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the current window ends
    retry_after_s: int  # when refused: seconds until a request would be allowed

    def headers(self) -> dict[str, str]:
        h = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f"{self.limit};w={WINDOW_S}",
        }
        if not self.allowed:
            h["Retry-After"] = str(self.retry_after_s)
        return h


def limit_for(group: str, plan: str, multiplier: float = 1.0) -> int:
    base = GROUP_BASE[group]
    if group in FIXED_GROUPS:
        return base
    factor = 1 if group == "admin" else PLAN_FACTOR.get(plan, 1)
    return max(1, int(base * factor * multiplier))


def address_identity(host: str | None) -> str:
    """What the per-address limits count a client address as: an IPv4 address itself, an IPv6
    address by its /64 (one customer's whole network: a host picks any address in it at will),
    anything else (a Unix socket, a proxy that wrote no address) by a digest of what it is."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "name-" + hashlib.sha256(host.encode("utf-8", "replace")).hexdigest()[:16]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str, *, multiplier: float = 1.0) -> None:
        self.client = client
        self.prefix = f"{prefix}rl:"
        self.multiplier = multiplier
        self.breaker = Breaker()
        self._warned_at = 0.0

    async def hit(self, group: str, user_id: str, plan: str) -> Decision | None:
        """Count one request; None when Redis could not be asked (fail open)."""
        return await self._ask(group, user_id, plan, counting=True)

    async def peek(self, group: str, user_id: str, plan: str) -> Decision | None:
        """The decision ``hit`` would give now, without counting anything."""
        return await self._ask(group, user_id, plan, counting=False)

    async def _ask(self, group: str, user_id: str, plan: str, *, counting: bool) -> Decision | None:
        limit = limit_for(group, plan, self.multiplier)
        if self.breaker.open:
            FAIL_OPEN.inc()
            return None
        now = time.time()
        window = int(now // WINDOW_S)
        elapsed = now - window * WINDOW_S
        current = f"{self.prefix}{group}:{user_id}:{window}"
        previous = f"{self.prefix}{group}:{user_id}:{window - 1}"
        try:
            if counting:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.incr(current)
                    pipe.expire(current, 2 * WINDOW_S)
                    pipe.get(previous)
                    count, _, prev_raw = await pipe.execute()
            else:
                current_raw, prev_raw = await self.client.mget(current, previous)
                count = int(current_raw or 0) + 1  # as if this request were counted
        except (RedisError, OSError) as e:
            self.breaker.trip()
            FAIL_OPEN.inc()
            if now - self._warned_at > 10:  # once in a while, not per request
                self._warned_at = now
                log.warning("rate limiter unavailable: failing open", error=repr(e))
            return None
        count = int(count)
        prev = int(prev_raw or 0)
        weight = (WINDOW_S - elapsed) / WINDOW_S
        used = prev * weight + count
        reset = max(1, math.ceil(WINDOW_S - elapsed))
        allowed = used <= limit
        retry = 0
        if not allowed:
            if counting:
                REJECTED.labels(group).inc()
            if count >= limit or prev == 0:
                retry = reset  # this window alone is full: wait for the next one
            else:
                # The previous window's weight must fall until used < limit.
                need = (limit - count) * WINDOW_S / prev
                retry = max(1, math.ceil((WINDOW_S - need) - elapsed))
                retry = min(retry, reset)
        return Decision(
            allowed=allowed,
            limit=limit,
            remaining=max(0, math.floor(limit - used)),
            reset_s=reset,
            retry_after_s=retry,
        )
