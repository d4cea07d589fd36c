"""The relay: the event store's notification log to Kafka, with no loss.

It reads events after its recorded position in notification-id order (the library's table
lock makes that commit order, so a tailing reader never skips an event), produces each one to
its domain topic with an idempotent producer (acks=all, key = aggregate id, so one aggregate's
events stay ordered in one partition), waits for every acknowledgement of the batch, and only
then records the new position and a checkpoint of the offsets written. A crash between the
two re-sends the batch: at-least-once delivery, which consumers deduplicate by envelope id.
While Kafka is unreachable it backs off and retries the same batch, losing nothing.

It wakes on the store's NOTIFY (sent by every insert) and polls as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from eventstore.contract import topic_for
from eventstore.decoding import EVENTS_TABLE, decode, envelope_json, fetch_rows, newest_position
from infra.errors import OPERATIONAL_ERRORS, Backoff
from infra.loops import sleep_or_stop
from infra.settings import Settings

log = structlog.get_logger("relay")

CHANNEL = EVENTS_TABLE  # the library NOTIFYs a channel named after the events table
CHECKPOINTS_KEPT = 10_000

RELAY_POSITION = Gauge("pinksea_relay_position", "Last notification id acknowledged by Kafka")
RELAY_LAG_EVENTS = Gauge("pinksea_relay_lag_events", "Events stored but not yet published")
RELAY_LAG_SECONDS = Gauge(
    "pinksea_relay_lag_seconds", "Age of the oldest event not yet published (0 when caught up)"
)
RELAY_PUBLISHED = Counter("pinksea_relay_published_total", "Events published to Kafka")
RELAY_RETRIES = Counter(
    "pinksea_relay_retries_total", "Batches retried after an operational error (Kafka, PostgreSQL)"
)

BACKOFF_FIRST_S = 0.2  # first pause after an operational error (doubles)
BACKOFF_MAX_S = 5.0  # longest pause: a broker or database that stays down is retried this often
PRODUCER_STOP_TIMEOUT_S = 5.0


class Relay:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        *,
        name: str = "main",
        batch_size: int = 1000,
        poll_interval_s: float = 0.5,
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        from infra.kafka import idempotent_producer

        self.settings = settings
        self.pool = pool
        self.name = name
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s  # fallback poll, when no NOTIFY wakes it
        self._new_producer = producer_factory or (lambda: idempotent_producer(settings))
        self._wake = asyncio.Event()
        self.position = 0
        self.offsets: dict[str, dict[str, int]] = {}
        self._topics: dict[str, str] = {}  # stored topic -> Kafka topic

    async def load_position(self) -> None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT position FROM relay_positions WHERE relay = $1", self.name
            )
            self.position = row["position"] if row else 0
            cp = await conn.fetchrow(
                "SELECT offsets FROM relay_checkpoints ORDER BY position DESC LIMIT 1"
            )
            self.offsets = json.loads(cp["offsets"]) if cp else {}
        RELAY_POSITION.set(self.position)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set."""
        await self.load_position()
        listener = None  # the connection that LISTENs for the store's NOTIFY
        producer: AIOKafkaProducer | None = None
        backoff = Backoff(first_s=BACKOFF_FIRST_S, max_s=BACKOFF_MAX_S)
        log.info("relay started", position=self.position)
        try:
            # Runs until stopped (a server loop). Operational errors (Kafka or PostgreSQL down)
            # retry the same batch after a backoff, losing nothing; anything else is a bug and
            # ends the process for its supervisor to restart.
            while not stop.is_set():
                try:
                    if listener is None or listener.is_closed():
                        closed, listener = listener, None
                        listener = await self._listen(closed)
                    if producer is None:
                        producer = self._new_producer()
                        await producer.start()
                    published = await self.publish_batch(producer)
                    backoff.succeeded()
                except OPERATIONAL_ERRORS as e:
                    RELAY_RETRIES.inc()
                    pause_s = backoff.failed()
                    log.warning("relay retrying", error=repr(e), backoff_s=pause_s)
                    if producer is not None:
                        await _quietly_stop(producer)
                        producer = None
                    await sleep_or_stop(stop, pause_s)
                    continue
                if published < self.batch_size:
                    await self._wait_for_events(stop)
        finally:
            if listener is not None:
                # A database that is down must not turn a stop (or the error that ended the
                # loop) into another error.
                with contextlib.suppress(*OPERATIONAL_ERRORS):
                    if not listener.is_closed():
                        await listener.remove_listener(CHANNEL, self._on_notify)
                    await self.pool.release(listener)
            if producer is not None:
                await _quietly_stop(producer)
            log.info("relay stopped", position=self.position)

    async def _listen(self, closed: asyncpg.Connection | None) -> asyncpg.Connection:
        """LISTEN on a connection of its own; again on a new one when the database closed
        the last (a restart): the poll fallback alone would add up to a poll's latency."""
        if closed is not None:
            with contextlib.suppress(*OPERATIONAL_ERRORS):  # it is gone either way
                await self.pool.release(closed)
        listener = await self.pool.acquire()
        await listener.add_listener(CHANNEL, self._on_notify)
        self._wake.set()  # events may have been stored while nobody listened
        return listener

    async def publish_batch(self, producer: AIOKafkaProducer) -> int:
        """Publish the next batch; returns how many events it published."""
        batch = await fetch_rows(self.pool, after=self.position, limit=self.batch_size)
        await self._measure_lag(batch)
        if not batch:
            return 0
        sends = []
        for row in batch:  # each envelope written from its stored bytes: no domain event
            sends.append(
                await producer.send(
                    self._kafka_topic(row["topic"]),
                    envelope_json(row),
                    key=str(row["originator_id"]).encode(),
                )
            )
        # Every acknowledgement before the position moves: a crash now re-sends, never skips.
        acks = await asyncio.gather(*sends)
        for meta in acks:
            partitions = self.offsets.setdefault(meta.topic, {})
            key = str(meta.partition)
            partitions[key] = max(partitions.get(key, -1), meta.offset)
        last: int = batch[-1]["notification_id"]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO relay_positions (relay, position, updated_at) VALUES ($1, $2, now()) "
                "ON CONFLICT (relay) DO UPDATE SET position = $2, updated_at = now()",
                self.name,
                last,
            )
            await conn.execute(
                "INSERT INTO relay_checkpoints (position, offsets) VALUES ($1, $2) "
                "ON CONFLICT (position) DO UPDATE SET offsets = $2",
                last,
                json.dumps(self.offsets),
            )
            await conn.execute(
                "DELETE FROM relay_checkpoints WHERE position < ("
                " SELECT position FROM relay_checkpoints ORDER BY position DESC"
                " OFFSET $1 LIMIT 1)",
                CHECKPOINTS_KEPT,
            )
        self.position = last
        RELAY_POSITION.set(last)
        RELAY_PUBLISHED.inc(len(batch))
        return len(batch)

    def _kafka_topic(self, stored_topic: str) -> str:
        topic = self._topics.get(stored_topic)
        if topic is None:
            topic = self.settings.topic(topic_for(stored_topic.removeprefix("pinksea:")))
            self._topics[stored_topic] = topic
        return topic

    async def _measure_lag(self, batch: list[asyncpg.Record]) -> None:
        newest = await newest_position(self.pool)
        RELAY_LAG_EVENTS.set(max(0, newest - self.position))
        if batch:  # one decode per batch, for the oldest event's time
            age = (datetime.now(UTC) - decode(batch[0]).timestamp).total_seconds()
            RELAY_LAG_SECONDS.set(max(0.0, age))
        else:
            RELAY_LAG_SECONDS.set(0)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _wait_for_events(self, stop: asyncio.Event) -> None:
        self._wake.clear()
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(
            waiters, timeout=self.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
        )
        for w in waiters:
            w.cancel()


async def _quietly_stop(producer: AIOKafkaProducer) -> None:
    """Stop a producer that already failed: it may fail again, for the same reason."""
    try:
        await asyncio.wait_for(producer.stop(), timeout=PRODUCER_STOP_TIMEOUT_S)
    except OPERATIONAL_ERRORS:
        log.debug("producer stop failed", exc_info=True)
