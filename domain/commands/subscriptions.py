"""The commands of a subscription's life: sign-up, and what the payment provider says.

They take domain values: a plan slug, a period, a ``BillingState``, an invoice id and the cents
it paid. What a Stripe object means (its status strings, which invoice line is the plan, what a
proration invoice is) is api/billing/'s translation, so that the rules here read as billing
policy (README, "Subscriptions") and a second provider would need no change to them.

A command sent by a Stripe webhook takes the event (``stripe_event=``) and saves its record
with its effect, in every outcome including "nothing to do", so the event takes effect once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from domain import ids
from domain.commands.results import CommandResult, Result
from domain.commands.store import CommandStore, command
from domain.credits import NEVER, CreditAccount, LotSource
from domain.invoices import InvoiceLine, MoneyReturned, line_credits_mc, period_line
from domain.subscription import Subscription, SubscriptionStatus
from domain.webhooks import CustomerNotLinked, StripeEvent, StripeEventRecord

TRIAL_GRANT_REFERENCE = "trial"


class BillingState(StrEnum):
    """What the payment provider says of a subscription it bills."""

    RUNNING = "running"  # it is billed (paid, in a trial of its own, or retrying a payment)
    INACTIVE = "inactive"  # not yet paid, or paused: nothing starts or ends
    ENDED = "ended"  # it was cancelled for good


@dataclass(frozen=True)
class BillingResult(Result):
    """What a Stripe invoice or a return of its money moved, for the webhook's answer."""

    changed: bool  # False: this invoice, or this return, was applied before
    granted_mc: int = 0
    taken_back_mc: int = 0
    owed_mc: int = 0  # after it: credit given back by Stripe that was spent already


def require_customer(sub: Subscription, customer_id: str) -> None:
    """Refuse (for quarantine) a Stripe object whose customer is not the user's own."""
    if not sub.bills_customer(customer_id):
        linked = sub.customer_id or "none"
        raise CustomerNotLinked(
            f"customer {customer_id} is not the one linked to user {sub.user_id} ({linked})"
        )


# A take-back touches at most this many lots (bounds the loop; an account's subscription lots
# are one per invoice, and lots older than their period have expired to zero).
TAKE_BACK_LOTS_MAX = 1000


def take_back(
    account: CreditAccount,
    amount_mc: int,
    *,
    tag: str,
    reason: str,
    at: datetime,
    first_lot_id: str | None = None,
) -> int:
    """Debit up to ``amount_mc`` from what is left of the user's subscription lots: the lot
    named first (a refunded invoice's own), then the latest-ending (a downgrade gives back
    the rest of the current period). Returns what was taken; spent or held credit is not."""
    assert amount_mc > 0, f"take back {amount_mc} mc"
    lots = [
        lot
        for lot in account.lots.values()
        if lot.source == LotSource.SUBSCRIPTION.value and lot.remaining_mc > 0
    ]
    lots.sort(
        key=lambda lot: (
            lot.lot_id != first_lot_id,
            -(lot.valid_until or NEVER).timestamp(),
            -lot.seq,
        )
    )
    taken_mc = 0
    for lot in lots[:TAKE_BACK_LOTS_MAX]:
        if taken_mc == amount_mc:
            break
        taken_mc += account.revoke_lot(
            adjustment_id=f"stripe:{tag}:{lot.lot_id}",
            lot_id=lot.lot_id,
            reason=reason,
            actor="stripe",
            at=at,
            amount_mc_max=amount_mc - taken_mc,
        )
    assert 0 <= taken_mc <= amount_mc
    return taken_mc


