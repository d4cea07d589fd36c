"""asyncpg pools for the read side and the streaming processes."""

from __future__ import annotations

import asyncpg

from infra.settings import Settings


async def create_pool(
    settings: Settings, *, read_only: bool = False, **overrides: object
) -> asyncpg.Pool:
    dsn = settings.effective_read_database_url if read_only else settings.database_url
    options: dict[str, object] = {"min_size": 1, "max_size": settings.db_pool_size}
    options.update(overrides)
    pool = await asyncpg.create_pool(dsn, **options)
    assert pool is not None
    return pool
