"""Reading the event store directly: the auditor's source of truth, not the read models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg

from eventstore.decoding import StoredDomainEvent, aggregate_batches, event_batches
from eventstore.decoding import count_events as count_stored_events

__all__ = [
    "ACCOUNT_EVENTS",
    "JOB_EVENTS",
    "SUBSCRIPTION_EVENTS",
    "UPLOAD_EVENTS",
    "VERIFIED_EVENTS",
    "StoredDomainEvent",
    "count_events",
    "stream_aggregates",
    "stream_events",
]

ACCOUNT_EVENTS = "pinksea:CreditAccount.%"
JOB_EVENTS = "pinksea:GenerationJob.%"
SUBSCRIPTION_EVENTS = "pinksea:Subscription.%"
UPLOAD_EVENTS = "pinksea:Upload.%"
# What `ledger verify` replays: the money, the jobs and plans, and the uploads (a completed
# upload is a row of the images table it compares).
VERIFIED_EVENTS = (ACCOUNT_EVENTS, JOB_EVENTS, SUBSCRIPTION_EVENTS, UPLOAD_EVENTS)


async def stream_events(
    conn: asyncpg.Connection,
    *,
    topics: tuple[str, ...] = (ACCOUNT_EVENTS, JOB_EVENTS, SUBSCRIPTION_EVENTS),
    originator_id: UUID | None = None,
    up_to: int | None = None,
    batch_size: int = 5000,
) -> AsyncIterator[StoredDomainEvent]:
    """Every event (of the given stored-topic patterns) in commit order, decoded, in batches
    so memory stays flat however long the log is."""
    async for batch in event_batches(
        conn, up_to=up_to, topics=topics, originator_id=originator_id, batch_size=batch_size
    ):
        for stored in batch:
            yield stored


async def stream_aggregates(
    conn: asyncpg.Connection,
    *,
    topics: tuple[str, ...] = VERIFIED_EVENTS,
    batch_size: int = 5000,
) -> AsyncIterator[StoredDomainEvent]:
    """Every event (of the given stored-topic patterns) in aggregate order (aggregate id, then
    version), decoded, in batches: what ``ledger verify`` replays one aggregate at a time."""
    async for batch in aggregate_batches(conn, topics=topics, batch_size=batch_size):
        for stored in batch:
            yield stored


async def count_events(conn: asyncpg.Connection, topics: tuple[str, ...]) -> int:
    return await count_stored_events(conn, topics=topics)
