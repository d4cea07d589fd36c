"""asyncpg pools for the read side and the streaming processes."""

from __future__ import annotations

import asyncpg

from infra.observability.instrument import track_pool
from infra.settings import Settings


async def create_pool(
    settings: Settings, *, read_only: bool = False, **overrides: object
) -> asyncpg.Pool:
    dsn = settings.effective_read_database_url if read_only else settings.database_url
    options: dict[str, object] = {"min_size": 1, "max_size": settings.db_pool_size}
    options.update(overrides)
    pool = await asyncpg.create_pool(dsn, **options)
    assert pool is not None
    # pinksea_db_pool_in_use{pool} and its siblings, read at each scrape of /metrics.
    return track_pool(pool, "read" if read_only else "primary")
