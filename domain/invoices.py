"""What an invoice's money is worth in credits (README, "Billing policy": credits follow money).

An invoice is what its lines say, never its first line or its ``amount_paid``: each line of one
of our plans is worth that plan's monthly credits times the share of the plan's monthly price
the line charged (its amount net of discounts; a negative line is a credit given back, worth
negative credits), so a proration line is worth exactly the money it moved. The money Stripe
gives back later (a credit note, a refund of the charge) lowers the invoice's worth in the same
proportion. Pure arithmetic on integers: the subscription keeps the state, the command moves
the credit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from typing_extensions import TypedDict  # pydantic reads these (event JSON Schemas)

from domain.plans import get_plan


class InvoiceLine(TypedDict):
    """One invoice line of one of our plans, as stored in ``Subscription.InvoiceCredited``."""

    plan: str
    amount_cents: int  # net of its discounts; negative: a credit for unused time
    proration: bool
    period_start: datetime
    period_end: datetime


class MoneyReturned(TypedDict):
    """What one credit note or one refunded charge gave back of an invoice's money."""

    kept_cents: int  # returned outside a refund: customer balance, out of band
    refund_cents: int  # returned by a refund of the charge (a charge: its amount refunded)


def line_credits_mc(line: InvoiceLine) -> int:
    """The line's worth: plan credits x amount / plan price, rounded toward zero."""
    plan = get_plan(line["plan"])
    assert plan.usd_per_month is not None, f"plan {plan.slug} has no price"
    price_cents = int(plan.usd_per_month * 100)
    assert price_cents > 0, f"plan {plan.slug} is not sold"
    amount = line["amount_cents"]
    worth = abs(amount) * plan.credits_per_month_mc // price_cents
    return worth if amount >= 0 else -worth


def lines_credits_mc(lines: Iterable[InvoiceLine]) -> int:
    return sum(line_credits_mc(line) for line in lines)


def lines_money_cents(lines: Iterable[InvoiceLine]) -> int:
    return sum(line["amount_cents"] for line in lines)


def period_line(lines: Iterable[InvoiceLine]) -> InvoiceLine | None:
    """The line that pays for a period of a plan: not a proration, not a credit; the latest
    such period when there are several. None: a proration-only invoice (an upgrade or a
    downgrade), which moves credit but no period."""
    paying = [ln for ln in lines if not ln["proration"] and ln["amount_cents"] >= 0]
    return max(paying, key=lambda ln: ln["period_end"], default=None)


def returned_cents(notes: Mapping[str, MoneyReturned], charges: Mapping[str, MoneyReturned]) -> int:
    """The money given back of one invoice. A credit note that refunds makes Stripe refund the
    charge too (a ``charge.refunded`` of the same money), so refunds count once: the larger of
    what the charges say was refunded and what the credit notes refunded."""
    kept = sum(n["kept_cents"] for n in notes.values())
    refunded_by_notes = sum(n["refund_cents"] for n in notes.values())
    refunded_by_charges = sum(c["refund_cents"] for c in charges.values())
    assert kept >= 0 and refunded_by_notes >= 0 and refunded_by_charges >= 0
    return kept + max(refunded_by_notes, refunded_by_charges)


def effective_credits_mc(credits_mc: int, money_cents: int, returned: int) -> int:
    """The worth of an invoice after ``returned`` cents of its ``money_cents`` came back: the
    same share of its credits goes (rounded down: the credit kept never exceeds the money
    kept). An invoice that moved no money, or gave money back itself, has nothing to give
    back."""
    assert returned >= 0
    if money_cents <= 0 or credits_mc <= 0:
        return credits_mc
    kept = money_cents - min(returned, money_cents)
    return credits_mc * kept // money_cents


@dataclass
class InvoiceMoney:
    """A subscription's account of one invoice: what it paid (once paid) and what came back,
    and the credit its events have moved so far (``applied_mc``: granted, taken back, or owed).
    Not stored: the subscription rebuilds it from its events."""

    paid: bool = False
    money_cents: int = 0
    credits_mc: int = 0
    notes: dict[str, MoneyReturned] = field(default_factory=dict)
    charges: dict[str, MoneyReturned] = field(default_factory=dict)
    applied_mc: int = 0

    @property
    def effective_mc(self) -> int:
        """What the invoice is worth now (0 until it is paid)."""
        if not self.paid:
            return 0
        returned = returned_cents(self.notes, self.charges)
        return effective_credits_mc(self.credits_mc, self.money_cents, returned)

    def paid_delta_mc(self, lines: list[InvoiceLine]) -> int | None:
        """The credit (mc, signed) paying with ``lines`` moves now: their worth less the money
        given back already (a refund may arrive first) and less what moved before. None: this
        invoice was paid before."""
        if self.paid:
            return None
        paid = replace(
            self,
            paid=True,
            money_cents=lines_money_cents(lines),
            credits_mc=lines_credits_mc(lines),
        )
        return paid.effective_mc - self.applied_mc

    def returned_delta_mc(
        self, source_id: str, *, by_charge: bool, returned: MoneyReturned
    ) -> int | None:
        """The credit (mc, <= 0) that money given back by ``source_id`` (a credit note, or a
        charge's refunds so far) takes back. None: this credit note was applied before, or
        this charge's refund did not grow."""
        assert source_id and min(returned["kept_cents"], returned["refund_cents"]) >= 0
        sources = self.charges if by_charge else self.notes
        before = sources.get(source_id)
        if before is not None and (
            not by_charge or before["refund_cents"] >= returned["refund_cents"]
        ):
            return None
        grown = {**sources, source_id: returned}
        after = replace(self, charges=grown) if by_charge else replace(self, notes=grown)
        delta_mc = after.effective_mc - self.applied_mc
        assert delta_mc <= 0, f"money given back by {source_id} grants {delta_mc} mc"
        return delta_mc
