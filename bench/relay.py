"""bench.relay: the relay's throughput and its commit->Kafka lag.

1. Throughput: the relay publishes a seeded store from position 0 (read, decode, envelope,
   produce with acks=all, record position) against a raw aiokafka idempotent producer loop
   sending the same payloads with the same keys in the same batch size (target >= 0.5x).
2. Lag: with the relay tailing, commands arrive at half the relay's measured maximum rate;
   for each event, the time from its commit to its arrival at a Kafka consumer (p50/p99,
   target p99 < 100 ms).

    python -m bench.relay [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.table import Table

from bench.seed_events import seed
from bench.support import percentile, scratch_database, summary
from domain.application import PinkseaApplication
from domain.jobs import JobParameters
from eventstore.contract import envelope_for, topic_for
from eventstore.envelope import Envelope
from eventstore.persistence import event_store_env
from eventstore.relay import Relay
from infra.db import create_pool
from infra.kafka import connection_kwargs, ensure_topics, idempotent_producer
from infra.settings import Settings
from infra.topics import DOMAIN_TOPICS
from read_models.migrate import migrate

BATCH = 1000
TINY = JobParameters(model="tiny-sd", prompt="lag", steps=4, width=64, height=64)


async def relay_throughput(settings: Settings) -> tuple[int, float]:
    pool = await create_pool(settings, max_size=3)
    relay = Relay(settings, pool, batch_size=BATCH)
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        started, total = time.perf_counter(), 0
        while published := await relay.publish_batch(producer):
            total += published
        return total, total / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await pool.close()


async def raw_producer_throughput(settings: Settings) -> float:
    """The same envelopes, pre-encoded, sent by a bare idempotent producer loop."""
    app = PinkseaApplication(env=event_store_env(settings.database_url, pool_size=1))
    payloads = []
    for n in app.recorder.select_notifications(start=1, limit=10**9):
        env = envelope_for(app.mapper.to_domain_event(n), n.id)
        payloads.append(
            (
                settings.topic(topic_for(env.type)) + "-raw",
                env.to_bytes(),
                str(env.aggregate_id).encode(),
            )
        )
    app.close()
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        started = time.perf_counter()
        for i in range(0, len(payloads), BATCH):
            sends = [await producer.send(t, v, key=k) for t, v, k in payloads[i : i + BATCH]]
            await asyncio.gather(*sends)
        return len(payloads) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def commit_to_kafka_lag(
    settings: Settings, submissions_per_s: float, seconds: float
) -> list[float]:
    committed: dict[int, float] = {}
    received: dict[int, float] = {}
    app = PinkseaApplication(env=event_store_env(settings.database_url, pool_size=2))
    app.register_user("lag-user", datetime.now(UTC))
    app.change_plan(
        "lag-user",
        to_plan="enterprise",
        actor="bench",
        reason="bench",
        at=datetime.now(UTC),
        custom_terms={
            "credits_per_month": 1,
            "tier": "basic",
            "concurrent_jobs": 10_000,
            "storage_gb": 1,
        },
    )
    app.adjust_credits(
        "lag-user",
        adjustment_id="bulk",
        amount_mc=10**12,
        reason="bench",
        actor="bench",
        at=datetime.now(UTC),
    )
    first = app.current_position() + 1
    stop_writing = threading.Event()

    def writer() -> None:
        i = 0
        interval = 1.0 / submissions_per_s
        next_at = time.perf_counter()
        while not stop_writing.is_set():
            result = app.submit_job(
                "lag-user", idempotency_key=f"lag-{i}", params=TINY, at=datetime.now(UTC)
            )
            committed[result.position] = time.perf_counter()  # the last event of the commit
            i += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))

    pool = await create_pool(settings, max_size=3)
    consumer = AIOKafkaConsumer(
        *(settings.topic(t) for t in DOMAIN_TOPICS),
        **connection_kwargs(settings),
        auto_offset_reset="latest",
        group_id=None,
    )
    await consumer.start()
    await consumer.seek_to_end()
    stop = asyncio.Event()
    relay_task = asyncio.create_task(Relay(settings, pool, poll_interval_s=0.5).run(stop))
    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline + 2:
            if time.perf_counter() > deadline:
                stop_writing.set()
            for messages in (await consumer.getmany(timeout_ms=100)).values():
                now = time.perf_counter()
                for m in messages:
                    received.setdefault(Envelope.from_bytes(m.value).position, now)
    finally:
        stop_writing.set()
        thread.join()
        stop.set()
        await relay_task
        await consumer.stop()
        await pool.close()
        app.close()
    return [(received[p] - t) * 1000 for p, t in committed.items() if p >= first and p in received]


async def run(quick: bool) -> None:
    with scratch_database("bench_relay") as settings:
        await ensure_topics(settings)
        await _create_raw_topics(settings)
        conn = await asyncpg.connect(settings.database_url)
        await migrate(conn)
        await conn.close()
        await seed(settings.database_url, 20_000 if quick else 200_000)
        events, relay_rate = await relay_throughput(settings)
        raw_rate = await raw_producer_throughput(settings)
        lags = await commit_to_kafka_lag(
            settings, submissions_per_s=relay_rate / 3 / 2, seconds=8 if quick else 30
        )
    p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
    table = Table(title=f"bench.relay: {events} events")
    for col in ("measure", "value"):
        table.add_column(col, justify="right")
    table.add_row("relay (events/s)", f"{relay_rate:,.0f}")
    table.add_row("raw idempotent producer (events/s)", f"{raw_rate:,.0f}")
    table.add_row("ratio", f"{relay_rate / raw_rate:.2f} (target >= 0.5)")
    table.add_row(f"commit->Kafka lag p50 ({len(lags)} events)", f"{p50:.1f} ms")
    table.add_row("commit->Kafka lag p99", f"{p99:.1f} ms (target < 100 ms)")
    Console().print(table)
    summary("relay", "events/s", relay_rate, raw_rate, 0.5)


async def _create_raw_topics(settings: Settings) -> None:
    """Topics for the raw producer, so the two runs don't share partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**connection_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(settings.topic(t) + "-raw", num_partitions=6, replication_factor=1)
                for t in DOMAIN_TOPICS
            ]
        )
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the relay.")
    parser.add_argument("--quick", action="store_true", help="a smaller store (< 60 s)")
    asyncio.run(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
