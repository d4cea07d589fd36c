"""Verified Stripe events -> commands. Each event takes effect exactly once (its record is saved
in the same transaction as its effect) and each maps to ONE command, so a crash never leaves
half an effect. Deliveries in any order converge:

- ``invoice.paid`` turns the invoice's *lines* into credit (domain/invoices.py: each line of
  our plans by its amount net of discounts, proration or not; a line paying a period records
  the period), keyed by invoice id;
- ``credit_note.created`` and ``charge.refunded`` give money of an invoice back: the same share
  of its credit is taken back (README, "Billing policy"); ``credit_note.voided`` (of an open
  invoice, the only kind Stripe voids) takes the note out of the invoice's payment;
- subscription snapshots (``customer.subscription.*``) older than the last applied are ignored.

Every object's customer must be the one linked to the user (``Subscription.CustomerLinked``);
one that is not is quarantined for an operator (recorded, no effect). Once the operator links
the customer (``PUT /v1/admin/users/{id}/stripe-customer``), Stripe's redelivery of the event
(its dashboard's or CLI's "resend") applies it, and its record is released. A signed event that is
not what its type promises (a field missing or mistyped) is recorded as rejected, with its
reason, and answered 2xx: Stripe would retry a 5xx for days and it would never get better.
The answer's ``action`` says what the command did, from its result, never what it might do.

This module is the translation: what Stripe's objects mean (status strings, line shapes) is
decided here and nowhere in the domain. ``translate`` is pure: it reads one event and says
which command to run; ``handle_stripe_event`` runs it.

The user is found in ``metadata.user_id`` (set on the subscription by our Checkout Session,
which Stripe copies to its invoices), the session's ``client_reference_id``, or, for objects
that carry neither (credit notes, charges), the user the object's customer is linked to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.application import BillingState, PinkseaApplication, StripeEventAlreadyApplied
from domain.commands.invoices import BillingResult
from domain.errors import DomainError
from domain.invoices import InvoiceLine, MoneyReturned
from domain.units import MC_PER_CREDIT
from domain.webhooks import CustomerNotLinked, StripeEvent

HANDLED = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
        "credit_note.created",
        "credit_note.voided",
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

# Stripe sends at most this many invoice lines in an event (``has_more`` says there are more).
INVOICE_LINES_MAX = 100

Command = Callable[[PinkseaApplication, StripeEvent], Any]


class Malformed(Exception):
    """A signed event whose object lacks a field its type promises, or has it mistyped."""


@dataclass(frozen=True)
class StripeOutcome:
    applied: bool  # False: a repeat delivery, a type we don't handle, rejected or quarantined
    action: str


@dataclass(frozen=True)
class Translation:
    """What one event means: the command to run (None: nothing to do), the user and customer
    it is for, and how to say what the command's result did."""

    action: str
    command: Command | None = None
    user: str = ""
    customer: str = ""
    describe: Callable[[Any], str] | None = None


def handle_stripe_event(
    app: PinkseaApplication,
    event: Mapping[str, Any],
    plan_for_price: Mapping[str, str],
    customer_user: Mapping[str, str] | None = None,
) -> StripeOutcome:
    """Apply one verified Stripe event (blocking: run it in a worker thread).
    ``customer_user``: users by their linked customer, for objects without a user in them."""
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise Malformed("the event has no id")
    kind = event.get("type")
    stripe_event = StripeEvent(event_id=event_id, type=str(kind), at=datetime.now(UTC))
    try:
        if not isinstance(kind, str):
            raise Malformed("the event has no type")
        if kind not in HANDLED:
            return StripeOutcome(False, f"ignored: {kind} is not handled")
        at = _ts(_field(event, "created", int))
        stripe_event = StripeEvent(event_id=event_id, type=kind, at=at)
        if app.stripe_event_seen(event_id):
            return StripeOutcome(False, "duplicate: already applied")
        obj = _field(_field(event, "data", dict), "object", dict)
        try:
            translation = translate(kind, obj, plan_for_price, at, customer_user or {})
        except (AttributeError, TypeError, KeyError, ValueError) as e:
            # A shape the explicit checks did not foresee (a nested field of another type):
            # translate is pure, so this is the object's fault; recorded for the admins' view.
            raise Malformed(f"the {kind} object has an unexpected shape ({e!r})") from None
    except Malformed as e:
        return _reject(app, stripe_event, str(e))
    try:
        return _run(app, stripe_event, translation)
    except StripeEventAlreadyApplied:
        return StripeOutcome(False, "duplicate: applied concurrently")


