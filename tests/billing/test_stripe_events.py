"""Stripe webhooks -> ledger: exactly once, and the same final state in any delivery order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api.billing.stripe_events import handle_stripe_event, translate
from domain.application import BillingState, PinkseaApplication
from domain.plans import get_plan
from domain.webhooks import StripeEvent

T0 = datetime(2026, 3, 1, tzinfo=UTC)
PRICES = {"price_starter": "starter", "price_pro": "pro", "price_studio": "studio"}
USER = "u-stripe"
P1 = (T0, T0 + timedelta(days=30))
P2 = (P1[1], P1[1] + timedelta(days=30))


def unix(t: datetime) -> int:
    return int(t.timestamp())


def event(n: int, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"evt_{n}", "type": kind, "created": unix(T0) + n * 3600, "data": {"object": obj}}


def subscription(price: str, status: str = "active", cancel: bool = False) -> dict[str, Any]:
    return {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": status,
        "cancel_at_period_end": cancel,
        "metadata": {"user_id": USER},
        "items": {
            "data": [
                {
                    "price": {"id": price},
                    "current_period_start": unix(P1[0]),
                    "current_period_end": unix(P1[1]),
                }
            ]
        },
    }


def invoice(
    invoice_id: str, price: str, period: tuple[datetime, datetime], amount: int
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "customer": "cus_1",
        "billing_reason": "subscription_cycle",
        "parent": {
            "subscription_details": {"subscription": "sub_1", "metadata": {"user_id": USER}}
        },
        "lines": {
            "data": [
                {
                    "amount": amount,
                    "price": {"id": price},
                    "period": {"start": unix(period[0]), "end": unix(period[1])},
                }
            ]
        },
    }


def upgrade_invoice() -> dict[str, Any]:
    mid = P1[0] + timedelta(days=15)
    return {
        "id": "in_upgrade",
        "customer": "cus_1",
        "billing_reason": "subscription_update",
        "amount_paid": 2500,  # half of the $50 monthly step from starter to pro
        "subscription_details": {"metadata": {"user_id": USER}},
        "lines": {
            "data": [
                {
                    "amount": -1250,
                    "proration": True,
                    "price": {"id": "price_starter"},
                    "period": {"start": unix(mid), "end": unix(P1[1])},
                },
                {
                    "amount": 3750,
                    "proration": True,
                    "price": {"id": "price_pro"},
                    "period": {"start": unix(mid), "end": unix(P1[1])},
                },
            ]
        },
    }


LIFECYCLE = [
    event(
        1,
        "checkout.session.completed",
        {"client_reference_id": USER, "customer": "cus_1", "subscription": "sub_1"},
    ),
    event(2, "customer.subscription.created", subscription("price_starter")),
    event(3, "invoice.paid", invoice("in_1", "price_starter", P1, 2500)),
    event(4, "customer.subscription.updated", subscription("price_pro")),
    event(5, "invoice.paid", upgrade_invoice()),
    event(6, "invoice.paid", invoice("in_2", "price_pro", P2, 7500)),
    event(7, "customer.subscription.updated", subscription("price_pro", cancel=True)),
    event(8, "customer.unknown_thing", {"metadata": {"user_id": USER}}),
]


def final_state(order: list[int], duplicates: list[int]) -> tuple[Any, ...]:
    app = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    app.register_user(USER, T0 - timedelta(days=1))
    # As the Checkout route does before any session exists (api/billing/router.py).
    app.link_stripe_customer(USER, "cus_1", T0 - timedelta(days=1))
    for i in order + duplicates:
        handle_stripe_event(app, LIFECYCLE[i], PRICES)
    sub, account = app.subscription(USER), app.account(USER)
    lots = sorted(
        (lot.source, lot.reference, lot.amount_mc, lot.valid_until) for lot in account.lots.values()
    )
    return (
        sub.plan_slug,
        sub.status,
        sub.customer_id,
        sub.cancel_at is not None,
        sub.period_end,
        lots,
    )


def test_in_order_lifecycle_grants_each_period_and_the_prorated_upgrade() -> None:
    plan, status, customer, cancelling, period_end, lots = final_state(
        list(range(len(LIFECYCLE))), []
    )
    assert (plan, status, customer, cancelling, period_end) == (
        "pro",
        "active",
        "cus_1",
        True,
        P2[1],
    )
    starter, pro = get_plan("starter"), get_plan("pro")
    step = pro.credits_per_month_mc - starter.credits_per_month_mc
    assert ("subscription", "in_1", starter.credits_per_month_mc, P1[1]) in lots
    assert ("subscription", "in_2", pro.credits_per_month_mc, P2[1]) in lots
    assert ("subscription", "in_upgrade", step // 2, P1[1]) in lots  # $25 of a $50 step


def test_a_repeated_event_takes_effect_once() -> None:
    once = final_state(list(range(len(LIFECYCLE))), [])
    assert final_state(list(range(len(LIFECYCLE))), [2, 2, 4, 5]) == once


@settings(max_examples=60, deadline=None)
@given(
    st.permutations(range(len(LIFECYCLE))), st.lists(st.integers(0, len(LIFECYCLE) - 1), max_size=4)
)
def test_any_delivery_order_converges_to_the_in_order_state(
    order: list[int], dups: list[int]
) -> None:
    assert final_state(list(order), dups) == final_state(list(range(len(LIFECYCLE))), [])


def test_stripe_statuses_are_translated_to_the_domain_before_any_command() -> None:
    """The domain takes a BillingState; Stripe's status strings stop at api/billing/."""
    at = T0 + timedelta(hours=2)
    states = {}
    for status in ("active", "trialing", "past_due", "incomplete", "unpaid", "canceled"):
        synced = translate(
            "customer.subscription.updated", subscription("price_pro", status), PRICES, at
        )
        assert synced.command is not None and synced.action.startswith("subscription synced")
        states[status] = _state_sent(synced.command)
    deleted = translate("customer.subscription.deleted", subscription("price_pro"), PRICES, at)
    assert deleted.command is not None
    assert states == {
        "active": BillingState.RUNNING,
        "trialing": BillingState.RUNNING,
        "past_due": BillingState.RUNNING,
        "incomplete": BillingState.INACTIVE,
        "unpaid": BillingState.INACTIVE,
        "canceled": BillingState.ENDED,
    }
    assert _state_sent(deleted.command) is BillingState.ENDED
    unknown = translate("customer.subscription.updated", subscription("price_x"), PRICES, at)
    assert unknown.command is None and unknown.action.startswith("ignored")


def _state_sent(run: Any) -> BillingState:
    """The state a translated command hands to sync_stripe_subscription."""
    sent: dict[str, Any] = {}

    class Recorder:
        def sync_stripe_subscription(self, user: str, **kwargs: Any) -> None:
            sent.update(kwargs)

    run(Recorder(), StripeEvent(event_id="evt", type="t", at=T0))
    assert isinstance(sent["state"], BillingState)
    return sent["state"]


def test_an_event_the_ledger_refuses_is_recorded_and_not_applied_twice() -> None:
    app = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    # No user registered: the command is refused, the event still recorded as handled.
    refused = handle_stripe_event(app, LIFECYCLE[2], PRICES)
    assert refused.applied and refused.action.startswith("refused: ")
    assert app.stripe_event_seen(LIFECYCLE[2]["id"])
    again = handle_stripe_event(app, LIFECYCLE[2], PRICES)
    assert (again.applied, again.action) == (False, "duplicate: already applied")
