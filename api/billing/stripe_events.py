"""Verified Stripe events -> commands. Each event takes effect exactly once (its record is saved
in the same transaction as its effect) and each maps to ONE command, so a crash never leaves
half an effect. Deliveries in any order converge:

- ``invoice.paid`` grants the period's credits (keyed by invoice id) for the plan the invoice
  paid for, and starts the subscription if its own event has not arrived yet;
- subscription snapshots (``customer.subscription.*``) older than the last applied are ignored;
- a late invoice of an older period never moves the current period back.

The user is found in ``metadata.user_id`` (set on the subscription by our Checkout Session,
which Stripe copies to its invoices) or in the session's ``client_reference_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.application import PinkseaApplication, StripeEventAlreadyApplied
from domain.errors import DomainError

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


@dataclass(frozen=True)
class StripeOutcome:
    applied: bool  # False: a repeat delivery, or a type we don't handle
    action: str


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


def _upgrade_paid(
    app: PinkseaApplication,
    user: str,
    invoice: Mapping[str, Any],
    plan_for_price: Mapping[str, str],
    at: datetime,
) -> str:
    """A proration invoice: a credit line for the unused old plan, a charge for the new one."""
    lines = (invoice.get("lines") or {}).get("data") or []
    old = next((ln for ln in lines if ln.get("amount", 0) < 0), None)
    new = next((ln for ln in lines if ln.get("amount", 0) > 0), None)
    if old is None or new is None:
        return "ignored: a subscription update invoice without proration lines"
    from_plan = plan_for_price.get(_price_id(old) or "")
    to_plan = plan_for_price.get(_price_id(new) or "")
    if from_plan is None or to_plan is None:
        return "ignored: proration lines are not for our plans"
    app.grant_upgrade_credits(
        user,
        invoice_id=str(invoice["id"]),
        from_plan=from_plan,
        to_plan=to_plan,
        amount_paid_cents=int(invoice.get("amount_paid", 0)),
        valid_until=_ts(new["period"]["end"]),
        at=at,
    )
    return f"upgrade credits granted ({from_plan} -> {to_plan})"


def handle_stripe_event(
    app: PinkseaApplication, event: Mapping[str, Any], plan_for_price: Mapping[str, str]
) -> StripeOutcome:
    """Apply one verified Stripe event (blocking: run it in a worker thread)."""
    kind, at = event["type"], _ts(event["created"])
    if kind not in HANDLED:
        return StripeOutcome(False, f"ignored: {kind} is not handled")
    try:
        with app.stripe_event(event["id"], kind, at) as fresh:
            if not fresh:
                return StripeOutcome(False, "duplicate: already applied")
            action = _apply(app, kind, event["data"]["object"], plan_for_price, at)
    except StripeEventAlreadyApplied:
        return StripeOutcome(False, "duplicate: applied concurrently")
    return StripeOutcome(True, action)


def _apply(
    app: PinkseaApplication,
    kind: str,
    obj: Mapping[str, Any],
    plan_for_price: Mapping[str, str],
    at: datetime,
) -> str:
    user = _user(obj)
    if user is None:
        return "ignored: no user_id in the object's metadata"
    try:
        if kind == "checkout.session.completed":
            if obj.get("customer"):
                app.link_stripe_customer(user, str(obj["customer"]), at)
            return "customer linked"
        if kind.startswith("customer.subscription."):
            item = ((obj.get("items") or {}).get("data") or [{}])[0]
            plan = plan_for_price.get(_price_id(item) or "")
            if plan is None:
                return f"ignored: price {_price_id(item)} is not one of our plans"
            start = item.get("current_period_start") or obj.get("current_period_start")
            end = item.get("current_period_end") or obj.get("current_period_end")
            status = "canceled" if kind.endswith(".deleted") else str(obj.get("status"))
            app.sync_stripe_subscription(
                user,
                external_id=str(obj["id"]),
                plan=plan,
                status=status,
                period_start=_ts(start),
                period_end=_ts(end),
                cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
                object_at=at,
                at=at,
            )
            return f"subscription synced ({status}, {plan})"
        if kind == "invoice.paid" and obj.get("billing_reason") == "subscription_update":
            return _upgrade_paid(app, user, obj, plan_for_price, at)
        if kind == "invoice.paid":
            line = _first_line(obj)
            plan = plan_for_price.get(_price_id(line) or "")
            period = line.get("period") or {}
            if plan is None or not period:
                return "ignored: not a subscription invoice of our plans"
            app.renew_period(
                user,
                invoice_id=str(obj["id"]),
                period_start=_ts(period["start"]),
                period_end=_ts(period["end"]),
                at=at,
                start_plan=plan,
                external_id=_subscription_id(obj),
            )
            return f"period paid ({plan})"
        if kind == "invoice.payment_failed":
            app.record_payment_failed(user, invoice_id=str(obj["id"]), at=at)
            return "payment failed: past due"
        if kind == "charge.refunded":
            invoice = obj.get("invoice")
            if not invoice:
                return "ignored: the refunded charge has no invoice"
            app.revoke_invoice_credits(
                user, invoice_id=str(invoice), reason="payment refunded in Stripe", at=at
            )
            return "invoice credits revoked"
    except DomainError as e:
        # Recorded as handled: retrying a delivery that the ledger refuses would not help.
        return f"refused: {e.detail}"
    return "ignored"