def _reject(app: PinkseaApplication, stripe_event: StripeEvent, reason: str) -> StripeOutcome:
    if app.stripe_event_seen(stripe_event.event_id):
        return StripeOutcome(False, "duplicate: already applied")
    try:
        app.reject_stripe_event(stripe_event, reason)
    except StripeEventAlreadyApplied:
        return StripeOutcome(False, "duplicate: applied concurrently")
    return StripeOutcome(False, f"rejected: {reason}")


def reject_unreadable(app: PinkseaApplication, digest: str, reason: str) -> StripeOutcome:
    """A signed body with no event id (not JSON, not an object): recorded under its digest."""
    stripe_event = StripeEvent(event_id=f"unreadable:{digest}", type="", at=datetime.now(UTC))
    return _reject(app, stripe_event, reason)


def _run(
    app: PinkseaApplication, stripe_event: StripeEvent, translation: Translation
) -> StripeOutcome:
    if translation.command is None:
        app.record_stripe_event(stripe_event)
        return StripeOutcome(True, translation.action)
    try:
        result = translation.command(app, stripe_event)
    except CustomerNotLinked as e:
        held = app.quarantine_stripe_event(
            stripe_event,
            user_id=translation.user,
            customer_id=translation.customer,
            reason=e.detail,
        )
        still = "" if held.changed else "still "
        return StripeOutcome(False, f"{still}quarantined for an operator: {e.detail}")
    except DomainError as e:
        # Recorded as handled: retrying a delivery the ledger refuses would not help.
        app.record_stripe_event(stripe_event)
        return StripeOutcome(True, f"refused: {e.detail}")
    if translation.describe is not None:
        return StripeOutcome(True, translation.describe(result))
    if not result.changed:
        return StripeOutcome(True, f"{translation.action}: nothing changed (applied before)")
    return StripeOutcome(True, translation.action)


def translate(
    kind: str,
    obj: Mapping[str, Any],
    plan_for_price: Mapping[str, str],
    at: datetime,
    customer_user: Mapping[str, str] | None = None,
) -> Translation:
    """The command a handled event of type ``kind`` on Stripe object ``obj`` means. Raises
    Malformed when the object lacks what its type promises."""
    customer = _customer(obj)
    user = _user(obj) or (customer_user or {}).get(customer or "")
    if user is None:
        return Translation("ignored: no user_id in the object's metadata")
    if kind == "checkout.session.completed":
        if not customer:
            return Translation("ignored: the session has no customer")
        return Translation(
            "customer linked",
            lambda app, e: app.link_stripe_customer(user, customer, at, stripe_event=e),
            user,
            customer,
        )
    if customer is None:
        raise Malformed(f"the {kind.split('.')[0]} has no customer")
    if kind.startswith("customer.subscription."):
        return _subscription(kind, user, customer, obj, plan_for_price, at)
    if kind == "invoice.paid":
        return _invoice_paid(user, customer, obj, plan_for_price, at)
    if kind == "invoice.payment_failed":
        invoice_id = _field(obj, "id", str)
        return Translation(
            "payment failed: past due",
            lambda app, e: app.record_payment_failed(
                user, invoice_id=invoice_id, at=at, stripe_event=e, customer_id=customer
            ),
            user,
            customer,
        )
    if kind == "credit_note.created":
        return _credit_note(user, customer, obj, at)
    if kind == "credit_note.voided":
        note_id, invoice_id = _field(obj, "id", str), _expandable_id(obj, "invoice")
        return Translation(
            f"credit note {note_id} of invoice {invoice_id} voided",
            lambda app, e: app.void_credit_note(
                user,
                invoice_id=invoice_id,
                note_id=note_id,
                at=at,
                stripe_event=e,
                customer_id=customer,
            ),
            user,
            customer,
        )
    if kind == "charge.refunded":
        return _charge_refunded(user, customer, obj, at)
    return Translation("ignored")


