"""The commands of a subscription's life: sign-up, and what the payment provider says.

They take domain values: a plan slug, a period, a ``BillingState``, an invoice id and the cents
it paid. What a Stripe object means (its status strings, which invoice line is the plan, what a
proration invoice is) is api/billing/'s translation, so that the rules here read as billing
policy (README, "Subscriptions") and a second provider would need no change to them.

A command sent by a Stripe webhook takes the event (``stripe_event=``) and saves its record
with its effect, in every outcome including "nothing to do", so the event takes effect once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from domain import ids
from domain.commands.results import CommandResult
from domain.commands.store import CommandStore, command
from domain.credits import LotSource
from domain.errors import InvalidParameters
from domain.plans import get_plan
from domain.subscription import Subscription, SubscriptionStatus
from domain.webhooks import StripeEvent

TRIAL_GRANT_REFERENCE = "trial"


class BillingState(StrEnum):
    """What the payment provider says of a subscription it bills."""

    RUNNING = "running"  # it is billed (paid, in a trial of its own, or retrying a payment)
    INACTIVE = "inactive"  # not yet paid, or paused: nothing starts or ends
    ENDED = "ended"  # it was cancelled for good


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
    ) -> CommandResult:
        """Apply the state of a Stripe subscription object (created/updated/deleted events) in
        one save. Snapshots older than the last one applied are ignored, so deliveries in any
        order converge to the newest state."""
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
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
    def grant_upgrade_credits(
        self,
        user_id: str,
        *,
        invoice_id: str,
        from_plan: str,
        to_plan: str,
        amount_paid_cents: int,
        valid_until: datetime,
        at: datetime,
        stripe_event: StripeEvent | None = None,
    ) -> CommandResult:
        """An upgrade's proration invoice was paid: credits follow the money. The grant is the
        difference in monthly credits times the share of a month's price difference that the
        invoice charged (integer arithmetic, rounded down), valid to the period's end, keyed by
        the invoice id. A downgrade charges nothing and grants nothing: the lower allowance
        starts with the next paid period."""
        old, new = get_plan(from_plan), get_plan(to_plan)
        if old.usd_per_month is None or new.usd_per_month is None:
            raise InvalidParameters("upgrades between negotiated plans are granted by an admin")
        receipt = self.stripe_receipt(stripe_event)
        price_step_cents = int((new.usd_per_month - old.usd_per_month) * 100)
        credit_step_mc = new.credits_per_month_mc - old.credits_per_month_mc
        if price_step_cents <= 0 or credit_step_mc <= 0 or amount_paid_cents <= 0:
            self.save(receipt)
            return CommandResult(False)
        amount_mc = credit_step_mc * min(amount_paid_cents, price_step_cents) // price_step_cents
        account = self.account_or_open(user_id, at)
        changed = account.grant(
            lot_id=ids.lot_id("invoice", invoice_id),
            source=LotSource.SUBSCRIPTION,
            amount_mc=amount_mc,
            valid_from=at,
            valid_until=valid_until,
            reference=invoice_id,
            actor="stripe",
            reason=f"upgrade from {from_plan} to {to_plan}, prorated",
            at=at,
        )
        return self.save_account(account, changed=changed, at=at, receipt=receipt)

    @command
    def revoke_invoice_credits(
        self,
        user_id: str,
        *,
        invoice_id: str,
        reason: str,
        at: datetime,
        stripe_event: StripeEvent | None = None,
    ) -> CommandResult:
        """The invoice's payment was refunded: take back what is left of its credits."""
        receipt = self.stripe_receipt(stripe_event)
        account = self.account(user_id)
        taken = account.revoke_lot(
            adjustment_id=f"revoke:{invoice_id}",
            lot_id=ids.lot_id("invoice", invoice_id),
            reason=reason,
            actor="stripe",
            at=at,
        )
        return self.save_account(account, changed=bool(taken), at=at, receipt=receipt)

    @command
    def link_stripe_customer(
        self,
        user_id: str,
        customer_id: str,
        at: datetime,
        stripe_event: StripeEvent | None = None,
    ) -> CommandResult:
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
        changed = sub.link_customer(customer_id, at)
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
    ) -> CommandResult:
        receipt = self.stripe_receipt(stripe_event)
        sub = self.subscription(user_id)
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
