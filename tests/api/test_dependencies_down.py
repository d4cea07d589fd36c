"""The API while a dependency is down: commands go to PostgreSQL, the event store, which is the
only service they need. Redis (rate limits, caches, cancel flags, progress) and Kafka (fed by
the relay, never by the API) may vanish without a command being refused or lost.

Each test runs its own API (in-process, with its lifespan, as the other API tests do) against
a dependency of its own that it can kill: a private redis-server, a Kafka address where
nothing listens. The shared stack is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI

from api.app import create_app
from api.auth import sign_dev_token
from api.services import Services
from eventstore.relay import Relay
from infra.db import create_pool
from infra.kafka import ensure_topics
from infra.settings import Settings
from tests.api.conftest import TINY, Kit, free_port, problem_type
from tests.integration.streaming_kit import (
    consume_all,
    fresh_database,
    running,
    store_event_ids,
    wait_until,
)

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------- Redis


class PrivateRedis:
    """A redis-server of this test's own, without persistence, that it may kill and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGKILL's exit
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield client, app.state.services


async def submit(client: httpx.AsyncClient, token: str, key: str) -> httpx.Response:
    return await client.post(
        "/v1/jobs",
        json=TINY,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
    )


async def wait_out_breakers(services: Services) -> None:
    """After an outage, Redis is left alone for a few seconds (api/cache.py Breaker)."""
    breakers = [services.rate_limiter.breaker, services.balance_cache.breaker]
    breakers.append(services.job_cache.breaker)
    while any(b.open for b in breakers):
        await asyncio.sleep(0.1)


async def test_redis_killed_commands_are_accepted_and_limits_fail_open(
    kit: Kit, private_redis: PrivateRedis, user: str
) -> None:
    """Redis SIGKILLed under a running API: submissions are still accepted (202), each job
    and its credit hold are in the event store, reads still answer, and the rate limits FAIL
    OPEN (more submissions than the limit get through, without RateLimit headers: the limits
    protect capacity, the plan's queue limit in the domain still bounds a user). Once Redis is
    back the limits count again."""
    # A tiny limit, so that being over it is quick to show: 2 submissions a minute (trial).
    settings = kit.settings.model_copy(
        update={"redis_url": private_redis.url, "rate_limit_multiplier": 0.1}
    )
    token = sign_dev_token(settings, user)
    auth = {"Authorization": f"Bearer {token}"}
    async with api(settings) as (client, services):
        accepted = []
        for i in range(2):
            r = await submit(client, token, f"up-{i}")
            assert r.status_code == 202, r.text
            assert r.headers["ratelimit-limit"] == "2"
            accepted.append(r.json())
        r = await submit(client, token, "up-over")
        assert r.status_code == 429 and problem_type(r) == "rate-limited"

        private_redis.kill()
        for i in range(3):  # over the limit: let through, since Redis cannot count
            r = await submit(client, token, f"down-{i}")
            assert r.status_code == 202, r.text
            assert "ratelimit-limit" not in r.headers
            accepted.append(r.json())
        # Nothing lost: every job and its hold is in the event store.
        for body in accepted:
            job = kit.app.job(uuid.UUID(body["job_id"]))
            assert job.user_id == user and job.status == "accepted"
            assert job.hold_mc == body["hold_mc"] > 0
        assert kit.app.account(user).held_mc == sum(b["hold_mc"] for b in accepted)
        # Reads and a cancel (of a job no worker has: no cancel flag needed) still work.
        await kit.project()
        r = await client.get("/v1/jobs", headers=auth)
        assert r.status_code == 200
        assert {j["job_id"] for j in r.json()["items"]} == {b["job_id"] for b in accepted}
        job_id = accepted[-1]["job_id"]
        assert (await client.get(f"/v1/jobs/{job_id}", headers=auth)).status_code == 200
        assert (await client.get("/v1/me/balance", headers=auth)).status_code == 200
        r = await client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["redis"] != "ok"
        assert r.json()["checks"]["postgres"] == "ok"

        private_redis.start()  # empty: its counters start over
        await wait_out_breakers(services)
        for i in range(2):
            r = await submit(client, token, f"back-{i}")
            assert r.status_code == 202, r.text
            assert r.headers["ratelimit-limit"] == "2"
        r = await submit(client, token, "back-over")
        assert r.status_code == 429
        assert (await client.get("/readyz")).status_code == 200