def _subscription(
    kind: str,
    user: str,
    customer: str,
    obj: Mapping[str, Any],
    plan_for_price: Mapping[str, str],
    at: datetime,
) -> Translation:
    items = _field(_field(obj, "items", dict), "data", list)
    if not items or not isinstance(items[0], dict):
        raise Malformed("the subscription has no items")
    item = items[0]
    plan = plan_for_price.get(_price_id(item) or "")
    if plan is None:
        return Translation(f"ignored: price {_price_id(item)} is not one of our plans")
    start = item.get("current_period_start", obj.get("current_period_start"))
    end = item.get("current_period_end", obj.get("current_period_end"))
    if not isinstance(start, int) or not isinstance(end, int):
        raise Malformed("the subscription has no current period")
    status = "canceled" if kind.endswith(".deleted") else str(obj.get("status"))
    state = BILLING_STATES.get(status, BillingState.INACTIVE)
    external_id = _field(obj, "id", str)
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
            customer_id=customer,
        ),
        user,
        customer,
    )


def _invoice_paid(
    user: str,
    customer: str,
    invoice: Mapping[str, Any],
    plan_for_price: Mapping[str, str],
    at: datetime,
) -> Translation:
    """Every line of our plans, by its own price, amount, period and proration flag."""
    invoice_id = _field(invoice, "id", str)
    lines = invoice_lines(invoice, plan_for_price)
    if not lines:
        return Translation(f"ignored: invoice {invoice_id} has no line of our plans")
    external_id = _subscription_id(invoice)

    def describe(result: BillingResult) -> str:
        return f"invoice {invoice_id}: " + _moved(result)

    return Translation(
        f"invoice {invoice_id} credited",
        lambda app, e: app.credit_invoice(
            user,
            invoice_id=invoice_id,
            customer_id=customer,
            lines=lines,
            external_id=external_id,
            at=at,
            stripe_event=e,
        ),
        user,
        customer,
        describe,
    )


def invoice_lines(
    invoice: Mapping[str, Any], plan_for_price: Mapping[str, str]
) -> list[InvoiceLine]:
    """The invoice's lines of our plans (a line of another price moves no credit)."""
    holder = _field(invoice, "lines", dict)
    if holder.get("has_more"):
        raise Malformed("the invoice has more lines than the event carries")
    data = _field(holder, "data", list)
    if len(data) > INVOICE_LINES_MAX:
        raise Malformed(f"the invoice has over {INVOICE_LINES_MAX} lines")
    lines: list[InvoiceLine] = []
    for n, line in enumerate(data):  # bounded above
        if not isinstance(line, dict):
            raise Malformed(f"invoice line {n} is not an object")
        plan = plan_for_price.get(_price_id(line) or "")
        if plan is None:
            continue
        period = _field(line, "period", dict)
        start, end = _field(period, "start", int), _field(period, "end", int)
        if end <= start:
            raise Malformed(f"invoice line {n} of plan {plan} has an empty period")
        discounts = line.get("discount_amounts") or []
        if not isinstance(discounts, list) or not all(
            isinstance(d, dict) and isinstance(d.get("amount"), int) for d in discounts
        ):
            raise Malformed(f"invoice line {n} has malformed discount_amounts")
        amount = _field(line, "amount", int) - sum(d["amount"] for d in discounts)
        lines.append(
            InvoiceLine(
                plan=plan,
                amount_cents=amount,
                proration=_proration(line),
                period_start=_ts(start),
                period_end=_ts(end),
            )
        )
    return lines


def _credit_note(user: str, customer: str, note: Mapping[str, Any], at: datetime) -> Translation:
    """Money of an invoice given back: refunded (``refunds``), to the customer balance or out
    of band (the rest of ``total``)."""
    note_id, invoice_id = _field(note, "id", str), _expandable_id(note, "invoice")
    total = _field(note, "total", int)
    refunds = note.get("refunds") or []
    if not isinstance(refunds, list) or not all(
        isinstance(r, dict) and isinstance(r.get("amount_refunded"), int) for r in refunds
    ):
        raise Malformed("the credit note's refunds are malformed")
    refund_cents = sum(r["amount_refunded"] for r in refunds)
    if total < 0 or refund_cents > total:
        raise Malformed(f"credit note {note_id} refunds more than its total")
    if note.get("status") == "void":
        return Translation(f"ignored: credit note {note_id} is void")
    returned = MoneyReturned(kept_cents=total - refund_cents, refund_cents=refund_cents)
    return _return(user, customer, invoice_id, note_id, False, returned, at)


