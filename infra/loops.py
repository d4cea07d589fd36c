"""What every long-running loop of the processes shares: waiting that a stop interrupts."""

from __future__ import annotations

import asyncio
import contextlib


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile (a shutdown never waits out a
    backoff or a polling interval)."""
    assert seconds >= 0, seconds
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
