"""Read-your-writes: has a projection applied every event up to a store position?

A command returns its event's position P. The relay's checkpoints say, for the first batch
that reached P, the highest offset written in each partition; every event up to P lies at or
below those offsets. A projection has applied all of them once its next offset in each of its
partitions is past the checkpoint's.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg

from infra.settings import Settings
from projections.registry import get_projection


async def has_reached(
    conn: asyncpg.Connection, projection: str, topics: tuple[str, ...], position: int
) -> bool:
    if position <= 0:
        return True
    checkpoint = await conn.fetchval(
        "SELECT offsets FROM relay_checkpoints WHERE position >= $1 ORDER BY position LIMIT 1",
        position,
    )
    if checkpoint is None:
        return False  # the relay has not published that far yet
    offsets: dict[str, dict[str, int]] = json.loads(checkpoint)
    needed = [
        (topic, int(partition), offset)
        for topic, partitions in offsets.items()
        if topic in topics
        for partition, offset in partitions.items()
    ]
    if not needed:
        return True
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM projection_positions WHERE projection = $1",
        projection,
    )
    consumed = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    return all(consumed.get((t, p), 0) > offset for t, p, offset in needed)


async def wait_for_position(
    pool: asyncpg.Pool,
    projection: str,
    topics: tuple[str, ...],
    position: int,
    *,
    timeout_s: float = 5.0,
    interval_s: float = 0.02,
) -> bool:
    """Wait (bounded) until ``projection`` reached ``position``; False on timeout."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        async with pool.acquire() as conn:
            if await has_reached(conn, projection, topics, position):
                return True
        if time.monotonic() >= deadline_s:
            return False
        await asyncio.sleep(interval_s)


async def first_behind(
    pool: asyncpg.Pool,
    settings: Settings,
    projections: tuple[str, ...],
    position: int,
    *,
    timeout_s: float,
) -> str | None:
    """The first of ``projections`` (by name) that has not applied ``position`` within
    ``timeout_s`` (all of them share it); None when every one has."""
    assert projections and timeout_s >= 0
    deadline_s = time.monotonic() + timeout_s
    for name in projections:  # a few: those one answer reads
        topics = tuple(settings.topic(t) for t in get_projection(name).topics)
        left_s = max(0.0, deadline_s - time.monotonic())
        if not await wait_for_position(pool, name, topics, position, timeout_s=left_s):
            return name
    return None
