"""Apply the read side's plain SQL migrations, in name order, each exactly once.

Each file runs in its own transaction together with its ``schema_migrations`` row, so a failed
migration leaves nothing behind. Every transaction first takes a transaction-level advisory
lock: processes starting together (API, projections, ``pinksea db migrate``) queue behind one
another instead of racing to create the same tables.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# An arbitrary, fixed advisory lock key for "migrating the read-model schema".
MIGRATION_LOCK_KEY = 0x70696E6B_6D696772  # "pinkmigr"

_CREATE_TRACKING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       TEXT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("*.sql"), key=lambda p: p.name)


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not applied yet; returns the names applied by this call."""
    async with conn.transaction():
        await _lock(conn)
        await conn.execute(_CREATE_TRACKING)
    applied: list[str] = []
    for path in migration_files(directory):
        async with conn.transaction():
            await _lock(conn)
            done = await conn.fetchval("SELECT 1 FROM schema_migrations WHERE name = $1", path.name)
            if done:
                continue
            # No arguments: the simple query protocol, so a file may hold many statements.
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
        applied.append(path.name)
    return applied


async def _lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