class SubscriptionCommands(CommandStore):
    @command
    def register_user(self, user_id: str, at: datetime) -> CommandResult:
        """Sign-up: a trial subscription, a credit account and the trial's credits, at once."""
        if self.find(ids.subscription_id(user_id)) is not None:
            return CommandResult(False)
        sub = Subscription.start_trial(user_id, at)
        account = self.account_or_open(user_id, at)
        account.grant(
            lot_id=ids.lot_id("trial", user_id),
            source=LotSource.TRIAL,
            amount_mc=sub.plan.credits_per_month_mc,
            valid_from=sub.period_start,
            valid_until=sub.period_end,
            reference=TRIAL_GRANT_REFERENCE,
            actor="system",
            reason="trial credits on sign-up",
            at=at,
        )
        self.save(sub, account)
        return CommandResult(True)

    @command
    def start_subscription(
        self,
        user_id: str,
        *,
        plan: str,
        external_id: str,
        period_start: datetime,
        period_end: datetime,
        at: datetime,
    ) -> CommandResult:
        sub = self.subscription(user_id)
        changed = sub.start(
            plan=plan,
            external_id=external_id,
            period_start=period_start,
            period_end=period_end,
            at=at,
        )
        self.save(sub)
        return CommandResult(changed)

    @command
    def renew_period(
        self,
        user_id: str,
        *,
        invoice_id: str,
        period_start: datetime,
        period_end: datetime,
        at: datetime,
        start_plan: str | None = None,
        external_id: str | None = None,
        stripe_event: StripeEvent | None = None,
    ) -> CommandResult:
        """A paid invoice: record the period and grant its credits, valid to period end.

        With ``start_plan`` and ``external_id``, a subscription not yet started is started
        first, in the same save: an invoice may arrive before its subscription's own event."""
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
        not_running = (SubscriptionStatus.TRIALING, SubscriptionStatus.ENDED)
        if start_plan and external_id and sub.status in not_running:
            sub.start(
                plan=start_plan,
                external_id=external_id,
                period_start=period_start,
                period_end=period_end,
                at=at,
            )
        credits_mc = sub.renew(
            invoice_id=invoice_id,
            period_start=period_start,
            period_end=period_end,
            at=at,
            plan=start_plan,
        )
        if credits_mc is None:  # this invoice was paid before
            self.save(receipt)
            return CommandResult(False)
        account = self.account_or_open(user_id, at)
        account.grant(
            lot_id=ids.lot_id("invoice", invoice_id),
            source=LotSource.SUBSCRIPTION,
            amount_mc=credits_mc,
            valid_from=period_start,
            valid_until=period_end,
            reference=invoice_id,
            actor="stripe",
            reason=f"{sub.plan_slug} plan period",
            at=at,
        )
        self.watch_balance(account, at, sub.plan)
        self.save(sub, account, receipt)
        return CommandResult(True)

    @command
    def sync_stripe_subscription(
        self,
        user_id: str,
        *,
        external_id: str,
        plan: str,
        state: BillingState,
        period_start: datetime,
        period_end: datetime,
        cancel_at_period_end: bool,
        object_at: datetime,
        at: datetime,
        stripe_event: StripeEvent | None = None,
        customer_id: str | None = None,
    ) -> CommandResult:
        """Apply the state of a Stripe subscription object (created/updated/deleted events) in
        one save. Snapshots older than the last one applied are ignored, so deliveries in any
        order converge to the newest state. With ``customer_id``, it must be the user's."""
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
        if customer_id is not None:
            require_customer(sub, customer_id)
        if sub.is_stale(object_at):
            self.save(receipt)
            return CommandResult(False)
        running = sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
        if state is BillingState.ENDED:
            sub.end(reason="cancelled in Stripe", at=at)
        elif state is BillingState.INACTIVE:
            pass  # nothing is paid yet, nothing starts
        elif not running or sub.external_id != external_id:
            if running:
                sub.end(reason="replaced by a new Stripe subscription", at=at)
            sub.start(
                plan=plan,
                external_id=external_id,
                period_start=period_start,
                period_end=period_end,
                at=at,
            )
        elif plan != sub.plan_slug:
            # Credits for the rest of the period follow the proration invoice.
            sub.change_plan(to_plan=plan, actor="stripe", reason="plan changed in Stripe", at=at)
        if state is not BillingState.ENDED:
            if cancel_at_period_end:
                if sub.cancel_at is None:
                    sub.schedule_cancellation(at)
            elif sub.cancel_at is not None:
                sub.revoke_cancellation(at)
        sub.mark_stripe_synced(object_at, at)
        self.save(sub, receipt)
        return CommandResult(True)

    @command
    def credit_invoice(
        self,
        user_id: str,
        *,
        invoice_id: str,
        customer_id: str,
        lines: list[InvoiceLine],
        external_id: str | None,
        at: datetime,
        stripe_event: StripeEvent | None = None,
    ) -> BillingResult:
        """A paid invoice: its lines' worth in credit (domain/invoices.py) is granted, or, for
        a credit (a downgrade's unused time), taken back. A line paying a period of a plan
        records the period, and starts the subscription if its own event has not arrived
        yet, but only when it charged money: entitlements of a free period come from Stripe's
        subscription status, credits only from money."""
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
        require_customer(sub, customer_id)
        delta_mc = sub.credit_invoice(invoice_id=invoice_id, lines=lines)
        if delta_mc is None:  # credited before
            self.save(receipt)
            return BillingResult(False)
        paying = period_line(lines)
        if paying is not None:
            not_running = (SubscriptionStatus.TRIALING, SubscriptionStatus.ENDED)
            if paying["amount_cents"] > 0 and external_id and sub.status in not_running:
                sub.start(
                    plan=paying["plan"],
                    external_id=external_id,
                    period_start=paying["period_start"],
                    period_end=paying["period_end"],
                    at=at,
                )
            if sub.status not in not_running:
                sub.renew(
                    invoice_id=invoice_id,
                    period_start=paying["period_start"],
                    period_end=paying["period_end"],
                    at=at,
                    plan=paying["plan"],
                    credits_mc=max(line_credits_mc(paying), 0),
                )
        account = self.account_or_open(user_id, at)
        granted_mc = taken_mc = 0
        if delta_mc > 0:
            granted_mc = delta_mc - sub.owed_to_net(delta_mc)
            worth = [ln for ln in lines if ln["amount_cents"] > 0]
            assert worth, "credit from an invoice without a charged line"
        if granted_mc > 0:
            account.grant(
                lot_id=ids.lot_id("invoice", invoice_id),
                source=LotSource.SUBSCRIPTION,
                amount_mc=granted_mc,
                valid_from=min(ln["period_start"] for ln in worth),
                valid_until=max(ln["period_end"] for ln in worth),
                reference=invoice_id,
                actor="stripe",
                reason=f"invoice {invoice_id}: {sub.plan_slug} plan",
                at=at,
            )
        if delta_mc < 0:
            taken_mc = take_back(
                account,
                -delta_mc,
                tag=f"invoice:{invoice_id}",
                reason=f"invoice {invoice_id} credited unused time back",
                at=at,
            )
        sub.record_invoice_credited(
            invoice_id=invoice_id,
            lines=lines,
            delta_mc=delta_mc,
            granted_mc=granted_mc,
            taken_back_mc=taken_mc,
            at=at,
        )
        self.watch_balance(account, at, sub.plan)
        self.save(sub, account, receipt)
        return BillingResult(True, granted_mc, taken_mc, sub.credit_owed_mc)

    @command
    def return_invoice_money(
        self,
        user_id: str,
        *,
        invoice_id: str,
        customer_id: str,
        source_id: str,
        by_charge: bool,
        returned: MoneyReturned,
        at: datetime,
        stripe_event: StripeEvent | None = None,
    ) -> BillingResult:
        """Stripe gave back money of an invoice (a credit note; a refund of its charge): the
        same share of the invoice's credit is taken back from what is left of the user's
        subscription credit, the rest (spent already) owed and netted from the next grant."""
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
        require_customer(sub, customer_id)
        delta_mc = sub.return_invoice_money(
            invoice_id=invoice_id, source_id=source_id, by_charge=by_charge, returned=returned
        )
        if delta_mc is None:
            self.save(receipt)
            return BillingResult(False)
        account = self.account(user_id)
        taken_mc = 0
        if delta_mc < 0:
            taken_mc = take_back(
                account,
                -delta_mc,
                tag=f"{source_id}@{returned['kept_cents']}+{returned['refund_cents']}",
                reason=f"money of invoice {invoice_id} given back ({source_id})",
                at=at,
                first_lot_id=ids.lot_id("invoice", invoice_id),
            )
        sub.record_invoice_money_returned(
            invoice_id=invoice_id,
            source_id=source_id,
            by_charge=by_charge,
            returned=returned,
            delta_mc=delta_mc,
            taken_back_mc=taken_mc,
            at=at,
        )
        self.watch_balance(account, at, sub.plan)
        self.save(sub, account, receipt)
        return BillingResult(True, 0, taken_mc, sub.credit_owed_mc)

    @command
    def quarantine_stripe_event(
        self, stripe_event: StripeEvent, *, user_id: str, customer_id: str, reason: str
    ) -> CommandResult:
        """Hold an event for an operator: recorded with its reason, no effect. Unchanged
        (False) for a redelivery of one held already."""
        before = self.find(stripe_event.record_id)
        if isinstance(before, StripeEventRecord) and before.held:
            return CommandResult(False)
        self.first_delivery(stripe_event)
        held = stripe_event.quarantined(user_id=user_id, customer_id=customer_id, reason=reason)
        self.save(held)
        return CommandResult(True)

    @command
    def reject_stripe_event(self, stripe_event: StripeEvent, reason: str) -> CommandResult:
        """Record a signed event that is not what its type promises, with the reason."""
        self.first_delivery(stripe_event)
        self.save(stripe_event.rejected(reason))
        return CommandResult(True)

    @command
    def link_stripe_customer(
        self,
        user_id: str,
        customer_id: str,
        at: datetime,
        stripe_event: StripeEvent | None = None,
        *,
        actor: str = "",
        reason: str = "",
    ) -> CommandResult:
        """Link the user's Stripe customer: by our Checkout, by Stripe's event, or by an
        operator (``actor`` and ``reason``) whose user's events were quarantined for want of
        it; Stripe's redelivery of those events then applies them."""
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
        if stripe_event is not None and sub.customer_id not in (None, customer_id):
            require_customer(sub, customer_id)  # another customer: held for an operator
        changed = sub.link_customer(customer_id, at, actor=actor, reason=reason)
        self.save(sub, receipt)
        return CommandResult(changed)

    @command
    def record_payment_failed(
        self,
        user_id: str,
        *,
        invoice_id: str,
        at: datetime,
        stripe_event: StripeEvent | None = None,
        customer_id: str | None = None,
    ) -> CommandResult:
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
        if customer_id is not None:
            require_customer(sub, customer_id)
        changed = sub.record_payment_failed(invoice_id=invoice_id, at=at)
        self.save(sub, receipt)
        return CommandResult(changed)

    @command
    def void_credit_note(
        self,
        user_id: str,
        *,
        invoice_id: str,
        note_id: str,
        at: datetime,
        stripe_event: StripeEvent | None = None,
        customer_id: str | None = None,
    ) -> CommandResult:
        """A credit note of an unpaid invoice voided: its payment counts the note no more."""
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
        if customer_id is not None:
            require_customer(sub, customer_id)
        changed = sub.void_credit_note(invoice_id=invoice_id, note_id=note_id, at=at)
        self.save(sub, receipt)
        return CommandResult(changed)

    @command
    def record_stripe_event(self, stripe_event: StripeEvent) -> CommandResult:
        """A Stripe event with no effect of its own (ignored, or refused by the ledger): its
        record alone, so a repeat delivery is known as one."""
        self.save(self.stripe_receipt(stripe_event))
        return CommandResult(True)

    @command
    def schedule_cancellation(self, user_id: str, at: datetime) -> CommandResult:
        sub = self.subscription(user_id)
        changed = sub.schedule_cancellation(at)
        self.save(sub)
        return CommandResult(changed)

    @command
    def revoke_cancellation(self, user_id: str, at: datetime) -> CommandResult:
        sub = self.subscription(user_id)
        changed = sub.revoke_cancellation(at)
        self.save(sub)
        return CommandResult(changed)

    @command
    def end_subscription(self, user_id: str, *, reason: str, at: datetime) -> CommandResult:
        sub = self.subscription(user_id)
        changed = sub.end(reason=reason, at=at)
        self.save(sub)
        return CommandResult(changed)
