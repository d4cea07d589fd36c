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
from collections.abc import Callable
from typing import Any

from domain.credits import LotSource
from domain.subscription import SubscriptionStatus
from eventstore.decoding import UnknownEventType, domain_event
from eventstore.envelope import Envelope
from infra.topics import CREDITS_TOPIC, SUBSCRIPTIONS_TOPIC
from projections.batching import Statement, StatementProjection

TESTER_PLAN = "tester"

# Every statement starts with $1 aggregate id, $2 occurred_at, $3 position.

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
){extra},
synced AS (
    UPDATE users AS u SET
        plan = CASE WHEN s.status = 'ended' THEN 'trial' ELSE s.plan END,
        subscription_status = s.status, updated_at = $2, position = $3
    FROM subscription AS s WHERE u.user_id = s.user_id
    RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM synced), 'an event of subscription ' || $1::text || ', never started'
)
"""


_STARTED = _change(
    "plan = $4, external_id = $5, status = $6, period_start = $7, period_end = $8,"
    " cancel_at = NULL, custom_terms = NULL, started_at = $2, tester_until = NULL"
)
_PERIOD_RENEWED = _change(
    "status = $4, period_start = $5, period_end = $6, last_invoice_id = $7, last_renewed_at = $2"
)
# An admin-assigned plan activates a trialing or ended subscription (Subscription._plan_changed);
# a tester window lasts only while the plan stays tester (SET sees the row's old values).
_PLAN_CHANGED = _change(
    "plan = $4, custom_terms = $5::jsonb, plan_changed_by = $6, plan_change_reason = $7,"
    " status = CASE WHEN status IN ('trialing', 'ended') THEN 'active' ELSE status END,"
    " tester_until = CASE WHEN $4 = 'tester' AND plan = 'tester' THEN tester_until END",
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
# The latest of the tester windows (GREATEST ignores NULL).
_TESTER_PLAN_GRANTED = _change("tester_until = GREATEST(tester_until, $4)")
_TESTER_PLAN_ENDED = _change(
    "plan = $4, custom_terms = $5::jsonb, status = $6, tester_until = NULL"
)
_CONTRACT_PERIOD_STARTED = _change("period_start = $4, period_end = $5, contract_period_end = $5")
_CREDIT_OWED = _change("credit_owed_mc = $4")
# Stripe events held for an operator or rejected (their records' second event).
_STRIPE_EVENT_HELD = """
INSERT INTO stripe_events_held (
    record_id, stripe_event_id, stripe_type, outcome, user_id, customer_id, reason,
    received_at, position
)
VALUES ($1, $4, $5, $6, $7, $8, $9, $2, $3)
ON CONFLICT (record_id) DO NOTHING
"""

# Released (its redelivery applied once an operator linked the customer): no longer held.
# ($2, the event's time, is every statement's second argument; a deletion has no use for it.)
_STRIPE_EVENT_RELEASED = """
DELETE FROM stripe_events_held
WHERE record_id = $1 AND position < $3 AND $2::timestamptz IS NOT NULL
"""

_ACCOUNT_OPENED = """
INSERT INTO credit_account_owners (account_id, user_id, opened_at, position)
VALUES ($1, $4, $2, $3)
"""
_TESTER_CREDITS = """
WITH granted AS (
    INSERT INTO test_plan_grants (
        event_id, user_id, kind, actor, reason, granted_at, position,
        grant_id, lot_id, amount_mc, valid_from, valid_until
    )
    SELECT $4, user_id, 'credits', $5, $6, $2, $3, $7, $8, $9, $10, $11
    FROM credit_account_owners WHERE account_id = $1
    RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM granted), 'credit account ' || $1::text || ' was never opened'
)
"""


def _plan_changed(env: Envelope, ev: Any) -> tuple[Any, ...]:
    terms = None if ev.custom_terms is None else json.dumps(ev.custom_terms, sort_keys=True)
    to_tester = ev.to_plan == TESTER_PLAN  # audited in test_plan_grants
    return (ev.to_plan, terms, ev.actor, ev.reason, ev.from_plan, env.id, to_tester)


def _tester_credits(env: Envelope, ev: Any) -> tuple[Any, ...]:
    grant_id = ev.reference  # the admin's grant id
    return (
        env.id,
        ev.actor,
        ev.reason,
        grant_id,
        ev.lot_id,
        ev.amount_mc,
        ev.valid_from,
        ev.valid_until,
    )


_S = SubscriptionStatus
# By public type name (an event class renamed or removed only ever fails to match): the
# statement and the event's own arguments, from $4 on.
_STATEMENTS: dict[str, tuple[str, Callable[[Envelope, Any], tuple[Any, ...]]]] = {
    "Subscription.TrialStarted": (
        _TRIAL_STARTED,
        # "trial" as in Subscription.__init__
        lambda env, ev: (ev.user_id, "trial", _S.TRIALING.value, ev.period_start, ev.period_end),
    ),
    "Subscription.Started": (
        _STARTED,
        lambda env, ev: (
            ev.plan,
            ev.external_id,
            _S.ACTIVE.value,
            ev.period_start,
            ev.period_end,
        ),
    ),
    "Subscription.PeriodRenewed": (
        _PERIOD_RENEWED,
        lambda env, ev: (_S.ACTIVE.value, ev.period_start, ev.period_end, ev.invoice_id),
    ),
    "Subscription.PlanChanged": (_PLAN_CHANGED, _plan_changed),
    "Subscription.CancellationScheduled": (
        _CANCELLATION_SCHEDULED,
        lambda env, ev: (ev.effective_at,),
    ),
    "Subscription.CancellationRevoked": (_CANCELLATION_REVOKED, lambda env, ev: ()),
    "Subscription.PaymentFailed": (
        _PAYMENT_FAILED,
        lambda env, ev: (_S.PAST_DUE.value, ev.invoice_id),
    ),
    "Subscription.CustomerLinked": (_CUSTOMER_LINKED, lambda env, ev: (ev.customer_id,)),
    "Subscription.StripeSynced": (_STRIPE_SYNCED, lambda env, ev: (ev.object_at,)),
    "Subscription.Ended": (_ENDED, lambda env, ev: (_S.ENDED.value, ev.reason)),
    "Subscription.TesterPlanGranted": (_TESTER_PLAN_GRANTED, lambda env, ev: (ev.valid_until,)),
    "Subscription.TesterPlanEnded": (
        _TESTER_PLAN_ENDED,
        lambda env, ev: (
            ev.to_plan,
            None if ev.custom_terms is None else json.dumps(ev.custom_terms, sort_keys=True),
            ev.status,
        ),
    ),
    "Subscription.ContractPeriodStarted": (
        _CONTRACT_PERIOD_STARTED,
        lambda env, ev: (ev.period_start, ev.period_end),
    ),
    "Subscription.InvoiceCredited": (_CREDIT_OWED, lambda env, ev: (ev.owed_mc,)),
    "Subscription.InvoiceMoneyReturned": (_CREDIT_OWED, lambda env, ev: (ev.owed_mc,)),
    "StripeEventRecord.Quarantined": (
        _STRIPE_EVENT_HELD,
        lambda env, ev: (
            ev.stripe_event_id,
            ev.stripe_type,
            "quarantined",
            ev.user_id,
            ev.customer_id,
            ev.reason,
        ),
    ),
    "StripeEventRecord.Rejected": (
        _STRIPE_EVENT_HELD,
        lambda env, ev: (ev.stripe_event_id, ev.stripe_type, "rejected", None, None, ev.reason),
    ),
    "StripeEventRecord.Released": (_STRIPE_EVENT_RELEASED, lambda env, ev: ()),
    "CreditAccount.Opened": (_ACCOUNT_OPENED, lambda env, ev: (ev.user_id,)),
    # Only tester grants pass ``wants``.
    "CreditAccount.CreditsGranted": (_TESTER_CREDITS, _tester_credits),
}


# Subscription events that change no column here (a voided note of an unpaid invoice moves no
# credit and owes nothing); any other this projection does not know stops it (UnknownEventType).
_NO_COLUMN = frozenset({"Subscription.InvoiceCreditNoteVoided"})
_HELD_EVENTS = frozenset(t for t in _STATEMENTS if t.startswith("StripeEventRecord."))


class SubscriptionsProjection(StatementProjection):
    name = "subscriptions"
    topics = (SUBSCRIPTIONS_TOPIC, CREDITS_TOPIC)
    tables = (
        "users",
        "user_subscriptions",
        "credit_account_owners",
        "test_plan_grants",
        "stripe_events_held",
    )

    def wants(self, env: Envelope) -> bool:
        if env.aggregate_type == "Subscription":
            return env.type not in _NO_COLUMN
        if env.aggregate_type == "StripeEventRecord":
            return env.type in _HELD_EVENTS
        if env.type == "CreditAccount.CreditsGranted":
            return env.data.get("source") == LotSource.TESTER.value
        return env.type == "CreditAccount.Opened"

    def statements(self, env: Envelope) -> list[Statement]:
        try:
            sql, arguments = _STATEMENTS[env.type]
        except KeyError:
            raise UnknownEventType(env.type) from None
        key = (env.aggregate_id, env.occurred_at, env.position)
        return [(sql, key + arguments(env, domain_event(env)))]
