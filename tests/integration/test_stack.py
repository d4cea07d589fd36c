"""The local stack, for real: one round trip per service, and ``pinksea doctor`` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def test_postgres_round_trip(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # The session's own database, empty, writable.
        assert (await conn.fetchval("select current_database()")).startswith("pinksea_t_")
        await conn.execute("create table probe (id int primary key, body text not null)")
        await conn.execute("insert into probe values ($1, $2)", 1, "hello")
        assert await conn.fetchval("select body from probe where id = 1") == "hello"
        # Tests may create more databases beside their own (the role can CREATE DATABASE).
        assert await conn.fetchval("select rolcreatedb from pg_roles where rolname = current_user")
    finally:
        await conn.close()


async def test_kafka_round_trip(settings: Settings, kafka_bootstrap: str) -> None:
    topic = settings.topic("stack.round-trip.v1")
    assert topic.startswith(settings.kafka_topic_prefix) and settings.kafka_topic_prefix
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [(f"key-{i}".encode(), uuid.uuid4().bytes) for i in range(5)]
        for key, value in sent:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{settings.kafka_topic_prefix}stack-test",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: list[tuple[bytes, bytes]] = []
        while len(received) < len(sent):
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"no records within 10 s; got {len(received)} of {len(sent)}"
            for records in batch.values():
                received += [(r.key, r.value) for r in records]
        await consumer.commit()
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(sent)


async def test_redis_round_trip(settings: Settings, redis_client: Any, redis_sync: Any) -> None:
    key = f"{settings.redis_key_prefix}stack:{uuid.uuid4().hex}"
    await redis_client.set(key, b"async", ex=60)
    assert redis_sync.get(key) == b"async"  # both clients see one server
    redis_sync.set(key, b"sync", ex=60)
    assert await redis_client.get(key) == b"sync"
    assert await redis_client.delete(key) == 1
    assert redis_sync.get(key) is None


def test_s3_round_trip(settings: Settings, s3_client: Any) -> None:
    key = f"users/u1/images/{uuid.uuid4().hex}.png"
    body = os.urandom(4096)
    s3_client.put_object(Bucket=settings.s3_bucket, Key=key, Body=body, ContentType="image/png")
    got = s3_client.get_object(Bucket=settings.s3_bucket, Key=key)
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/png"
    url = s3_client.generate_presigned_url(
        "get_object", Params={"Bucket": settings.s3_bucket, "Key": key}, ExpiresIn=60
    )
    assert url.startswith(str(settings.s3_endpoint_url))
    s3_client.delete_object(Bucket=settings.s3_bucket, Key=key)
    listed = s3_client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=key)
    assert listed.get("KeyCount", 0) == 0


def test_stripe_round_trip(stripe_client: Any) -> None:
    customer = stripe_client.v1.customers.create(params={"email": "stack@pinksea.invalid"})
    assert customer.id.startswith("cus_")
    session = stripe_client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": "price_123", "quantity": 1}],
            "success_url": "http://127.0.0.1/ok",
            "cancel_url": "http://127.0.0.1/cancel",
        }
    )
    assert session.object == "checkout.session"


def _doctor(settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PINKSEA_DATABASE_URL": settings.database_url,
        "PINKSEA_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "PINKSEA_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "PINKSEA_S3_BUCKET": settings.s3_bucket,
        "COLUMNS": "200",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", "doctor"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_doctor_reports_five_green_rows(settings: Settings) -> None:
    result = _doctor(settings)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    services = {row.split("│")[1].strip(): row.split("│")[-2].strip() for row in rows}
    assert services == {s: "ok" for s in ("postgres", "kafka", "redis", "s3", "stripe")}


def test_doctor_fails_and_says_what_to_run(settings: Settings) -> None:
    # Nothing listens on port 1: the Redis probe must fail fast and name the fix.
    result = _doctor(settings, PINKSEA_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout
    assert "make services" in result.stdout
