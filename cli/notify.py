"""``pinksea notify``: the notifier process (workflows/notifier/)."""

from __future__ import annotations

import asyncio

import typer

from cli.main import app
from cli.runtime import run_process
from cli.streaming import prepare
from infra.db import create_pool
from infra.settings import Settings


@app.command()
def notify(metrics_port: int = typer.Option(9107, help="Port of /metrics (0: none).")) -> None:
    """E-mail users once per low-balance crossing (SMTP locally, SES in production)."""
    from workflows.notifier.service import Notifier
    from workflows.notifier.transports import build_transport

    async def main(settings: Settings, stop: asyncio.Event) -> None:
        await prepare(settings)
        # One connection holds a crossing's transaction across its send; one more for the rest.
        pool = await create_pool(settings, max_size=2)
        try:
            await Notifier(settings, pool, build_transport(settings)).run(stop)
        finally:
            await pool.close()

    run_process("notify", main, metrics_port)
