"""Creating the event store's tables once, however many processes start together."""

from __future__ import annotations

import asyncio

import asyncpg

from domain.application import PinkseaApplication
from eventstore.persistence import event_store_env

# The library creates its tables if missing; processes starting together on a new database
# would race on that, so they take turns under this advisory lock ("pinkevts").
EVENT_STORE_LOCK_KEY = 0x70696E6B_65767473


async def create_event_tables(conn: asyncpg.Connection, database_url: str) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", EVENT_STORE_LOCK_KEY)
    try:
        application = await asyncio.to_thread(
            PinkseaApplication, env=event_store_env(database_url, pool_size=1)
        )
        application.close()
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", EVENT_STORE_LOCK_KEY)
