"""The expiry process: lots past their ``valid_until`` expire with an explicit event.

Candidates come from the ledger read model (lots not yet expired whose validity ended); the
command on each account decides from the account itself, so a lagging or stale read model can
only delay an expiry, never make a wrong one. Safe to repeat, and after downtime it catches up
on everything that fell due meanwhile (expiry events carry the time they ran)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import asyncpg
import structlog
from prometheus_client import Counter

from domain.application import PinkseaApplication

log = structlog.get_logger("expiry")
EXPIRED_ACCOUNTS = Counter("pinksea_expiry_accounts_total", "Accounts whose lots expired")


async def due_users(pool: asyncpg.Pool, at: datetime, limit: int = 1000) -> list[str]:
    rows = await pool.fetch(
        "SELECT DISTINCT user_id FROM credit_lots "
        "WHERE NOT expired AND valid_until IS NOT NULL AND valid_until <= $1 LIMIT $2",
        at,
        limit,
    )
    return [r["user_id"] for r in rows]


async def expire_once(pool: asyncpg.Pool, app: PinkseaApplication, at: datetime) -> int:
    """Expire every due lot once; returns the number of accounts that changed."""
    changed = 0
    for user in await due_users(pool, at):
        result = await asyncio.to_thread(app.expire_due, user, at)
        changed += result.changed
    EXPIRED_ACCOUNTS.inc(changed)
    return changed


async def run_expiry(
    pool: asyncpg.Pool, app: PinkseaApplication, stop: asyncio.Event, interval: float = 30.0
) -> None:
    log.info("expiry started", interval_s=interval)
    while not stop.is_set():
        try:
            n = await expire_once(pool, app, datetime.now(UTC))
            if n:
                log.info("lots expired", accounts=n)
        except (asyncpg.PostgresError, OSError) as e:
            log.warning("expiry round failed, retrying", error=repr(e))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
