"""The values behind the new metrics, on the real services: S3 requests by outcome, database
pool use, the read-model gauges of ``pinksea project``, consumer lag, and the GPU collector on
a CPU worker (its GPU families declared, with no sample)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import torch
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import REGISTRY, generate_latest

from infra import s3
from infra.db import create_pool
from infra.kafka import ensure_topics, idempotent_producer, manual_consumer
from infra.observability import check
from infra.settings import Settings
from infra.topics import REPORTS_TOPIC
from projections import gauges
from read_models.migrate import migrate
from tests.integration.streaming_kit import fresh_database

pytestmark = pytest.mark.integration


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_s3_requests_are_counted_per_attempt_by_outcome(settings: Settings) -> None:
    def count(**labels: str) -> float:
        return value("pinksea_s3_requests_total", **labels)

    client = s3.s3_client(settings, retries={"total_max_attempts": 1})
    ok = {"operation": "put_object", "outcome": "ok", "status_class": "2xx"}
    missing = {"operation": "head_object", "outcome": "error", "status_class": "4xx"}
    before = count(**ok), count(**missing)
    client.put_object(Bucket=settings.s3_bucket, Key="metrics/probe", Body=b"x")
    with pytest.raises(ClientError):
        client.head_object(Bucket=settings.s3_bucket, Key="metrics/absent")
    assert (count(**ok), count(**missing)) == (before[0] + 1, before[1] + 1)

    # No answer at all: every attempt counts, botocore's retries included.
    down = settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:1"})
    unreachable = {"operation": "head_bucket", "outcome": "error", "status_class": "none"}
    before_down = count(**unreachable)
    client = s3.s3_client(down, retries={"total_max_attempts": 2, "mode": "standard"})
    with pytest.raises(BotoCoreError):
        client.head_bucket(Bucket=settings.s3_bucket)
    assert count(**unreachable) == before_down + 2


async def test_pool_gauges_show_checked_out_connections(settings: Settings) -> None:
    def figures() -> tuple[float, float]:
        return (
            value("pinksea_db_pool_in_use", pool="primary"),
            value("pinksea_db_pool_max_connections", pool="primary"),
        )

    in_use, most = figures()
    pool = await create_pool(settings, min_size=1, max_size=3)
    try:
        async with pool.acquire(), pool.acquire():
            assert figures() == (in_use + 2, most + 3)
        assert figures() == (in_use, most + 3)
    finally:
        await pool.close()
    assert figures() == (in_use, most)  # a closed pool leaves the figures


@pytest.fixture
def read_models(settings: Settings) -> Iterator[str]:
    with fresh_database(settings.database_url) as url:
        yield url


async def _seed(conn: asyncpg.Connection, now: datetime) -> None:
    """Read-model rows as the projections write them (only the columns these gauges read and
    the NOT NULL ones)."""
    subscriptions = [
        ("ann", "pro", "active"),
        ("bob", "starter", "past_due"),
        ("cy", "studio", "active"),
        ("di", "enterprise", "active"),  # negotiated: no list price
        ("ed", "trial", "trialing"),
        ("fay", "pro", "ended"),
    ]
    for position, (user, plan, status) in enumerate(subscriptions, 1):
        sid = uuid.uuid4()
        await conn.execute(
            "INSERT INTO users (user_id, subscription_id, plan, subscription_status, created_at,"
            " updated_at, position) VALUES ($1, $2, $3, $4, $5, $5, $6)",
            user,
            sid,
            plan,
            status,
            now,
            position,
        )
        await conn.execute(
            "INSERT INTO user_subscriptions (subscription_id, user_id, plan, status, period_start,"
            " period_end, trial_started_at, updated_at, position)"
            " VALUES ($1, $2, $3, $4, $5, $5, $5, $5, $6)",
            sid,
            user,
            plan,
            status,
            now,
            position,
        )
    # ann: a job now (and an old one); bob: 3 days ago; cy: 40 days ago; the others none.
    jobs = [("ann", now - timedelta(days=60)), ("ann", now), ("bob", now - timedelta(days=3))]
    jobs.append(("cy", now - timedelta(days=40)))
    for position, (user, at) in enumerate(jobs, 100):
        await conn.execute(
            "INSERT INTO jobs (job_id, user_id, idempotency_key, status, model, tier, steps,"
            " width, height, batch_size, seed, parameters, submitted_at, updated_at,"
            " submitted_position, position) VALUES ($1, $2, $3, 'completed', 'tiny-sd',"
            " 'basic', 4, 64, 64, 1, 0, '{}', $4, $4, $5, $5)",
            uuid.uuid4(),
            user,
            f"k{position}",
            at,
            position,
        )


async def test_read_model_gauges_count_active_users_and_mrr(read_models: str) -> None:
    conn = await asyncpg.connect(read_models)
    try:
        await migrate(conn)
        await _seed(conn, datetime.now(UTC))
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(read_models, min_size=1, max_size=1)
    try:
        await gauges.refresh_read_model_gauges(pool)
    finally:
        await pool.close()
    assert value("pinksea_active_users", window="1d") == 1  # ann
    assert value("pinksea_active_users", window="7d") == 2  # ann, bob
    assert value("pinksea_active_users", window="30d") == 2  # cy's job is 40 days old
    assert value("pinksea_mrr_usd") == 75 + 150  # pro + studio; past_due, ended, negotiated: 0
    assert value("pinksea_subscriptions", plan="enterprise", status="active") == 1
    assert value("pinksea_subscriptions", plan="starter", status="past_due") == 1


async def test_consumer_lag_is_end_minus_committed_per_group_and_topic(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    topic = settings.topic(REPORTS_TOPIC)
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, f"probe {i}".encode(), key=b"lag-probe")
    finally:
        await producer.stop()
    consumer = manual_consumer(settings, "pinksea.metrics-probe", REPORTS_TOPIC)
    await consumer.start()
    try:
        while not consumer.assignment():
            await asyncio.wait_for(consumer.getmany(timeout_ms=500), 60)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        committed = {tp: max(0, end - 3) for tp, end in ends.items()}
        await consumer.commit(committed)
    finally:
        await consumer.stop()
    await gauges.refresh_consumer_lag(settings)
    group = f"{settings.kafka_topic_prefix}pinksea.metrics-probe"
    expected = sum(ends[tp] - committed[tp] for tp in ends)
    assert expected >= 3
    assert value("pinksea_consumer_lag", group=group, topic=topic) == expected


def test_set_labelled_zeroes_or_drops_children_that_went_away() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    gauge = Gauge("pinksea_probe", "probe", ["k"], registry=CollectorRegistry())

    def shown() -> dict[str, float]:
        return {s.labels["k"]: s.value for m in gauge.collect() for s in m.samples}

    gauges.set_labelled(gauge, {("a",): 1, ("b",): 2}, missing=0)
    gauges.set_labelled(gauge, {("b",): 3}, missing=0)
    assert shown() == {"a": 0, "b": 3}
    gauges.set_labelled(gauge, {("c",): 4}, missing=None)
    assert shown() == {"c": 4}  # only the children set by the missing=None call go


def test_gpu_metrics_on_a_cpu_worker_are_declared_without_samples() -> None:
    from gpu_consumer import metrics

    metrics.GPUS.watch(torch.device("cpu"), "basic", "probe-cpu", "cpu")
    try:
        found = check.emitted({"w": generate_latest(REGISTRY).decode()})
    finally:
        metrics.GPUS.unwatch("probe-cpu")
    info: dict[str, Any] = {"tier": "basic", "worker": "probe-cpu", "device": "cpu", "gpu": "cpu"}
    assert value("pinksea_gpu_worker_info", **info) == 0  # unwatched: gone
    assert "tier" in found.samples["pinksea_gpu_worker_info"]["w"]
    for name in ("pinksea_gpu_utilization_ratio", "pinksea_gpu_memory_used_bytes"):
        assert name in found.declared and name not in found.samples, name
    before = value("pinksea_gpu_job_seconds_count", tier="basic", model="probe")
    metrics.observe_job("basic", "probe", 0)  # refused or never ran: no sample
    metrics.observe_job("basic", "probe", 1500)
    assert value("pinksea_gpu_job_seconds_count", tier="basic", model="probe") == before + 1
    assert value("pinksea_gpu_job_seconds_bucket", tier="basic", model="probe", le="2.5") >= 1
