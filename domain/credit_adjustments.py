"""Credit moved by a word from outside a job's hold: an operator's adjustment (a new admin
lot, or a debit drawn in spend order) and a lot's revocation (its invoice was refunded: what
is left of the lot is debited; held or spent credit is not touched).

``CreditAccount`` (domain/credits.py) binds each function as its method of the same name
(hence the first parameter, ``self``). Both record ``CreditsAdjusted`` (domain/credit_events.py)
once per adjustment id: a repeat changes nothing, and says so.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from domain import ids
from domain.errors import IdempotencyConflict, InvalidParameters
from domain.lots import LotAmount, NewLot
from domain.units import require_aware

if TYPE_CHECKING:
    from domain.credits import CreditAccount


def adjust(
    self: CreditAccount,
    *,
    adjustment_id: str,
    amount_mc: int,
    reason: str,
    actor: str,
    at: datetime,
    valid_until: datetime | None = None,
) -> bool:
    """Add (as a new admin lot) or debit credit. False if this adjustment was made before."""
    assert adjustment_id, "an adjustment needs an id"
    require_aware(at)
    previous = self.adjustments.get(adjustment_id)
    if previous is not None:
        if previous != amount_mc:
            raise IdempotencyConflict(f"adjustment {adjustment_id} was made with another amount")
        return False
    if amount_mc == 0:
        raise InvalidParameters("an adjustment must not be zero")
    if not reason.strip():
        raise InvalidParameters("an adjustment needs a reason")
    new_lot: NewLot | None = None
    debits: list[LotAmount] = []
    if amount_mc > 0:
        if valid_until is not None and valid_until <= at:
            raise InvalidParameters("valid_until must be in the future")
        new_lot = NewLot(
            lot_id=ids.lot_id("adjustment", adjustment_id),
            mc=amount_mc,
            valid_from=at,
            valid_until=valid_until,
        )
    else:
        debits = self._draw(-amount_mc, at)
    self._adjusted(
        adjustment_id=adjustment_id,
        amount_mc=amount_mc,
        reason=reason,
        actor=actor,
        new_lot=new_lot,
        debits=debits,
        timestamp=at,
    )
    assert self.adjustments[adjustment_id] == amount_mc
    return True


def revoke_lot(
    self: CreditAccount,
    *,
    adjustment_id: str,
    lot_id: str,
    reason: str,
    actor: str,
    at: datetime,
    amount_mc_max: int | None = None,
) -> int:
    """Debit what is left of one lot (e.g. its invoice was refunded), at most
    ``amount_mc_max``. Returns the mc debited; a repeat debits nothing. Held or spent
    credit of the lot is not touched."""
    assert adjustment_id and lot_id
    assert amount_mc_max is None or amount_mc_max > 0, f"revoke at most {amount_mc_max}"
    require_aware(at)
    if adjustment_id in self.adjustments:
        return 0
    lot = self.lots.get(lot_id)
    if lot is None or lot.remaining_mc == 0:
        return 0
    amount = lot.remaining_mc if amount_mc_max is None else min(lot.remaining_mc, amount_mc_max)
    before_mc = lot.remaining_mc
    self._adjusted(
        adjustment_id=adjustment_id,
        amount_mc=-amount,
        reason=reason,
        actor=actor,
        new_lot=None,
        debits=[LotAmount(lot_id=lot_id, mc=amount)],
        timestamp=at,
    )
    assert lot.remaining_mc == before_mc - amount >= 0
    return amount
