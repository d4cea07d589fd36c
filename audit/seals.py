"""`pinksea ledger seal`: sign the Merkle root of the credit events committed since the last seal.

Run once a day (a scheduled task), each seal covers the store positions (previous seal's
``last_position``, ``last_position``] and names the previous seal's root, so the seals form one
chain. A seal hashes what the store holds byte for byte (``audit/chain.py``), never a decoded
copy: a receipt's copy of an event is then checked against exactly what was committed.

Why a position range and not a calendar day of event times: an event's time is its command's
clock (a settlement carries the report's time), so a late event can belong to a day already
sealed; positions only grow, so a sealed range can never gain an event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.chain import LedgerLeaf, merkle_root, sign
from audit.store import ACCOUNT_EVENTS
from eventstore.decoding import EVENTS_TABLE

# One sealer at a time: two would chain two seals onto the same predecessor.
SEAL_LOCK_KEY = 0x70696E6B_7365616C  # "pinkseal"
LEAF_BATCH_ROWS = 10_000  # rows per fetch while hashing a range: memory stays bounded


async def leaves(conn: asyncpg.Connection, after: int, up_to: int) -> AsyncIterator[LedgerLeaf]:
    """The credit events at positions (after, up_to], in commit order, as the chain hashes them."""
    assert 0 <= after <= up_to
    while after < up_to:
        rows = await conn.fetch(
            f"SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id > $1 AND notification_id <= $2 "
            "AND topic LIKE $3 ORDER BY notification_id LIMIT $4",
            after,
            up_to,
            ACCOUNT_EVENTS,
            LEAF_BATCH_ROWS,
        )
        if not rows:
            return
        for row in rows:
            yield LedgerLeaf(
                position=row["notification_id"],
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
        after = rows[-1]["notification_id"]


async def digests(conn: asyncpg.Connection, after: int, up_to: int) -> list[bytes]:
    return [leaf.digest() async for leaf in leaves(conn, after, up_to)]


async def all_seals(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every seal, oldest first, as signed."""
    rows = await conn.fetch("SELECT document FROM ledger_seals ORDER BY seq")
    return [_document(row["document"]) for row in rows]


async def seal_covering(conn: asyncpg.Connection, position: int) -> dict[str, Any] | None:
    """The seal whose range holds ``position`` (None: not sealed yet)."""
    document = await conn.fetchval(
        "SELECT document FROM ledger_seals WHERE first_position < $1 AND last_position >= $1",
        position,
    )
    return None if document is None else _document(document)


async def seal(
    conn: asyncpg.Connection, key: Ed25519PrivateKey, at: datetime, up_to: int | None = None
) -> dict[str, Any] | None:
    """Seal everything committed since the last seal (up to ``up_to``); None when nothing new.

    Every position at or below the store's newest one is final: the event store inserts under
    one table lock held until commit, so no transaction can still add a lower position."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SEAL_LOCK_KEY)
        last = await conn.fetchrow(
            "SELECT seq, last_position, root FROM ledger_seals ORDER BY seq DESC LIMIT 1"
        )
        after = last["last_position"] if last else 0
        newest = await conn.fetchval(
            f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"
        )
        up_to = newest if up_to is None else min(up_to, newest)
        if up_to <= after:
            return None
        hashed = await digests(conn, after, up_to)
        document = sign(
            {
                "seq": (last["seq"] if last else 0) + 1,
                "first_position": after,
                "last_position": up_to,
                "leaf_count": len(hashed),
                "root": merkle_root(hashed).hex(),
                "previous_root": last["root"] if last else None,
                "sealed_at": at.isoformat(),
            },
            key,
        )
        await conn.execute(
            "INSERT INTO ledger_seals (seq, first_position, last_position, leaf_count, root, "
            "previous_root, sealed_at, document) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
            document["seq"],
            after,
            up_to,
            len(hashed),
            document["root"],
            document["previous_root"],
            at,
            json.dumps(document),
        )
    return document


def _document(value: Any) -> dict[str, Any]:
    """A JSONB column as asyncpg returns it (text without a codec) back to the document."""
    return dict(json.loads(value)) if isinstance(value, str) else dict(value)
