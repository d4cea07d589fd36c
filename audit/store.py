"""Reading the event store directly: the auditor's source of truth, not the read models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import StoredEvent

from eventstore.relay import EVENTS_TABLE, stored_event_mapper

ACCOUNT_EVENTS = "pinksea:CreditAccount.%"
JOB_EVENTS = "pinksea:GenerationJob.%"
SUBSCRIPTION_EVENTS = "pinksea:Subscription.%"


@dataclass(frozen=True)
class StoredDomainEvent:
    position: int
    event: DomainEventProtocol[UUID]


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
    mapper = stored_event_mapper()
    after = 0
    limit_to = up_to if up_to is not None else 2**62
    while True:
        rows = await conn.fetch(
            f"SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id > $1 AND notification_id <= $2 "
            f"AND topic LIKE ANY($3::text[]) AND ($4::uuid IS NULL OR originator_id = $4) "
            f"ORDER BY notification_id LIMIT $5",
            after,
            limit_to,
            list(topics),
            originator_id,
            batch_size,
        )
        if not rows:
            return
        for row in rows:
            event = mapper.to_domain_event(
                StoredEvent(
                    row["originator_id"],
                    row["originator_version"],
                    row["topic"],
                    bytes(row["state"]),
                )
            )
            yield StoredDomainEvent(row["notification_id"], event)
        after = rows[-1]["notification_id"]


async def count_events(conn: asyncpg.Connection, topics: tuple[str, ...]) -> int:
    return await conn.fetchval(
        f"SELECT count(*) FROM {EVENTS_TABLE} WHERE topic LIKE ANY($1::text[])", list(topics)
    )
