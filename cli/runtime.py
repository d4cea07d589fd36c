"""Shared plumbing of the long-running processes: logs, /metrics, graceful SIGTERM, and what
every streaming process needs before it starts (topics and tables)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from prometheus_client import start_http_server

from infra.logging import configure_logging
from infra.settings import Settings, get_settings


def run_process(
    name: str, main: Callable[[Settings, asyncio.Event], Awaitable[None]], metrics_port: int
) -> None:
    """Run ``main(settings, stop)`` until SIGTERM or SIGINT sets ``stop``."""
    settings = get_settings()
    configure_logging(settings, name)
    if metrics_port:
        start_http_server(
            metrics_port, addr="127.0.0.1" if settings.metrics_local_only else "0.0.0.0"
        )

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(settings, stop)

    asyncio.run(runner())


async def prepare(settings: Settings) -> None:
    """What every streaming process needs before it starts: topics and tables (idempotent)."""
    from infra.kafka import ensure_topics

    await ensure_topics(settings)
    await migrate(settings)


async def migrate(settings: Settings) -> list[str]:
    """The event store's tables and the read models' migrations (both idempotent)."""
    import asyncpg

    from eventstore.tables import create_event_tables
    from read_models.migrate import migrate as apply_migrations

    conn = await asyncpg.connect(settings.database_url)
    try:
        await create_event_tables(conn, settings.database_url)
        return await apply_migrations(conn)
    finally:
        await conn.close()
