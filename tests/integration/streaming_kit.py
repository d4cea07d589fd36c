"""Helpers for the streaming tests: a fresh database and topic prefix per test, commands that
produce realistic event streams, and ways to read back what reached Kafka and the read models."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import psycopg
from aiokafka import AIOKafkaConsumer

from domain.application import PinkseaApplication
from domain.jobs import ImageRecord, JobParameters
from eventstore.envelope import Envelope
from eventstore.persistence import event_store_env
from infra.kafka import ensure_topics
from infra.settings import Settings
from infra.topics import DOMAIN_TOPICS
from read_models.migrate import migrate

T0 = datetime(2026, 6, 1, tzinfo=UTC)
TINY = JobParameters(model="tiny-sd", prompt="stream", steps=4, width=64, height=64)


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the same server for one test."""
    name = f"pinksea_s_{uuid.uuid4().hex[:10]}"
    base = server_url.rsplit("/", 1)[0]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def prepare_stack(settings: Settings) -> None:
    await ensure_topics(settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


def new_app(settings: Settings) -> PinkseaApplication:
    return PinkseaApplication(env=event_store_env(settings.database_url, pool_size=8))


def busy_user(app: PinkseaApplication, user: str, jobs: int = 3, at: datetime = T0) -> None:
    """Sign-up, a few jobs through every outcome, a deleted image, an expiry: every credit
    event type."""
    app.register_user(user, at)
    for i in range(jobs):
        job = app.submit_job(user, idempotency_key=f"{user}-{i}", params=TINY, at=at)
        if job.job_id is None:  # refused: nothing saved
            continue
        app.record_dispatch(job.job_id, attempt=1, worker_id="w", at=at)
        if i % 3 == 2:
            app.cancel_job(job.job_id, at)
            continue
        app.record_start(job.job_id, attempt=1, worker_id="w", gpu="T4", at=at)
        image: ImageRecord = {
            "name": f"{job.job_id}-0",
            "key": f"users/{user}/images/{job.job_id}-0.png",
            "thumbnail_key": f"users/{user}/thumbnails/{job.job_id}-0.webp",
            "size_bytes": 1234,
            "width": 64,
            "height": 64,
        }
        app.complete_job(
            job.job_id, attempt=1, gpu_ms=100 + i, cuda_ms=95 + i, images=[image], at=at
        )
        if i % 3 == 1:
            app.refund_job(job.job_id, reason="test", actor="admin", at=at)
            app.delete_image(job.job_id, user_id=user, name=image["name"], at=at)
    app.expire_due(user, at + timedelta(days=40))


async def consume_all(settings: Settings, expected: int, timeout: float = 30.0) -> list[Envelope]:
    """Read the domain topics from the beginning until ``expected`` distinct events arrived."""
    consumer = AIOKafkaConsumer(
        *(settings.topic(t) for t in DOMAIN_TOPICS),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: list[Envelope] = []
    ids: set[str] = set()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(ids) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    env = Envelope.from_bytes(m.value)
                    seen.append(env)
                    ids.add(env.id)
    finally:
        await consumer.stop()
    return seen


async def store_event_ids(database_url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT notification_id, originator_id, originator_version FROM pinksea_events "
            "ORDER BY notification_id"
        )
    finally:
        await conn.close()
    return [(r["notification_id"], f"{r['originator_id']}:{r['originator_version']}") for r in rows]


@contextlib.asynccontextmanager
async def running(*coroutine_factories) -> AsyncIterator[asyncio.Event]:
    """Run ``factory(stop)`` tasks in the background for the block's duration."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(f(stop)) for f in coroutine_factories]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
