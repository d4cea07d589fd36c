"""What one API process holds for its lifetime: pools, the Application, clients, caches."""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import anyio
import asyncpg
import redis.asyncio as aioredis
import structlog
from anyio import CapacityLimiter, to_thread
from botocore.exceptions import BotoCoreError, ClientError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from api.auth import JwtVerifier
from api.cache import JsonCache
from api.deactivation import AccountFlags
from api.image_urls import ImageUrls, image_urls
from api.live import JobWatcher, StreamSlots
from api.presets import PresetCache
from api.ratelimit import RateLimiter
from domain.application import PinkseaApplication
from domain.presets import PresetList
from eventstore.persistence import event_store_env
from eventstore.tables import create_event_tables
from infra import s3
from infra.db import ConnectionBounds, create_pool
from infra.personal_keys import PersonalKeys, parse_kek
from infra.settings import Settings
from projections.consistency import wait_for_position
from projections.registry import get_projection
from read_models import queries
from read_models.migrate import migrate

T = TypeVar("T")
log = structlog.get_logger("api.services")

PLAN_CACHE_S = 30.0  # how stale a user's plan may be for rate limits and API-key access
STORAGE_CACHE_S = 5.0  # how stale the storage used may be when a job is submitted
REGISTERED_CACHE = 100_000  # users known to be registered, per process
S3_DELETE_KEYS_MAX = 1000  # S3's own limit on one DeleteObjects


class _Lru:
    """A bounded map with optional expiry; process-local and lock-free (one event loop)."""

    def __init__(self, size: int, ttl_s: float | None = None) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self.data: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any | None:
        hit = self.data.get(key)
        if hit is None:
            return None
        at, value = hit
        if self.ttl_s is not None and time.monotonic() - at > self.ttl_s:
            del self.data[key]
            return None
        self.data.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
        self.data[key] = (time.monotonic(), value)
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)

    def drop(self, key: str) -> None:
        self.data.pop(key, None)


