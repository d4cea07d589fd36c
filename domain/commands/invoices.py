"""The commands that turn an invoice's money into credit and back (README, "Billing policy":
credits follow money): a paid invoice's lines grant their worth, money given back takes the
same share back from the subscription lots, what was spent already is owed, and a voided note
of an open invoice counts no more. ``InvoiceMoney`` (domain/invoices.py) decides each amount;
these commands move it on the account and record it on the subscription, in one save with the
Stripe event's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from domain import ids
from domain.commands.results import CommandResult, Result
from domain.commands.store import CommandStore, command
from domain.commands.subscriptions import require_customer
from domain.credits import NEVER, CreditAccount, LotSource
from domain.invoices import InvoiceLine, MoneyReturned, line_credits_mc, period_line
from domain.subscription import SubscriptionStatus
from domain.webhooks import StripeEvent


@dataclass(frozen=True)
class BillingResult(Result):
    """What a Stripe invoice or a return of its money moved, for the webhook's answer."""

    changed: bool  # False: this invoice, or this return, was applied before
    granted_mc: int = 0
    taken_back_mc: int = 0
    owed_mc: int = 0  # after it: credit given back by Stripe that was spent already


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


class InvoiceCommands(CommandStore):
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
