"""Streaming commands: topics, migrations, the relay, projections (live, rebuild, status)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.main import app
from cli.runtime import run_process
from infra.db import create_pool
from infra.settings import Settings, get_settings

console = Console()

kafka_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
projections_app = typer.Typer(
    help="Read-model projections: rebuild and status.", no_args_is_help=True
)
events_app = typer.Typer(help="The public event contract.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(db_app, name="db")
app.add_typer(projections_app, name="projections")
app.add_typer(events_app, name="events")


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


@kafka_app.command("init")
def kafka_init() -> None:
    """Create every topic with its partitions and retention (idempotent).

    Replication: PINKSEA_KAFKA_REPLICATION_FACTOR / PINKSEA_KAFKA_MIN_INSYNC_REPLICAS
    (1/1 locally, 3/2 on MSK); topics that exist already are left as they are."""
    from infra.kafka import ensure_topics

    settings = get_settings()
    created = asyncio.run(ensure_topics(settings))
    console.print(
        f"created {len(created)} topic(s) (replication factor "
        f"{settings.kafka_replication_factor}, min.insync.replicas "
        f"{settings.kafka_min_insync_replicas}): {', '.join(created) or 'none missing'}"
    )


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the read-model migrations that have not run yet."""
    applied = asyncio.run(migrate(get_settings()))
    console.print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'up to date'}")


@app.command()
def relay(metrics_port: int = typer.Option(9101, help="Port of /metrics (0: none).")) -> None:
    """Publish every stored event to Kafka, in order, losing nothing."""
    from eventstore.relay import Relay

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        pool = await create_pool(settings, max_size=3)
        try:
            await Relay(settings, pool).run(stop)
        finally:
            await pool.close()

    run_process("relay", main, metrics_port)


@app.command()
def project(
    only: list[str] = typer.Option([], help="Run only these projections (repeatable)."),
    metrics_port: int = typer.Option(9102, help="Port of /metrics (0: none)."),
) -> None:
    """Consume the domain topics into the read models (exactly-once effects)."""
    from projections.registry import ALL_PROJECTIONS, get_projection
    from projections.runner import LiveProjectionRunner

    chosen = [get_projection(n) for n in only] if only else list(ALL_PROJECTIONS)

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        from projections.gauges import run_gauges

        await prepare(settings)
        pool = await create_pool(settings)
        try:
            await asyncio.gather(
                *(LiveProjectionRunner(settings, pool, p).run(stop) for p in chosen),
                run_gauges(settings, pool, stop),  # business gauges, consumer lag
            )
        finally:
            await pool.close()

    run_process("project", main, metrics_port)


@projections_app.command("rebuild")
def projections_rebuild(
    name: str = typer.Argument(None, help="The projection to rebuild."),
    all_: bool = typer.Option(False, "--all", help="Rebuild every projection."),
    batch_size: int = typer.Option(5000, help="Events per transaction."),
) -> None:
    """Truncate and replay from the event store, then hand over to live consumption."""
    from projections.registry import ALL_PROJECTIONS, get_projection
    from projections.replay import rebuild

    if not all_ and not name:
        raise typer.BadParameter("name a projection or pass --all")
    chosen = list(ALL_PROJECTIONS) if all_ else [get_projection(name)]

    async def main() -> None:
        settings = get_settings()
        await prepare(settings)
        pool = await create_pool(settings, max_size=2)
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} events"),
                TextColumn("{task.fields[rate]:>9.0f} events/s"),
                TimeRemainingColumn(),
                console=console,
            ) as progress:
                for projection in chosen:
                    task = progress.add_task(projection.name, total=None, rate=0.0)
                    t0 = time.monotonic()

                    def update(done: int, total: int, task: int = task, t0: float = t0) -> None:
                        elapsed = max(time.monotonic() - t0, 1e-9)
                        progress.update(task, completed=done, total=total, rate=done / elapsed)

                    result = await rebuild(
                        settings, pool, projection, batch_size=batch_size, progress=update
                    )
                    progress.update(task, completed=result.events, total=result.events)
                    console.print(
                        f"{result.projection}: {result.events} events up to position "
                        f"{result.up_to_position} in {result.seconds:.1f}s "
                        f"({result.events_per_second:.0f} events/s)"
                    )
        finally:
            await pool.close()

    asyncio.run(main())


@projections_app.command("status")
def projections_status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Each projection's position and lag, and the relay's."""
    from projections.status import status_report

    report = asyncio.run(status_report(get_settings()))
    if as_json:
        print(json.dumps(report))
        return
    table = Table(title="projections")
    for col in ("name", "store position", "generation", "lag (messages)"):
        table.add_column(col)
    for name, row in report["projections"].items():
        table.add_row(name, str(row["position"]), str(row["generation"]), str(row["lag_messages"]))
    console.print(table)
    relay_row = report["relay"]
    console.print(f"relay: position {relay_row['position']}, {relay_row['lag_events']} behind")


@events_app.command("schemas")
def events_schemas(
    out: Path = typer.Option(None, help="Directory (default docs/events)."),
) -> None:
    """Regenerate the JSON Schemas of every event type from the domain's event classes."""
    from eventstore.contract import SCHEMA_DIR, write_schemas

    written = write_schemas(out or SCHEMA_DIR)
    console.print(f"wrote {len(written)} schemas to {out or SCHEMA_DIR}")
