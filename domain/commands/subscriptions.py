"""The commands of a subscription's life: sign-up, and what the payment provider says.

They take domain values: a plan slug, a period, a ``BillingState``, an invoice id and the cents
it paid. What a Stripe object means (its status strings, which invoice line is the plan, what a
proration invoice is) is api/billing/'s translation, so that the rules here read as billing
policy (README, "Subscriptions") and a second provider would need no change to them.

A command sent by a Stripe webhook takes the event (``stripe_event=``) and saves its record
with its effect, in every outcome including "nothing to do", so the event takes effect once.
What an invoice's money grants or takes back is domain/commands/invoices.py.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from domain import ids
from domain.commands.results import CommandResult
from domain.commands.store import CommandStore, command
from domain.credits import LotSource
from domain.subscription import Subscription, SubscriptionStatus
from domain.webhooks import CustomerNotLinked, StripeEvent, StripeEventRecord

TRIAL_GRANT_REFERENCE = "trial"


class BillingState(StrEnum):
    """What the payment provider says of a subscription it bills."""

    RUNNING = "running"  # it is billed (paid, in a trial of its own, or retrying a payment)
    INACTIVE = "inactive"  # not yet paid, or paused: nothing starts or ends
    ENDED = "ended"  # it was cancelled for good


def require_customer(sub: Subscription, customer_id: str) -> None:
    """Refuse (for quarantine) a Stripe object whose customer is not the user's own."""
    if not sub.bills_customer(customer_id):
        linked = sub.customer_id or "none"
        raise CustomerNotLinked(
            f"customer {customer_id} is not the one linked to user {sub.user_id} ({linked})"
        )


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
