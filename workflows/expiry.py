"""The expiry process: the service's own clock. Each round, for everything that fell due:

- lots past their ``valid_until`` expire with an explicit event;
- tester plans whose window ended revert to the plan from before (``TesterPlanEnded``);
- enterprise contracts whose last period ended get the next period's credits
  (``ContractPeriodStarted`` and a lot valid to the period's end).

Candidates come from the read models (the ledger's lots, the subscriptions); the command on
each aggregate decides from the aggregate itself, so a lagging or stale read model can only
delay a change, never make a wrong one, and a repeat finds nothing to do (exactly once, safe
under restarts). After downtime it catches up on everything that fell due meanwhile (the
events carry the time they ran); a contract's missed periods are not granted late, only the
current one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog
from prometheus_client import Counter

from domain.application import CommandResult, PinkseaApplication
from domain.errors import DomainError
from infra.errors import OPERATIONAL_ERRORS
from infra.loops import sleep_or_stop

log = structlog.get_logger("expiry")
EXPIRED_ACCOUNTS = Counter("pinksea_expiry_accounts_total", "Accounts whose lots expired")
TESTER_PLANS_ENDED = Counter("pinksea_expiry_tester_plans_ended_total", "Tester plans reverted")
CONTRACT_PERIODS = Counter(
    "pinksea_expiry_contract_periods_total", "Contract periods whose credits were granted"
)

ROUND_INTERVAL_S = 30.0  # a due change (an expiry, a revert, a period) is made at most this late


async def due_users(pool: asyncpg.Pool, at: datetime, limit: int = 1000) -> list[str]:
    rows = await pool.fetch(
        "SELECT DISTINCT user_id FROM credit_lots "
        "WHERE NOT expired AND valid_until IS NOT NULL AND valid_until <= $1 LIMIT $2",
        at,
        limit,
    )
    return [r["user_id"] for r in rows]


async def due_tester_plans(pool: asyncpg.Pool, at: datetime, limit: int = 1000) -> list[str]:
    rows = await pool.fetch(
        "SELECT user_id FROM user_subscriptions "
        "WHERE tester_until IS NOT NULL AND tester_until <= $1 AND plan = 'tester' LIMIT $2",
        at,
        limit,
    )
    return [r["user_id"] for r in rows]


async def due_contracts(pool: asyncpg.Pool, at: datetime, limit: int = 1000) -> list[str]:
    """Enterprise subscriptions with terms whose last contract period ended (or that never had
    one: a contract the admin's command did not start, e.g. one beside a Stripe subscription,
    which the aggregate then declines)."""
    rows = await pool.fetch(
        "SELECT user_id FROM user_subscriptions "
        "WHERE plan = 'enterprise' AND custom_terms IS NOT NULL AND status <> 'ended' "
        "AND (contract_period_end IS NULL OR contract_period_end <= $1) LIMIT $2",
        at,
        limit,
    )
    return [r["user_id"] for r in rows]


async def _each(
    users: list[str], command: Callable[[str, datetime], CommandResult], at: datetime
) -> int:
    """Run ``command`` for each user on a thread; one refused user does not stop the round."""
    changed = 0
    for user in users:
        try:
            result = await asyncio.to_thread(command, user, at)
        except DomainError as e:
            log.warning("due change refused", user_id=user, error=e.detail)
            continue
        changed += result.changed
    return changed


async def expire_once(pool: asyncpg.Pool, app: PinkseaApplication, at: datetime) -> int:
    """Expire every due lot once; returns the number of accounts that changed."""
    changed = await _each(await due_users(pool, at), app.expire_due, at)
    EXPIRED_ACCOUNTS.inc(changed)
    return changed


async def end_tester_plans(pool: asyncpg.Pool, app: PinkseaApplication, at: datetime) -> int:
    """Revert every tester plan whose window ended by ``at``; returns how many reverted."""
    changed = await _each(await due_tester_plans(pool, at), app.end_tester_plan, at)
    TESTER_PLANS_ENDED.inc(changed)
    return changed


async def start_contract_periods(pool: asyncpg.Pool, app: PinkseaApplication, at: datetime) -> int:
    """Grant each contract's period containing ``at`` once; returns how many were granted."""
    changed = await _each(await due_contracts(pool, at), app.start_contract_period, at)
    CONTRACT_PERIODS.inc(changed)
    return changed


async def tick(pool: asyncpg.Pool, app: PinkseaApplication, at: datetime) -> dict[str, int]:
    """One round at ``at``: what changed, by kind."""
    return {
        "contract_periods": await start_contract_periods(pool, app, at),
        "tester_plans_ended": await end_tester_plans(pool, app, at),
        "accounts_expired": await expire_once(pool, app, at),
    }


async def run_expiry(
    pool: asyncpg.Pool,
    app: PinkseaApplication,
    stop: asyncio.Event,
    interval_s: float = ROUND_INTERVAL_S,
) -> None:
    """Run a round every ``interval_s`` until ``stop``. A round that fails for an operational
    reason (the database down) is retried at the next one: every round catches up on all that
    fell due. Anything else is a bug and ends the process (its supervisor restarts it)."""
    assert interval_s > 0, f"expiry interval {interval_s} s"
    log.info("expiry started", interval_s=interval_s)
    while not stop.is_set():  # a server loop: runs until stopped
        try:
            changes = await tick(pool, app, datetime.now(UTC))
            if any(changes.values()):
                log.info("due changes made", **changes)
        except OPERATIONAL_ERRORS as e:
            log.warning("expiry round failed, retrying", error=repr(e), retry_in_s=interval_s)
        await sleep_or_stop(stop, interval_s)
