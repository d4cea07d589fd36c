"""Verified Stripe events -> commands. Each event takes effect exactly once (its record is saved
in the same transaction as its effect) and each maps to ONE command, so a crash never leaves
half an effect. Deliveries in any order converge:

- ``invoice.paid`` grants the period's credits (keyed by invoice id) for the plan the invoice
  paid for, and starts the subscription if its own event has not arrived yet;
- subscription snapshots (``customer.subscription.*``) older than the last applied are ignored;
- a late invoice of an older period never moves the current period back.

This module is the translation: what Stripe's objects mean (status strings, which invoice line
names the plan, what a proration invoice is) is decided here and nowhere in the domain, whose
commands take plan slugs, periods, a ``BillingState`` and cents. ``translate`` is pure: it
reads one event and says which command to run, if any; ``handle_stripe_event`` runs it with
the event (``StripeEvent``), whose record the command saves with its effect, or saves the
record alone when the event has no effect.

The user is found in ``metadata.user_id`` (set on the subscription by our Checkout Session,
which Stripe copies to its invoices) or in the session's ``client_reference_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.application import BillingState, PinkseaApplication, StripeEventAlreadyApplied
from domain.errors import DomainError
from domain.webhooks import StripeEvent

HANDLED = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
        "charge.refunded",
    }
)

# Stripe's subscription statuses, as the domain sees them; any other ("incomplete",
# "incomplete_expired", "unpaid", "paused") is one whose state changes nothing.
BILLING_STATES = {
    "active": BillingState.RUNNING,
    "trialing": BillingState.RUNNING,
    "past_due": BillingState.RUNNING,  # retrying a payment; the failed invoice says past due
    "canceled": BillingState.ENDED,
}

Command = Callable[[PinkseaApplication, StripeEvent], object]


@dataclass(frozen=True)
class StripeOutcome:
    applied: bool  # False: a repeat delivery, or a type we don't handle
    action: str


@dataclass(frozen=True)
class Translation:
    """What one event means: the command to run (None: nothing to do) and what it does."""

    action: str
    command: Command | None = None


def handle_stripe_event(
    app: PinkseaApplication, event: Mapping[str, Any], plan_for_price: Mapping[str, str]
) -> StripeOutcome:
    """Apply one verified Stripe event (blocking: run it in a worker thread)."""
    kind, at = event["type"], _ts(event["created"])
    if kind not in HANDLED:
        return StripeOutcome(False, f"ignored: {kind} is not handled")
    stripe_event = StripeEvent(event_id=str(event["id"]), type=kind, at=at)
    if app.stripe_event_seen(stripe_event.event_id):
        return StripeOutcome(False, "duplicate: already applied")
    translation = translate(kind, event["data"]["object"], plan_for_price, at)
    action = translation.action
    try:
        if translation.command is None:
            app.record_stripe_event(stripe_event)
        else:
            try:
                translation.command(app, stripe_event)
            except DomainError as e:
                # Recorded as handled: retrying a delivery the ledger refuses would not help.
                action = f"refused: {e.detail}"
                app.record_stripe_event(stripe_event)
    except StripeEventAlreadyApplied:
        return StripeOutcome(False, "duplicate: applied concurrently")
    return StripeOutcome(True, action)


def translate(
    kind: str, obj: Mapping[str, Any], plan_for_price: Mapping[str, str], at: datetime
) -> Translation:
    """The command a handled event of type ``kind`` on Stripe object ``obj`` means."""
    user = _user(obj)
    if user is None:
        return Translation("ignored: no user_id in the object's metadata")
    if kind == "checkout.session.completed":
        customer = obj.get("customer")
        if not customer:
            return Translation("customer linked")
        return Translation(
            "customer linked",
            lambda app, e: app.link_stripe_customer(user, str(customer), at, stripe_event=e),
        )
    if kind.startswith("customer.subscription."):
        return _subscription(kind, user, obj, plan_for_price, at)
    if kind == "invoice.paid" and obj.get("billing_reason") == "subscription_update":
        return _upgrade_paid(user, obj, plan_for_price, at)
    if kind == "invoice.paid":
        return _period_paid(user, obj, plan_for_price, at)
    if kind == "invoice.payment_failed":
        invoice_id = str(obj["id"])
        return Translation(
            "payment failed: past due",
            lambda app, e: app.record_payment_failed(
                user, invoice_id=invoice_id, at=at, stripe_event=e
            ),
        )
    if kind == "charge.refunded":
        invoice = obj.get("invoice")
        if not invoice:
            return Translation("ignored: the refunded charge has no invoice")
        return Translation(
            "invoice credits revoked",
            lambda app, e: app.revoke_invoice_credits(
                user,
                invoice_id=str(invoice),
                reason="payment refunded in Stripe",
                at=at,
                stripe_event=e,
            ),
        )
    return Translation("ignored")


def _subscription(
    kind: str,
    user: str,
    obj: Mapping[str, Any],
    plan_for_price: Mapping[str, str],
    at: datetime,
) -> Translation:
    item = ((obj.get("items") or {}).get("data") or [{}])[0]
    plan = plan_for_price.get(_price_id(item) or "")
    if plan is None:
        return Translation(f"ignored: price {_price_id(item)} is not one of our plans")
    start = item.get("current_period_start") or obj.get("current_period_start")
    end = item.get("current_period_end") or obj.get("current_period_end")
    assert start is not None and end is not None  # a subscription's period is on one or the other
    status = "canceled" if kind.endswith(".deleted") else str(obj.get("status"))
    state = BILLING_STATES.get(status, BillingState.INACTIVE)
    external_id = str(obj["id"])
    period_start, period_end = _ts(start), _ts(end)
    cancel_at_period_end = bool(obj.get("cancel_at_period_end"))
    return Translation(
        f"subscription synced ({status}, {plan})",
        lambda app, e: app.sync_stripe_subscription(
            user,
            external_id=external_id,
            plan=plan,
            state=state,
            period_start=period_start,
            period_end=period_end,
            cancel_at_period_end=cancel_at_period_end,
            object_at=at,
            at=at,
            stripe_event=e,
        ),
    )


def _period_paid(
    user: str, invoice: Mapping[str, Any], plan_for_price: Mapping[str, str], at: datetime
) -> Translation:
    """A subscription invoice: its first line names the plan and the period it pays for."""
    line = _first_line(invoice)
    plan = plan_for_price.get(_price_id(line) or "")
    period = line.get("period") or {}
    if plan is None or not period:
        return Translation("ignored: not a subscription invoice of our plans")
    invoice_id, external_id = str(invoice["id"]), _subscription_id(invoice)
    period_start, period_end = _ts(period["start"]), _ts(period["end"])
    return Translation(
        f"period paid ({plan})",
        lambda app, e: app.renew_period(
            user,
            invoice_id=invoice_id,
            period_start=period_start,
            period_end=period_end,
            at=at,
            start_plan=plan,
            external_id=external_id,
            stripe_event=e,
        ),
    )


def _upgrade_paid(
    user: str, invoice: Mapping[str, Any], plan_for_price: Mapping[str, str], at: datetime
) -> Translation:
    """A proration invoice: a credit line for the unused old plan, a charge for the new one."""
    lines = (invoice.get("lines") or {}).get("data") or []
    old = next((ln for ln in lines if ln.get("amount", 0) < 0), None)
    new = next((ln for ln in lines if ln.get("amount", 0) > 0), None)
    if old is None or new is None:
        return Translation("ignored: a subscription update invoice without proration lines")
    from_plan = plan_for_price.get(_price_id(old) or "")
    to_plan = plan_for_price.get(_price_id(new) or "")
    if from_plan is None or to_plan is None:
        return Translation("ignored: proration lines are not for our plans")
    invoice_id, paid_cents = str(invoice["id"]), int(invoice.get("amount_paid", 0))
    valid_until = _ts(new["period"]["end"])
    return Translation(
        f"upgrade credits granted ({from_plan} -> {to_plan})",
        lambda app, e: app.grant_upgrade_credits(
            user,
            invoice_id=invoice_id,
            from_plan=from_plan,
            to_plan=to_plan,
            amount_paid_cents=paid_cents,
            valid_until=valid_until,
            at=at,
            stripe_event=e,
        ),
    )


def _ts(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def _user(obj: Mapping[str, Any]) -> str | None:
    for holder in (
        obj,
        obj.get("subscription_details") or {},
        (obj.get("parent") or {}).get("subscription_details") or {},
    ):
        user = (holder.get("metadata") or {}).get("user_id")
        if user:
            return str(user)
    ref = obj.get("client_reference_id")
    return str(ref) if ref else None


def _subscription_id(invoice: Mapping[str, Any]) -> str | None:
    sub = invoice.get("subscription") or (
        ((invoice.get("parent") or {}).get("subscription_details") or {}).get("subscription")
    )
    return sub if isinstance(sub, str) or sub is None else sub.get("id")


def _first_line(invoice: Mapping[str, Any]) -> Mapping[str, Any]:
    lines = (invoice.get("lines") or {}).get("data") or []
    return lines[0] if lines else {}


def _price_id(item: Mapping[str, Any]) -> str | None:
    price = item.get("price") or ((item.get("pricing") or {}).get("price_details") or {}).get(
        "price"
    )
    return price if isinstance(price, str) or price is None else price.get("id")
