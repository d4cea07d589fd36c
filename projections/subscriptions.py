"""Projection "subscriptions": users, their subscription, and the audit of tester access.

A user row is created by ``Subscription.TrialStarted`` (the sign-up event) and follows the
subscription's plan and status. Every subscription statement updates ``user_subscriptions``
and syncs ``users`` from it, in one round trip.

Tester credit grants are credit events, on another topic with no order relative to the
subscription's: the projection resolves their user through its own account -> user table, fed
by ``CreditAccount.Opened`` (which precedes every other event of its account).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from domain.credits import LotSource
from domain.subscription import SubscriptionStatus
from infra.envelope import CREDITS_TOPIC, SUBSCRIPTIONS_TOPIC, Envelope
from projections.base import Projection
from projections.decoding import UnknownEventType, domain_event

TESTER_PLAN = "tester"


class UnknownSubscriber(Exception):
    """An event for a subscription or account whose first event was never projected."""


_TRIAL_STARTED = """
WITH subscription AS (
    INSERT INTO user_subscriptions (
        subscription_id, user_id, plan, status, period_start, period_end, trial_started_at,
        updated_at, position
    )
    VALUES ($1, $4, $5, $6, $7, $8, $2, $2, $3)
)
INSERT INTO users (user_id, subscription_id, plan, subscription_status, created_at, updated_at,
    position)
VALUES ($4, $1, $5, $6, $2, $2, $3)
"""


def _change(assignments: str, *extra_ctes: str) -> str:
    """Update the subscription ($1 id, $2 occurred_at, $3 position, then the event's own
    values) and bring its user's plan and status along. An ended subscription leaves the user
    on trial entitlements (as ``Subscription.plan``)."""
    extra = "".join(f",\n{cte}" for cte in extra_ctes)
    return f"""
WITH subscription AS (
    UPDATE user_subscriptions SET {assignments}, updated_at = $2, position = $3
    WHERE subscription_id = $1
    RETURNING user_id, plan, status
){extra}
UPDATE users AS u SET
    plan = CASE WHEN s.status = 'ended' THEN 'trial' ELSE s.plan END,
    subscription_status = s.status, updated_at = $2, position = $3
