"""Back to domain event objects, so readers reuse the domain's own types and functions
(``domain.postings.postings_for``, ``domain.ledger_changes.ledger_change``) instead of
re-deriving them from JSON.

Two sources: the event store's rows (``decode``, with the library's mapper: what a projection
rebuild and the audit tools replay) and the envelopes of the public contract (``domain_event``:
what the live projections consume from Kafka). The relay needs no domain event at all:
``envelope_json`` writes a row's public envelope straight from its stored JSON.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, TypeAlias
from uuid import UUID

import asyncpg
from eventsourcing.domain import AggregateEvent
from eventsourcing.persistence import Mapper, StoredEvent

from eventstore.contract import data_model, envelope_for, event_classes
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


# ---------------------------------------------------------------- stored JSON -> envelope JSON
#
# The library's JSONTranscoder stores an event's __dict__ (less originator id and version) as
# compact JSON, the timestamp first, and every value of a registered type as
# {"_type_": name, "_data_": value}. The envelope's ``data`` is the same dict with those values
# as pydantic writes them (contract.envelope_for): a datetime in ISO 8601 with "Z" for UTC, a
# UUID hyphenated, a Decimal as its string. So the envelope is the stored bytes with those
# objects rewritten in place: one regular-expression pass in C instead of a JSON decode, a
# domain event, a pydantic model and a JSON encode (about 60 us of Python per event). Anything
# else (another transcoding, an upcast class version) takes the general path.
_STORED_PREFIX = b'{"timestamp":{"_type_":"datetime_iso","_data_":"'
_TRANSCODED = re.compile(
    rb'\{"_type_":"(datetime_iso|uuid_hex|decimal_str)","_data_":"([^"\\]*)"\}'
)
_TRANSCODED_ANY = b'"_type_":'
_UTC_OFFSET = b"+00:00"


def _iso_z(value: bytes) -> bytes:
    """datetime.isoformat() of an instant -> how pydantic writes it (UTC as "Z")."""
    return value[:-6] + b"Z" if value.endswith(_UTC_OFFSET) else value


def _plain(match: re.Match[bytes]) -> bytes:
    kind, value = match.group(1), match.group(2)
    if kind == b"datetime_iso":
        return b'"' + _iso_z(value) + b'"'
    if kind == b"uuid_hex":
        v = value
        return b'"%s-%s-%s-%s-%s"' % (v[:8], v[8:12], v[12:16], v[16:20], v[20:])
    return b'"' + value + b'"'  # decimal_str


@cache
def _direct_types() -> frozenset[str]:
    """Stored topics whose state is the envelope's data as written: no upcasting (class
    version 1), neither compressed nor encrypted."""
    mapper = stored_event_mapper()
    if mapper.cipher is not None or mapper.compressor is not None:
        return frozenset()
    return frozenset(
        cls.TOPIC  # type: ignore[attr-defined]
        for cls in event_classes().values()
        if getattr(cls, "class_version", 1) == 1
    )


def envelope_json(row: StoredRow) -> bytes:
    """The public envelope (contract.envelope_for(decode(row), position).to_bytes(), equal as
    JSON) of a row of the events table, written from its stored bytes."""
    state = bytes(row["state"])
    if row["topic"] in _direct_types() and state.startswith(_STORED_PREFIX):
        end = state.find(b'"}', len(_STORED_PREFIX))
        rest = state[end + 2 :]  # b"}" or b',"field":...}'
        data = _TRANSCODED.sub(_plain, b"{" + rest[1:] if rest[:1] == b"," else b"{}")
        if end > 0 and rest[:1] in (b",", b"}") and _TRANSCODED_ANY not in data:
            aggregate_id = str(row["originator_id"]).encode()
            version = b"%d" % row["originator_version"]
            return b"".join(
                (
                    b'{"id":"%s:%s","type":"%s","aggregate_id":"%s","version":%s,"position":%d,'
                    % (
                        aggregate_id,
                        version,
                        row["topic"].removeprefix("pinksea:").encode(),
                        aggregate_id,
                        version,
                        row["notification_id"],
                    ),
                    b'"occurred_at":"%s","data":' % _iso_z(state[len(_STORED_PREFIX) : end]),
                    data,
                    b"}",
                )
            )
    return envelope_for(decode(row), row["notification_id"]).to_bytes()


async def fetch_rows(db: Db, *, after: int, limit: int) -> list[asyncpg.Record]:
    """Up to ``limit`` rows after position ``after``, undecoded, in commit order: for readers
    that write them on as they are (the relay, with ``envelope_json``)."""
    rows: list[asyncpg.Record] = await db.fetch(
        f"SELECT {_COLUMNS} FROM {EVENTS_TABLE} WHERE notification_id > $1 "
        "ORDER BY notification_id LIMIT $2",
        after,
        limit,
    )
    return rows


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
    if (event := env.event_made_from) is not None:  # the rebuild's own decode: the same event
        return event
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
