"""Rebuild a projection from the event store (not Kafka), then hand over to live consumption.

The hand-over has no gap and no duplicate effect:
1. take the projection's advisory lock (the live runner pauses), record Kafka's end offsets of
   its topics, and only then read W, the newest position in the store. Every event already in
   Kafka before those offsets has a position <= W;
2. truncate the projection's tables and replay every event up to W from the store, in large
   batches, each batch in one transaction;
3. record the aggregate versions applied, the recorded end offsets as the projection's Kafka
   positions, and a new generation; release the lock. The live runner re-seeks there: events
   after the offsets that the replay already applied are skipped by the version gate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from eventstore.contract import AGGREGATE_TOPICS, envelope_for
from eventstore.decoding import count_events, event_batches, newest_position
from infra.kafka import connection_kwargs
from infra.settings import Settings
from projections.base import Projection
from projections.runner import lock_key, save_positions

Progress = Callable[[int, int], None]  # (events done, events total)


@dataclass(frozen=True)
class RebuildResult:
    projection: str
    events: int
    up_to_position: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def kafka_end_offsets(
    settings: Settings, topics: tuple[str, ...]
) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(**connection_kwargs(settings))
    await consumer.start()
    try:
        partitions = [
            TopicPartition(settings.topic(t), p)
            for t in topics
            for p in sorted(await _partitions(consumer, settings.topic(t)))
        ]
        ends = await consumer.end_offsets(partitions)
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise RuntimeError(f"topic {topic} does not exist; run `pinksea kafka init`")
    return found


def _stored_topic_patterns(projection: Projection) -> list[str]:
    """LIKE patterns of the stored event topics of the aggregates this projection reads."""
    return [
        f"{cls.TOPIC}.%"  # type: ignore[attr-defined]
        for cls, topic in AGGREGATE_TOPICS.items()
        if topic in projection.topics
    ]


async def rebuild(
    settings: Settings,
    pool: asyncpg.Pool,
    projection: Projection,
    *,
    batch_size: int = 5000,
    progress: Progress | None = None,
) -> RebuildResult:
    started = time.perf_counter()
    patterns = _stored_topic_patterns(projection)
    async with pool.acquire() as lock_conn:
        await lock_conn.execute("SELECT pg_advisory_lock(hashtext($1))", lock_key(projection.name))
        try:
            end_offsets = await kafka_end_offsets(settings, projection.topics)
            up_to = await newest_position(lock_conn)
            total = await count_events(lock_conn, up_to=up_to, topics=patterns)
            async with lock_conn.transaction():
                await lock_conn.execute(f"TRUNCATE {', '.join(projection.tables)}")
                for table in ("projection_versions", "projection_positions"):
                    await lock_conn.execute(
                        f"DELETE FROM {table} WHERE projection = $1", projection.name
                    )

            versions: dict[UUID, int] = {}
            done = 0
            async for batch in event_batches(
                lock_conn, up_to=up_to, topics=patterns, batch_size=batch_size
            ):
                # Each stored event decoded once: the projections' domain_event(env) returns it.
                envs = [
                    envelope_for(stored.event, stored.position).carrying(stored.event)
                    for stored in batch
                ]
                for env in envs:
                    versions[env.aggregate_id] = env.version
                async with lock_conn.transaction():
                    await projection.apply_batch(lock_conn, envs)
                done += len(batch)
                if progress:
                    progress(done, total)

            async with lock_conn.transaction():
                await lock_conn.copy_records_to_table(
                    "projection_versions",
                    records=[(projection.name, a, v) for a, v in versions.items()],
                    columns=["projection", "aggregate_id", "version"],
                )
                await save_positions(
                    lock_conn,
                    projection.name,
                    [
                        (topic, partition, offset)
                        for (topic, partition), offset in end_offsets.items()
                    ],
                    up_to,
                )
                await lock_conn.execute(
                    "UPDATE projection_state SET generation = generation + 1, rebuilt_at = now() "
                    "WHERE projection = $1",
                    projection.name,
                )
        finally:
            await lock_conn.execute(
                "SELECT pg_advisory_unlock(hashtext($1))", lock_key(projection.name)
            )
    return RebuildResult(projection.name, done, up_to, time.perf_counter() - started)
