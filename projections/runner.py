"""Live projection runner: domain topics -> read models, with exactly-once effects.

For each batch polled from Kafka, one asyncpg transaction holds the projection's writes and
its (topic, partition, next offset) positions; Kafka offsets are committed only after that
transaction, and on (re)assignment the consumer seeks to the positions in the database, which
are the truth. Redelivered events are skipped by the per-aggregate version gate. A rebuild
(projections/replay.py) holds the projection's advisory lock while it runs and bumps its
generation when it hands over; the runner then re-seeks to the offsets the rebuild recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import Counter, Gauge

from eventstore.envelope import Envelope
from infra.errors import OPERATIONAL_ERRORS, Backoff
from infra.kafka import manual_consumer, stop_bounded
from infra.settings import Settings
from projections.base import Projection

log = structlog.get_logger("projections")

APPLIED = Counter("pinksea_projection_events_total", "Events applied", ["projection"])
SKIPPED = Counter(
    "pinksea_projection_duplicates_total", "Redelivered events skipped", ["projection"]
)
POSITION = Gauge("pinksea_projection_position", "Highest store position applied", ["projection"])

POLL_TIMEOUT_MS = 300  # how long a poll waits for events (and how soon a stop is seen)
RESEEK_PAUSE_S = 0.2  # after a rebuild's hand-over, before reading its positions
RETRY_FIRST_S = 0.5  # first pause after an operational error (doubles)
RETRY_MAX_S = 5.0  # longest pause: a database or broker that stays down is retried this often


def lock_key(projection: str) -> str:
    return f"pinksea.projection.{projection}"


async def apply_gated(conn: asyncpg.Connection, projection: Projection, env: Envelope) -> bool:
    """Apply ``env`` unless this projection applied this aggregate version (or a later one)."""
    applied = await conn.fetchval(
        "INSERT INTO projection_versions (projection, aggregate_id, version) VALUES ($1, $2, $3) "
        "ON CONFLICT (projection, aggregate_id) DO UPDATE SET version = EXCLUDED.version "
        "WHERE projection_versions.version < EXCLUDED.version RETURNING version",
        projection.name,
        env.aggregate_id,
        env.version,
    )
    if applied is None:
        return False
    await projection.apply(conn, env)
    return True


async def gate_batch(
    conn: asyncpg.Connection, projection: Projection, envs: list[Envelope]
) -> tuple[list[Envelope], int]:
    """The events of ``envs`` this projection has not applied yet (by aggregate version), and
    the number skipped; records the new versions. One round trip to read, one to write."""
    ids = list({env.aggregate_id for env in envs})
    rows = await conn.fetch(
        "SELECT aggregate_id, version FROM projection_versions "
        "WHERE projection = $1 AND aggregate_id = ANY($2::uuid[])",
        projection.name,
        ids,
    )
    applied = {r["aggregate_id"]: r["version"] for r in rows}
    fresh = []
    for env in envs:
        if env.version > applied.get(env.aggregate_id, 0):
            applied[env.aggregate_id] = env.version
            fresh.append(env)
    touched = {env.aggregate_id for env in fresh}
    await conn.executemany(
        "INSERT INTO projection_versions (projection, aggregate_id, version) VALUES ($1, $2, $3) "
        "ON CONFLICT (projection, aggregate_id) DO UPDATE SET version = EXCLUDED.version",
        [(projection.name, a, applied[a]) for a in touched],
    )
    return fresh, len(envs) - len(fresh)


async def save_positions(
    conn: asyncpg.Connection,
    projection: str,
    next_offsets: Iterable[tuple[str, int, int]],
    store_position: int,
) -> None:
    await conn.executemany(
        "INSERT INTO projection_positions (projection, topic, partition, next_offset) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (projection, topic, partition) "
        "DO UPDATE SET next_offset = EXCLUDED.next_offset",
        [(projection, topic, partition, offset) for topic, partition, offset in next_offsets],
    )
    await conn.execute(
        "INSERT INTO projection_state (projection, position) VALUES ($1, $2) "
        "ON CONFLICT (projection) DO UPDATE SET position = "
        "greatest(projection_state.position, EXCLUDED.position), updated_at = now()",
        projection,
        store_position,
    )


class _Reseek(Exception):
    """The database positions changed under the consumer (a rebuild handed over)."""


class LiveProjectionRunner:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        projection: Projection,
        *,
        batch: int = 500,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self.on_batch = on_batch  # told after each committed batch (the scheduler wakes on it)
        self.settings = settings
        self.pool = pool
        self.projection = projection
        self.batch = batch
        self.generation: int | None = None
        self.consumer: AIOKafkaConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        name = self.projection.name
        consumer = manual_consumer(self.settings, f"pinksea.projection.{name}")
        self.consumer = consumer
        consumer.subscribe(
            [self.settings.topic(t) for t in self.projection.topics],
            listener=_SeekFromDatabase(self),
        )
        await consumer.start()
        log.info("projection started", projection=name)
        backoff = Backoff(first_s=RETRY_FIRST_S, max_s=RETRY_MAX_S)
        reseek = False  # seek to the database's positions before the next poll
        try:
            # Runs until stopped (a server loop); only operational errors are retried here,
            # anything else (a bug, an undecodable event) ends the process for its supervisor.
            while not stop.is_set():
                try:
                    if reseek:
                        await self.seek_from_database(consumer.assignment())
                        reseek = False
                    polled = await consumer.getmany(
                        timeout_ms=POLL_TIMEOUT_MS, max_records=self.batch
                    )
                    if polled:
                        await self.process(polled)
                    backoff.succeeded()
                except _Reseek:
                    reseek = True
                    await asyncio.sleep(RESEEK_PAUSE_S)  # a rebuild may still hold the lock
                except OPERATIONAL_ERRORS as e:
                    # The batch's transaction rolled back: read it again from the positions
                    # the database has (the re-seek itself is retried if it fails too).
                    reseek = True
                    pause_s = backoff.failed()
                    log.warning(
                        "projection retrying", projection=name, error=repr(e), backoff_s=pause_s
                    )
                    await asyncio.sleep(pause_s)
        finally:
            async with stop_bounded():
                await consumer.stop()
            log.info("projection stopped", projection=name)

    async def process(self, polled: dict[TopicPartition, list]) -> None:
        name = self.projection.name
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1))", lock_key(name)
            ):
                raise _Reseek  # a rebuild is running: wait for its hand-over
            generation = await conn.fetchval(
                "SELECT generation FROM projection_state WHERE projection = $1", name
            )
            if (generation or 0) != (self.generation or 0):
                self.generation = generation
                raise _Reseek
            envs = [Envelope.from_bytes(m.value) for msgs in polled.values() for m in msgs]
            max_position = max((env.position for env in envs), default=0)
            fresh, skipped = await gate_batch(
                conn, self.projection, [env for env in envs if self.projection.wants(env)]
            )
            await self.projection.apply_batch(conn, fresh)
            applied = len(fresh)
            await save_positions(
                conn,
                name,
                [(tp.topic, tp.partition, msgs[-1].offset + 1) for tp, msgs in polled.items()],
                max_position,
            )
        # Kafka's offsets only after the database committed: the database is the truth.
        assert self.consumer is not None
        await self.consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in polled.items()})
        if self.on_batch is not None and applied:
            self.on_batch()
        APPLIED.labels(name).inc(applied)
        SKIPPED.labels(name).inc(skipped)
        POSITION.labels(name).set(max_position)

    async def seek_from_database(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        if not partitions or self.consumer is None:
            return
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM projection_positions "
                "WHERE projection = $1",
                self.projection.name,
            )
            self.generation = await conn.fetchval(
                "SELECT generation FROM projection_state WHERE projection = $1",
                self.projection.name,
            )
        known = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        for tp in partitions:
            offset = known.get((tp.topic, tp.partition))
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)


class _SeekFromDatabase(ConsumerRebalanceListener):
    def __init__(self, runner: LiveProjectionRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        pass  # nothing buffered: every batch is committed before the next poll

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.runner.seek_from_database(assigned)
