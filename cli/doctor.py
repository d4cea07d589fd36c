"""``pinksea doctor``: is every backing service there and answering real requests?"""

from __future__ import annotations

import asyncio
import logging

import typer
from rich.console import Console
from rich.table import Table

from cli.main import app
from infra.health import DEFAULT_TIMEOUT_S, CheckResult, check_all
from infra.settings import get_settings


@app.command()
def doctor(
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT_S, "--timeout", help="Seconds each service may take to answer."
    ),
) -> None:
    """Check PostgreSQL, Kafka, Redis, S3 and Stripe with a real round trip each."""
    # The table reports every failure; aiokafka would also log its connection errors to stderr.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    results = asyncio.run(check_all(get_settings(), timeout))
    console = Console()
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
