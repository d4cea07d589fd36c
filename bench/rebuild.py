"""bench.rebuild: rebuilding the ledger projection from the event store.

Measured in one run on one seeded store: the rebuild (events/s), against
- bulk loading, with asyncpg ``copy_records_to_table``, of exactly the rows the rebuild
  produced into the same tables: the floor of writing that result (target: >= 0.25x);
- a naive projector that applies each event in its own transaction with the version gate,
  as a one-message-at-a-time consumer would (target: the rebuild >= 5x faster).

    python -m bench.rebuild [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
from rich.console import Console
from rich.table import Table

from audit.store import ACCOUNT_EVENTS, stream_events
from bench.seed_events import seed
from bench.support import scratch_database, summary
from eventstore.contract import envelope_for
from infra.db import create_pool
from infra.kafka import ensure_topics
from projections.registry import get_projection
from projections.replay import rebuild
from projections.runner import apply_gated
from read_models.migrate import migrate


async def run(quick: bool) -> None:
    events = 20_000 if quick else 300_000
    with scratch_database("bench_rebuild") as settings:
        await ensure_topics(settings)
        seeded = await seed(settings.database_url, events)
        conn = await asyncpg.connect(settings.database_url)
        await migrate(conn)
        pool = await create_pool(settings, max_size=4)
        ledger = get_projection("ledger")
        try:
            result = await rebuild(settings, pool, ledger, batch_size=5000)
            rebuild_rate = result.events / result.seconds

            # Floor: bulk-load the very rows the rebuild produced.
            tables = {t: await conn.fetch(f"SELECT * FROM {t}") for t in ledger.tables}
            await conn.execute(f"TRUNCATE {', '.join(ledger.tables)}")
            started = time.perf_counter()
            async with conn.transaction():
                for name, rows in tables.items():
                    if rows:
                        await conn.copy_records_to_table(
                            name,
                            records=[tuple(r.values()) for r in rows],
                            columns=list(rows[0].keys()),
                        )
            copy_seconds = time.perf_counter() - started
            copy_rate = result.events / copy_seconds

            # Naive: one event per transaction, through the same gate the live runner uses.
            await conn.execute(f"TRUNCATE {', '.join(ledger.tables)}")
            await conn.execute("DELETE FROM projection_versions WHERE projection = 'ledger'")
            naive_limit = 3000 if quick else 20_000
            started = time.perf_counter()
            naive = 0
            async for stored in stream_events(conn, topics=(ACCOUNT_EVENTS,)):
                env = envelope_for(stored.event, stored.position)
                async with conn.transaction():
                    await apply_gated(conn, ledger, env)
                naive += 1
                if naive >= naive_limit:
                    break
            naive_rate = naive / (time.perf_counter() - started)
        finally:
            await pool.close()
            await conn.close()

    table = Table(
        title=f"bench.rebuild: ledger projection, {result.events} credit events ({seeded} seeded)"
    )
    for col in ("method", "events/s", "rebuild / method"):
        table.add_column(col, justify="right")
    table.add_row("rebuild (batched replay)", f"{rebuild_rate:,.0f}", "1.00")
    table.add_row(
        "copy_records_to_table of its result",
        f"{copy_rate:,.0f}",
        f"{rebuild_rate / copy_rate:.3f}",
    )
    table.add_row(
        "naive: one event per transaction", f"{naive_rate:,.0f}", f"{rebuild_rate / naive_rate:.2f}"
    )
    Console().print(table)
    print(f"vs naive: {rebuild_rate / naive_rate:.2f}x (target >= 5x)")
    summary("rebuild", "events/s", rebuild_rate, copy_rate, 0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the projection rebuild.")
    parser.add_argument("--quick", action="store_true", help="a smaller store (< 60 s)")
    asyncio.run(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