async def test_redis_hanging_adds_bounded_latency(
    kit: Kit, private_redis: PrivateRedis, user: str
) -> None:
    """Redis SIGSTOPped (it accepts connections, then never answers): the first command waits
    out one client timeout, then the breakers keep every later one from waiting at all."""
    settings = kit.settings.model_copy(update={"redis_url": private_redis.url})
    token = sign_dev_token(settings, user)
    async with api(settings) as (client, services):
        assert (await submit(client, token, "before")).status_code == 202
        private_redis.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            r = await submit(client, token, "hung-0")
            first = time.monotonic() - started
            assert r.status_code == 202, r.text
            assert first < 5, first
            started = time.monotonic()
            for i in range(1, 4):
                r = await submit(client, token, f"hung-{i}")
                assert r.status_code == 202, r.text
            later = (time.monotonic() - started) / 3
            assert later < 0.5, f"{later:.2f} s a submission while Redis hangs"
            r = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
        finally:
            private_redis.signal(signal.SIGCONT)
        await wait_out_breakers(services)
        r = await submit(client, token, "after")
        assert r.status_code == 202 and "ratelimit-limit" in r.headers


# ------------------------------------------------------------------------------- Kafka


async def delete_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(settings.kafka_topic_prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def relay_position(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval("SELECT coalesce(max(position), 0) FROM relay_positions")
    return int(value)


async def test_kafka_unreachable_commands_are_accepted_then_relayed(
    kit: Kit, database_url: str, user: str
) -> None:
    """The API pointed at a Kafka where nothing listens accepts commands (202: they are in
    PostgreSQL), and says Kafka is down on /readyz. A relay that cannot reach Kafka publishes
    nothing and moves its position not at all; once one reaches the broker, every event
    written during the outage arrives, once, in store order."""
    tag = uuid.uuid4().hex[:8]
    with fresh_database(database_url) as url:
        real = kit.settings.model_copy(
            update={"database_url": url, "kafka_topic_prefix": f"tk{tag}."}
        )
        dead = real.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
        token = sign_dev_token(dead, user)
        async with api(dead) as (client, _):
            jobs = []
            for i in range(3):
                r = await submit(client, token, f"k-{i}")
                assert r.status_code == 202, r.text
                jobs.append(r.json()["job_id"])
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["kafka"] != "ok"
            assert r.json()["checks"]["postgres"] == "ok"
        stored = await store_event_ids(url)
        assert {f"{j}:1" for j in jobs} <= {event_id for _, event_id in stored}

        pool = await create_pool(real, max_size=4)
        try:
            async with running(Relay(dead, pool, poll_interval_s=0.1).run):
                await asyncio.sleep(2)  # retrying against nothing, backing off
            assert await relay_position(pool) == 0

            await ensure_topics(real)
            newest = stored[-1][0]

            async def caught_up() -> bool:
                return await relay_position(pool) >= newest

            async with running(Relay(real, pool, poll_interval_s=0.1).run):
                await wait_until(caught_up, timeout=20)
            published = await consume_all(real, len(stored), timeout=20)
        finally:
            await pool.close()
            await delete_topics(real)
    assert sorted(e.id for e in published) == sorted(event_id for _, event_id in stored)
    assert len(published) == len(stored)
    assert [e.position for e in sorted(published, key=lambda e: e.position)] == [
        n for n, _ in stored
    ]
    job_events = {e.type for e in published if str(e.aggregate_id) in jobs}
    assert any(t.startswith("GenerationJob.") for t in job_events), job_events
