"""Back to domain event objects, so readers reuse the domain's own types and functions
(``domain.postings.postings_for``, ``domain.ledger_changes.ledger_change``) instead of
re-deriving them from JSON.

Two sources: the event store's rows (``decode``, with the library's mapper: what the relay
publishes, what a projection rebuild and the audit tools replay) and the envelopes of the
public contract (``domain_event``: what the live projections consume from Kafka).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, TypeAlias
from uuid import UUID

import asyncpg
from eventsourcing.domain import AggregateEvent
from eventsourcing.persistence import Mapper, StoredEvent

from eventstore.contract import data_model, event_classes
from eventstore.envelope import Envelope

# The library's events table (PinkseaApplication.name "Pinksea": pinksea_events; its
# snapshots are in pinksea_snapshots). Its notification ids are the store's positions.
EVENTS_TABLE = "pinksea_events"
# What ``decode`` reads of a row, besides its notification id.
_COLUMNS = "notification_id, originator_id, originator_version, topic, state"

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


class UnknownEventType(Exception):
    """An event type this reader does not handle: stop rather than silently diverge."""


class StoredRow(Protocol):
    """A row of ``EVENTS_TABLE`` (an asyncpg record) with at least the columns ``decode``
    reads."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True)
class StoredDomainEvent:
    """A decoded event and its position (notification id) in the store."""

    position: int
    event: AggregateEvent


@cache
def stored_event_mapper() -> Mapper[UUID]:
    """The application's mapper (its transcodings), without connecting to a database."""
    from domain.application import PinkseaApplication

    return PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).mapper


def decode(row: StoredRow | StoredEvent) -> AggregateEvent:
    """The domain event a row of the events table stores, with typed values. Also takes the
    library's own ``StoredEvent`` (e.g. a ``Notification`` of an in-memory application)."""
    stored = (
        row
        if isinstance(row, StoredEvent)
        else StoredEvent(
            originator_id=row["originator_id"],
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=bytes(row["state"]),
        )
    )
    event = stored_event_mapper().to_domain_event(stored)
    if not isinstance(event, AggregateEvent):  # every stored event is an aggregate's
        raise UnknownEventType(stored.topic)
    return event


def _where(
    *,
    after: int | None = None,
    up_to: int | None = None,
    topics: Sequence[str] | None = None,
    originator_id: UUID | None = None,
) -> tuple[str, list[Any]]:
    """A WHERE clause over the events table (only the conditions given) and its arguments."""
    conditions: list[str] = []
    args: list[Any] = []
    for condition, value in (
        ("notification_id > $", after),
        ("notification_id <= $", up_to),
        ("topic LIKE ANY($::text[])", None if topics is None else list(topics)),
        ("originator_id = $", originator_id),
    ):
        if value is not None:
            args.append(value)
            conditions.append(condition.replace("$", f"${len(args)}"))
    return " AND ".join(conditions) or "true", args


async def fetch_events(
    db: Db,
    *,
    after: int,
    limit: int,
    up_to: int | None = None,
    topics: Sequence[str] | None = None,
    originator_id: UUID | None = None,
) -> list[StoredDomainEvent]:
    """Up to ``limit`` events after position ``after`` (up to ``up_to``; of the stored-topic
    LIKE patterns ``topics``; of one aggregate), decoded, in commit order."""
    where, args = _where(after=after, up_to=up_to, topics=topics, originator_id=originator_id)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM {EVENTS_TABLE} WHERE {where} "
        f"ORDER BY notification_id LIMIT ${len(args) + 1}",
        *args,
        limit,
    )
    return [StoredDomainEvent(row["notification_id"], decode(row)) for row in rows]


async def event_batches(
    db: Db,
    *,
    up_to: int | None = None,
    topics: Sequence[str] | None = None,
    originator_id: UUID | None = None,
    batch_size: int = 5000,
) -> AsyncIterator[list[StoredDomainEvent]]:
    """Every event (up to ``up_to``, of ``topics``, of one aggregate) in commit order, decoded,
    in batches so memory stays flat however long the log is."""
    after = 0
    while batch := await fetch_events(
        db,
        after=after,
        limit=batch_size,
        up_to=up_to,
        topics=topics,
        originator_id=originator_id,
    ):
        yield batch
        after = batch[-1].position


async def aggregate_batches(
    db: Db, *, topics: Sequence[str] | None = None, batch_size: int = 5000
) -> AsyncIterator[list[StoredDomainEvent]]:
    """Every event (of the stored-topic LIKE patterns ``topics``) in aggregate order: by
    aggregate id, then version, so each aggregate's events come together and a reader can
    finish one aggregate before the next (``ledger verify``: memory bounded by the largest
    aggregate, not by the store). Keyset pages over the primary key (originator_id,
    originator_version): no long transaction, each page one index range."""
    assert batch_size > 0
    where, args = _where(topics=topics)
    after: tuple[UUID, int] | None = None
    while True:
        page_where, page_args = where, list(args)
        if after is not None:
            page_args += after
            n = len(page_args)
            page_where += f" AND (originator_id, originator_version) > (${n - 1}, ${n})"
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM {EVENTS_TABLE} WHERE {page_where} "
            f"ORDER BY originator_id, originator_version LIMIT {int(batch_size)}",
            *page_args,
        )
        if not rows:
            return
        yield [StoredDomainEvent(row["notification_id"], decode(row)) for row in rows]
        after = (rows[-1]["originator_id"], rows[-1]["originator_version"])


async def newest_position(db: Db) -> int:
    """The position of the newest stored event (0: none)."""
    newest: int = await db.fetchval(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}")
    return newest


async def count_events(
    db: Db, *, up_to: int | None = None, topics: Sequence[str] | None = None
) -> int:
    """How many events (up to ``up_to``, of the stored-topic LIKE patterns ``topics``) the
    store holds."""
    where, args = _where(up_to=up_to, topics=topics)
    count: int = await db.fetchval(f"SELECT count(*) FROM {EVENTS_TABLE} WHERE {where}", *args)
    return count


def domain_event(env: Envelope) -> Any:
    """The domain event an envelope was made from, with typed values (datetimes parsed)."""
    try:
        cls = event_classes()[env.type]
    except KeyError:
        raise UnknownEventType(env.type) from None
    fields = data_model(env.type).model_validate(env.data)
    return cls(
        originator_id=env.aggregate_id,
        originator_version=env.version,
        timestamp=env.occurred_at,
        **fields.__dict__,  # the validated values (faster than iterating the model)
    )
