"""Shared plumbing of the long-running processes: logs, /metrics, graceful SIGTERM."""

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