@dataclass
class Services:
    settings: Settings
    pool: asyncpg.Pool
    application: PinkseaApplication
    redis: aioredis.Redis
    pubsub_redis: aioredis.Redis  # no read timeout: subscribers wait for messages
    s3: Any
    verifier: JwtVerifier
    limiter: CapacityLimiter
    rate_limiter: RateLimiter
    balance_cache: JsonCache
    job_cache: JsonCache
    watcher: JobWatcher
    stream_slots: StreamSlots  # open event streams per user (api/live.py)
    image_urls: ImageUrls  # signs every image URL handed out (CloudFront, or S3 presigned)
    deactivations: AccountFlags  # checked on every authenticated request (api/deps.py)
    personal_keys: PersonalKeys  # the users' data keys: open and seal prompts, erase them
    registered: _Lru = field(default_factory=lambda: _Lru(REGISTERED_CACHE))
    plans: _Lru = field(default_factory=lambda: _Lru(REGISTERED_CACHE, PLAN_CACHE_S))
    storage: _Lru = field(default_factory=lambda: _Lru(REGISTERED_CACHE, STORAGE_CACHE_S))
    # user -> the sign-in e-mail this process recorded for notifications (api/deps.py)
    addresses: _Lru = field(default_factory=lambda: _Lru(REGISTERED_CACHE))
    style_presets: PresetCache = field(default_factory=PresetCache)  # the S3 index, a minute

    async def command(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a synchronous Application call on a worker thread. The limiter holds the
        threads to the event store's connection pool, so none waits inside for a connection."""
        return await to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Other blocking calls (S3) on the default thread pool."""
        return await to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def forget_objects(self, *keys: str) -> None:
        """Delete these objects of the bucket after the event that deleted them, best effort:
        the event is the truth and S3 deletes are idempotent, so a failure is only logged
        (with the keys; the event names them too, for a sweeper) and a repeat tries again."""
        assert 0 < len(keys) <= S3_DELETE_KEYS_MAX, len(keys)
        try:
            answer = await self.blocking(
                self.s3.delete_objects,
                Bucket=self.settings.s3_bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
        except (BotoCoreError, ClientError) as e:
            log.warning("objects not deleted", keys=keys, error=repr(e))
            return
        # DeleteObjects answers 200 and lists the keys it could not delete.
        errors = answer.get("Errors") if isinstance(answer, dict) else None
        if errors:
            log.warning("objects not deleted", keys=keys, errors=errors)

    async def presets(self) -> PresetList:
        """The system style presets (api/presets.py: read from S3 at most once a minute)."""
        return await self.style_presets.get(self.s3, self.settings.s3_bucket)

    async def ensure_registered(self, user_id: str) -> None:
        """A user's first authenticated request signs them up (trial); idempotent."""
        if self.registered.get(user_id):
            return
        await self.command(self.application.register_user, user_id, now())
        self.registered.put(user_id, True)

    async def plan_of(self, user_id: str) -> str:
        """The slug of the user's current plan, from the event store, cached briefly."""
        slug = self.plans.get(user_id)
        if slug is None:
            sub = await self.command(self.application.subscription, user_id)
            slug = sub.plan.slug
            self.plans.put(user_id, slug)
        return str(slug)

    async def storage_used(self, user_id: str) -> int:
        """Bytes of the user's images, for the storage quota at submit. Cached for a few
        seconds: the quota is a soft limit, and the sum is a query per submission otherwise."""
        used = self.storage.get(user_id)
        if used is None:
            used = await queries.storage_used_bytes(self.pool, user_id)
            self.storage.put(user_id, used)
        return int(used)

    async def forget_job_view_once_projected(self, job_id: UUID, position: int) -> None:
        """A finished job's view is cached for a day. One read between a command that changes
        the job (an image deleted, a refund) and the projection applying it would cache the old
        view: drop the cache again once the jobs projection is past ``position``. Run it after
        the response (a background task), so the client does not wait for it."""
        topics = tuple(self.settings.topic(t) for t in get_projection("jobs").topics)
        reached = await wait_for_position(
            self.pool, "jobs", topics, position, timeout_s=self.settings.read_your_writes_timeout_s
        )
        await self.job_cache.delete(str(job_id))
        if not reached:
            log.info("jobs view behind a command", job_id=str(job_id), position=position)

    async def close(self) -> None:
        await self.watcher.stop()
        await self.pool.close()
        await self.redis.aclose()
        await self.pubsub_redis.aclose()
        await to_thread.run_sync(self.application.close)


def now() -> datetime:
    return datetime.now(UTC)


def s3_client(settings: Settings) -> Any:
    return s3.s3_client(
        settings,
        signature_version="s3v4",
        connect_timeout=2,
        read_timeout=5,
        retries={"max_attempts": 2},
    )


async def start_services(settings: Settings) -> Services:
    s3_images = s3_client(settings)
    # The URL signing key is parsed once per process, first: a bad key stops the start here.
    urls = image_urls(settings, s3_images)
    pool = await create_pool(settings)
    async with pool.acquire() as conn:
        await migrate(conn)  # idempotent, serialised by an advisory lock
        await create_event_tables(conn, settings.database_url)
    application = await to_thread.run_sync(
        lambda: PinkseaApplication(
            env=event_store_env(
                settings.database_url,
                pool_size=settings.db_pool_size,
                bounds=ConnectionBounds.from_settings(settings),
            )
        )
    )
    # One quick retry at most: the default retries take seconds, and every Redis use here
    # can do without (rate limits fail open, caches fall back to the database).
    client = aioredis.from_url(
        settings.redis_url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
    )
    watcher = JobWatcher(pool, interval_s=settings.sse_poll_interval_s)
    limiter = anyio.CapacityLimiter(settings.db_pool_size)
    rate_limiter = RateLimiter(
        client, settings.redis_key_prefix, multiplier=settings.rate_limit_multiplier
    )
    return Services(
        settings=settings,
        pool=pool,
        application=application,
        redis=client,
        pubsub_redis=aioredis.from_url(
            settings.redis_url, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 1)
        ),
        s3=s3_images,
        verifier=JwtVerifier(settings),
        limiter=limiter,
        rate_limiter=rate_limiter,
        balance_cache=JsonCache(
            client, settings.redis_key_prefix, "balance", settings.balance_cache_ttl_s
        ),
        # "jobsealed": views with their prompts sealed (api/job_views.py). The entries under
        # the names before ("jobcache": private failure reasons, "jobview": plain prompts) are
        # never read again; they lapse within a day.
        job_cache=JsonCache(
            client, settings.redis_key_prefix, "jobsealed", settings.job_cache_ttl_s
        ),
        watcher=watcher,
        stream_slots=StreamSlots(
            client,
            settings.redis_key_prefix,
            ttl_s=settings.sse_slot_ttl_s,
            breaker=rate_limiter.breaker,
        ),
        image_urls=urls,
        deactivations=AccountFlags(
            client,
            settings.redis_key_prefix,
            pool,
            application,
            limiter,
            breaker=rate_limiter.breaker,  # one Redis, one verdict: a request waits out one timeout
        ),
        personal_keys=PersonalKeys(pool, parse_kek(settings.personal_data_kek.get_secret_value())),
    )
