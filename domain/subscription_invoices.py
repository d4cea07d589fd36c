"""The money of a subscription's invoices: what a paid invoice's lines grant, what money given
back takes back, and the credit Stripe gave back that could not be taken (owed).

``Subscription`` (domain/subscription.py) binds each public function as its method of the same
name (hence the first parameter, ``self``). The arithmetic of one invoice is ``InvoiceMoney``'s
(domain/invoices.py); the commands that move the credit are domain/commands/invoices.py. Each
pair is a question and its record: ``credit_invoice`` says what to move, the caller moves it on
the account, and ``record_invoice_credited`` records what moved, keeping the conservation of
granted, taken back and owed credit (``_owed_after``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from domain import subscription_events as events
from domain.errors import InvalidTransition
from domain.invoices import (
    InvoiceLine,
    InvoiceMoney,
    MoneyReturned,
    lines_credits_mc,
    lines_money_cents,
)
from domain.units import require_aware

if TYPE_CHECKING:
    from domain.subscription import Subscription


def invoice_money(self: Subscription, invoice_id: str) -> InvoiceMoney:
    """The account of one invoice (a fresh, empty one for an invoice not seen yet)."""
    return (self.billed or {}).get(invoice_id) or InvoiceMoney()


def credit_invoice(self: Subscription, *, invoice_id: str, lines: list[InvoiceLine]) -> int | None:
    """The credit (mc, signed) a paid invoice's lines move now (``InvoiceMoney``); None
    when it was credited before. The caller moves it and records it with
    ``record_invoice_credited``."""
    assert invoice_id, "an invoice needs its id"
    return self.invoice_money(invoice_id).paid_delta_mc(lines)


def record_invoice_credited(
    self: Subscription,
    *,
    invoice_id: str,
    lines: list[InvoiceLine],
    delta_mc: int,
    granted_mc: int,
    taken_back_mc: int,
    at: datetime,
) -> None:
    """Record what ``credit_invoice`` said to move and what moved on the account."""
    require_aware(at)
    self._invoice_credited(
        invoice_id=invoice_id,
        lines=lines,
        money_cents=lines_money_cents(lines),
        credits_mc=lines_credits_mc(lines),
        delta_mc=delta_mc,
        granted_mc=granted_mc,
        taken_back_mc=taken_back_mc,
        owed_mc=_owed_after(self, delta_mc, granted_mc, taken_back_mc),
        timestamp=at,
    )
    assert self.invoice_money(invoice_id).paid


def return_invoice_money(
    self: Subscription, *, invoice_id: str, source_id: str, by_charge: bool, returned: MoneyReturned
) -> int | None:
    """The credit (mc, <= 0) that money given back of an invoice takes back; None when it
    was taken before (``InvoiceMoney.returned_delta_mc``)."""
    assert invoice_id, "an invoice needs its id"
    money = self.invoice_money(invoice_id)
    return money.returned_delta_mc(source_id, by_charge=by_charge, returned=returned)


def record_invoice_money_returned(
    self: Subscription,
    *,
    invoice_id: str,
    source_id: str,
    by_charge: bool,
    returned: MoneyReturned,
    delta_mc: int,
    taken_back_mc: int,
    at: datetime,
) -> None:
    """Record what ``return_invoice_money`` said to take and what was taken."""
    require_aware(at)
    self._invoice_money_returned(
        invoice_id=invoice_id,
        source_id=source_id,
        by_charge=by_charge,
        returned=returned,
        delta_mc=delta_mc,
        taken_back_mc=taken_back_mc,
        owed_mc=_owed_after(self, delta_mc, 0, taken_back_mc),
        timestamp=at,
    )


def void_credit_note(self: Subscription, *, invoice_id: str, note_id: str, at: datetime) -> bool:
    """Forget what a credit note of an unpaid invoice would give back. False: voided
    before. InvalidTransition for a paid invoice's (Stripe voids those of open ones only)."""
    assert invoice_id and note_id
    require_aware(at)
    money = self.invoice_money(invoice_id)
    if money.notes.get(note_id) == events.VOIDED_NOTE:
        return False
    if money.paid:
        raise InvalidTransition(
            f"invoice {invoice_id} is paid: Stripe voids credit notes of open invoices only"
        )
    self._credit_note_voided(invoice_id=invoice_id, note_id=note_id, timestamp=at)
    assert self.invoice_money(invoice_id).notes[note_id] == events.VOIDED_NOTE
    return True


def owed_to_net(self: Subscription, delta_mc: int) -> int:
    """How much of a grant of ``delta_mc`` the owed balance absorbs."""
    return min(max(delta_mc, 0), self.credit_owed_mc)


def _owed_after(self: Subscription, delta_mc: int, granted_mc: int, taken_back_mc: int) -> int:
    # Conservation: granted - taken - owed moves by exactly the delta.
    owed_mc = self.credit_owed_mc + granted_mc - taken_back_mc - delta_mc
    assert owed_mc >= 0, f"owed {owed_mc} mc after moving {delta_mc} mc"
    return owed_mc
