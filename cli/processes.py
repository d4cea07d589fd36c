"""The billing processes: scheduler, settler and expiry."""

from __future__ import annotations

import asyncio

import typer

from cli.main import app
from cli.runtime import run_process
from cli.streaming import prepare
from eventstore.persistence import event_store_env
from infra.db import create_pool
from infra.settings import Settings


@app.command()
def scheduler(metrics_port: int = typer.Option(9103, help="Port of /metrics (0: none).")) -> None:
    """Queue accepted jobs per GPU tier and dispatch them to idle workers."""
    from domain.application import PinkseaApplication
    from workflows.scheduler.service import Scheduler

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        pool = await create_pool(settings, max_size=4)
        application = PinkseaApplication(env=event_store_env(settings.database_url, pool_size=4))
        try:
            await Scheduler(settings, pool, application).run(stop)
        finally:
            application.close()
            await pool.close()

    run_process("scheduler", main, metrics_port)


@app.command()
def settle(metrics_port: int = typer.Option(9104, help="Port of /metrics (0: none).")) -> None:
    """Turn worker reports into exact, idempotent billing commands."""
    from workflows.settler import Settler
    from workflows.tracking import TrackingPinkseaApplication

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        application = TrackingPinkseaApplication(
            env=event_store_env(settings.database_url, pool_size=4)
        )
        try:
            await Settler(settings, application).run(stop)
        finally:
            application.close()

    run_process("settle", main, metrics_port)


@app.command()
def expire(
    interval: float = typer.Option(30.0, help="Seconds between rounds."),
    metrics_port: int = typer.Option(9106, help="Port of /metrics (0: none)."),
) -> None:
    """Expire lots at their valid_until (a loop; idempotent; catches up after downtime)."""
    from domain.application import PinkseaApplication
    from workflows.expiry import run_expiry

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        pool = await create_pool(settings, max_size=2)
        application = PinkseaApplication(env=event_store_env(settings.database_url, pool_size=2))
        try:
            await run_expiry(pool, application, stop, interval)
        finally:
            application.close()
            await pool.close()

    run_process("expire", main, metrics_port)