def _charge_refunded(
    user: str, customer: str, charge: Mapping[str, Any], at: datetime
) -> Translation:
    charge_id = _field(charge, "id", str)
    if not charge.get("invoice"):
        # Since API version 2025-03-31 a charge names no invoice: refund an invoice through a
        # credit note, which names it (README, "Billing policy").
        return Translation(f"ignored: charge {charge_id} names no invoice")
    invoice_id = _expandable_id(charge, "invoice")
    refunded = _field(charge, "amount_refunded", int)
    if refunded < 0:
        raise Malformed(f"charge {charge_id} has a negative amount refunded")
    returned = MoneyReturned(kept_cents=0, refund_cents=refunded)
    return _return(user, customer, invoice_id, charge_id, True, returned, at)


def _return(
    user: str,
    customer: str,
    invoice_id: str,
    source_id: str,
    by_charge: bool,
    returned: MoneyReturned,
    at: datetime,
) -> Translation:
    def describe(result: BillingResult) -> str:
        return f"money of invoice {invoice_id} given back ({source_id}): " + _moved(result)

    return Translation(
        f"money of invoice {invoice_id} given back",
        lambda app, e: app.return_invoice_money(
            user,
            invoice_id=invoice_id,
            customer_id=customer,
            source_id=source_id,
            by_charge=by_charge,
            returned=returned,
            at=at,
            stripe_event=e,
        ),
        user,
        customer,
        describe,
    )


def _moved(result: BillingResult) -> str:
    """What a billing command did, in words: the numbers of its result."""
    if not result.changed:
        return "nothing changed (applied before)"
    parts = []
    if result.granted_mc:
        parts.append(f"granted {_credits(result.granted_mc)} credits")
    if result.taken_back_mc:
        parts.append(f"took back {_credits(result.taken_back_mc)} credits")
    if not parts:
        parts.append("no credit moved")
    if result.owed_mc:
        parts.append(
            f"{_credits(result.owed_mc)} credits owed (spent before Stripe gave money back)"
        )
    return ", ".join(parts)


def _credits(mc: int) -> str:
    whole, part = divmod(mc, MC_PER_CREDIT)
    return f"{whole}.{part:03d}"


def _field(obj: Mapping[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Malformed(f"{name} is missing or not {'an' if kind is int else 'a'} {kind.__name__}")
    return value


def _ts(unix: int) -> datetime:
    try:
        return datetime.fromtimestamp(unix, UTC)
    except (OverflowError, OSError, ValueError):
        raise Malformed(f"timestamp {unix} is out of range") from None


def _user(obj: Mapping[str, Any]) -> str | None:
    for holder in (
        obj,
        obj.get("subscription_details") or {},
        (obj.get("parent") or {}).get("subscription_details") or {},
    ):
        if not isinstance(holder, dict):
            continue
        user = (holder.get("metadata") or {}).get("user_id")
        if user:
            return str(user)
    ref = obj.get("client_reference_id")
    return str(ref) if ref else None


def _customer(obj: Mapping[str, Any]) -> str | None:
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None


def _expandable_id(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise Malformed(f"{name} is missing")
    return value


def _subscription_id(invoice: Mapping[str, Any]) -> str | None:
    sub = invoice.get("subscription") or (
        ((invoice.get("parent") or {}).get("subscription_details") or {}).get("subscription")
    )
    if isinstance(sub, dict):
        sub = sub.get("id")
    return sub if isinstance(sub, str) else None


def _proration(line: Mapping[str, Any]) -> bool:
    """The line's proration flag: on the line (API versions before 2025-03-31) or on its
    parent's details (since)."""
    if isinstance(line.get("proration"), bool):
        return bool(line["proration"])
    parent = line.get("parent") or {}
    for details in ("subscription_item_details", "invoice_item_details"):
        flag = (parent.get(details) or {}).get("proration")
        if isinstance(flag, bool):
            return flag
    return False


def _price_id(item: Mapping[str, Any]) -> str | None:
    price = item.get("price") or ((item.get("pricing") or {}).get("price_details") or {}).get(
        "price"
    )
    if isinstance(price, dict):
        price = price.get("id")
    return price if isinstance(price, str) else None