FROM subscription AS s WHERE u.user_id = s.user_id
"""


_STARTED = _change(
    "plan = $4, external_id = $5, status = $6, period_start = $7, period_end = $8,"
    " cancel_at = NULL, custom_terms = NULL, started_at = $2"
)
_PERIOD_RENEWED = _change(
    "status = $4, period_start = $5, period_end = $6, last_invoice_id = $7, last_renewed_at = $2"
)
# An admin-assigned plan activates a trialing or ended subscription (Subscription._plan_changed).
_PLAN_CHANGED = _change(
    "plan = $4, custom_terms = $5::jsonb, plan_changed_by = $6, plan_change_reason = $7,"
    " status = CASE WHEN status IN ('trialing', 'ended') THEN 'active' ELSE status END",
    """tester_grant AS (
    INSERT INTO test_plan_grants (
        event_id, user_id, kind, actor, reason, granted_at, position, from_plan
    )
    SELECT $9, user_id, 'plan', $6, $7, $2, $3, $8 FROM subscription WHERE $10
)""",
)
_CANCELLATION_SCHEDULED = _change("cancel_at = $4")
_CANCELLATION_REVOKED = _change("cancel_at = NULL")
_PAYMENT_FAILED = _change("status = $4, last_failed_invoice_id = $5")
_CUSTOMER_LINKED = _change("customer_id = $4")
_STRIPE_SYNCED = _change("stripe_synced_at = $4")
_ENDED = _change("status = $4, cancel_at = NULL, ended_at = $2, end_reason = $5")

_ACCOUNT_OPENED = "INSERT INTO credit_account_owners (account_id, user_id) VALUES ($1, $2)"
_TESTER_CREDITS = """
INSERT INTO test_plan_grants (
    event_id, user_id, kind, actor, reason, granted_at, position,
    grant_id, lot_id, amount_mc, valid_from, valid_until
)
SELECT $4, user_id, 'credits', $5, $6, $2, $3, $7, $8, $9, $10, $11
FROM credit_account_owners WHERE account_id = $1
"""

Handler = Callable[[asyncpg.Connection, Envelope, Any], Awaitable[object]]


def _key(env: Envelope) -> tuple[Any, ...]:
    return env.aggregate_id, env.occurred_at, env.position


async def _trial_started(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(
        _TRIAL_STARTED,
        *_key(env),
        ev.user_id,
        "trial",  # as Subscription.__init__
        SubscriptionStatus.TRIALING.value,
        ev.period_start,
        ev.period_end,
    )


async def _started(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(
        _STARTED,
        *_key(env),
        ev.plan,
        ev.external_id,
        SubscriptionStatus.ACTIVE.value,
        ev.period_start,
        ev.period_end,
    )


async def _period_renewed(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(
        _PERIOD_RENEWED,
        *_key(env),
        SubscriptionStatus.ACTIVE.value,
        ev.period_start,
        ev.period_end,
        ev.invoice_id,
    )


async def _plan_changed(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    terms = None if ev.custom_terms is None else json.dumps(ev.custom_terms, sort_keys=True)
    return await conn.execute(
        _PLAN_CHANGED,
        *_key(env),
        ev.to_plan,
        terms,
        ev.actor,
        ev.reason,
        ev.from_plan,
        env.id,
        ev.to_plan == TESTER_PLAN,  # audited in test_plan_grants
    )


async def _cancellation_scheduled(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_CANCELLATION_SCHEDULED, *_key(env), ev.effective_at)


async def _cancellation_revoked(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_CANCELLATION_REVOKED, *_key(env))


async def _payment_failed(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(
        _PAYMENT_FAILED, *_key(env), SubscriptionStatus.PAST_DUE.value, ev.invoice_id
    )


async def _customer_linked(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_CUSTOMER_LINKED, *_key(env), ev.customer_id)


async def _stripe_synced(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_STRIPE_SYNCED, *_key(env), ev.object_at)


async def _ended(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_ENDED, *_key(env), SubscriptionStatus.ENDED.value, ev.reason)


async def _account_opened(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_ACCOUNT_OPENED, env.aggregate_id, ev.user_id)


async def _tester_credits(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(
        _TESTER_CREDITS,
        *_key(env),
        env.id,
        ev.actor,
        ev.reason,
        ev.reference,  # the admin's grant id
        ev.lot_id,
        ev.amount_mc,
        ev.valid_from,
        ev.valid_until,
    )


# By public type name: an event class that is renamed or removed only ever fails to match.
_HANDLERS: dict[str, Handler] = {
    "Subscription.TrialStarted": _trial_started,
    "Subscription.Started": _started,
    "Subscription.PeriodRenewed": _period_renewed,
    "Subscription.PlanChanged": _plan_changed,
    "Subscription.CancellationScheduled": _cancellation_scheduled,
    "Subscription.CancellationRevoked": _cancellation_revoked,
    "Subscription.PaymentFailed": _payment_failed,
    "Subscription.CustomerLinked": _customer_linked,
    "Subscription.StripeSynced": _stripe_synced,
    "Subscription.Ended": _ended,
    "CreditAccount.Opened": _account_opened,
    "CreditAccount.CreditsGranted": _tester_credits,  # only tester grants pass ``wants``
}


class SubscriptionsProjection(Projection):
    name = "subscriptions"
    topics = (SUBSCRIPTIONS_TOPIC, CREDITS_TOPIC)
    tables = ("users", "user_subscriptions", "credit_account_owners", "test_plan_grants")

    def wants(self, env: Envelope) -> bool:
        if env.aggregate_type == "Subscription":
            return True
        if env.type == "CreditAccount.CreditsGranted":
            return env.data.get("source") == LotSource.TESTER.value
        return env.type == "CreditAccount.Opened"

    async def apply(self, conn: asyncpg.Connection, env: Envelope) -> None:
        handler = _HANDLERS.get(env.type)
        if handler is None:
            raise UnknownEventType(env.type)
        status = await handler(conn, env, domain_event(env))
        # Every statement ends in an INSERT or UPDATE of exactly one row ("INSERT 0 1").
        if not str(status).endswith(" 1"):
            raise UnknownSubscriber(f"event {env.id} ({env.type}) found no subscriber")
