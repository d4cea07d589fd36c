"""Operator tools: ``pinksea doctor`` (is every backing service there?), ``db migrate``,
``kafka init``, ``projections rebuild | status``, ``events schemas`` and ``dev-token``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.app import OPS_PANEL, app
from cli.runtime import migrate, prepare
from infra.db import create_pool
from infra.health import DEFAULT_TIMEOUT_S, CheckResult, check_all
from infra.settings import get_settings

console = Console()


@app.command(rich_help_panel=OPS_PANEL)
def doctor(
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT_S, "--timeout", help="Seconds each service may take to answer."
    ),
) -> None:
    """Check PostgreSQL, Kafka, Redis, S3 and Stripe with a real round trip each."""
    # The table reports every failure; aiokafka would also log its connection errors to stderr.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    results = asyncio.run(check_all(get_settings(), timeout))
    console.print(_table(results))
    failed = [r for r in results if not r.ok]
    if not failed:
        console.print("[green]all five services answer[/green]")
        return
    for r in failed:
        console.print(f"[red]{r.service}[/red] at {r.address}: {r.error}", highlight=False)
        console.print(f"  fix: {r.fix}", highlight=False, markup=False)
    raise typer.Exit(1)


def _table(results: list[CheckResult]) -> Table:
    table = Table(title="pinksea doctor")
    table.add_column("service")
    table.add_column("address", overflow="fold")
    table.add_column("version")
    table.add_column("rtt ms", justify="right")
    table.add_column("ok")
    for r in results:
        table.add_row(
            r.service,
            r.address,
            r.version or "-",
            f"{r.rtt_ms:.1f}" if r.rtt_ms is not None else "-",
            "[green]ok[/green]" if r.ok else "[red]FAIL[/red]",
        )
    return table


kafka_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
projections_app = typer.Typer(
    help="Read-model projections: rebuild and status.", no_args_is_help=True
)
events_app = typer.Typer(help="The public event contract.", no_args_is_help=True)
app.add_typer(db_app, name="db", rich_help_panel=OPS_PANEL)
app.add_typer(kafka_app, name="kafka", rich_help_panel=OPS_PANEL)
app.add_typer(projections_app, name="projections", rich_help_panel=OPS_PANEL)
app.add_typer(events_app, name="events", rich_help_panel=OPS_PANEL)


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

                    def update(done: int, total: int, task: TaskID = task, t0: float = t0) -> None:
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


@app.command("dev-token", rich_help_panel=OPS_PANEL)
def dev_token(
    user: str = typer.Option(..., help="The user id (the token's subject)."),
    admin: bool = typer.Option(False, "--admin", help="Put the user in the admin group."),
    hours: float = typer.Option(12.0, help="Lifetime of the token."),
    email: str | None = typer.Option(None, help="An email claim."),
) -> None:
    """Print a dev JWT. The API accepts it only with PINKSEA_DEV_JWT_ENABLED=true; the key is
    created on first use at PINKSEA_DEV_JWT_KEY_PATH (default ~/.pinksea/dev-jwt.pem)."""
    from api.auth import sign_dev_token

    token = sign_dev_token(
        get_settings(), user, admin=admin, ttl=timedelta(hours=hours), email=email
    )
    typer.echo(token)
