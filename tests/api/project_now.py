"""Apply stored events to the read models synchronously, as the relay and the projection
runners would (same handlers, same per-aggregate version gate), so an API test can read its
own writes without running Kafka consumers.

After applying, a relay checkpoint with no offsets is recorded at the newest position:
``X-Min-Position`` up to there then counts as reached, as it would once the real relay and
runners had caught up.
"""

from __future__ import annotations

import asyncpg

from domain.application import PinkseaApplication
from eventstore.contract import envelope_for, topic_for
from projections.registry import ALL_PROJECTIONS
from projections.runner import apply_gated

BATCH = 500
_done: dict[str, int] = {}  # database -> the newest position projected by this process


async def project_now(app: PinkseaApplication, database_url: str, start: int | None = None) -> int:
    """Project every stored event not projected yet (or from ``start``); returns the newest
    position applied. Repeating is harmless: the version gate skips events applied before."""
    if start is None:
        start = _done.get(database_url, 0) + 1
    conn = await asyncpg.connect(database_url)
    position = start - 1
    try:
        while True:
            notifications = app.recorder.select_notifications(position + 1, BATCH)
            if not notifications:
                break
            async with conn.transaction():
                for n in notifications:
                    env = envelope_for(app.mapper.to_domain_event(n), n.id)
                    topic = topic_for(env.type)
                    for projection in ALL_PROJECTIONS:
                        if topic in projection.topics and projection.wants(env):
                            await apply_gated(conn, projection, env)
                    position = n.id
        if position >= start:
            await conn.execute(
                "INSERT INTO relay_checkpoints (position, offsets) VALUES ($1, '{}')"
                " ON CONFLICT (position) DO NOTHING",
                position,
            )
    finally:
        await conn.close()
    _done[database_url] = max(_done.get(database_url, 0), position)
    return position
