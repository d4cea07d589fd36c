"""A credit account's lots and holds together, as ``CreditAccount`` keeps them (two dicts by
id): the draw that refuses what is not available, a new lot's place in grant order, and the
invariants across lots and holds.

One lot and a list of lots are domain/lots.py's, one hold domain/holds.py's; these are the
rules that need the account's whole book. The account's commands and the effects of its
events (domain/credit_events.py, through the account) call them; a full scan
(``assert_account``) runs in tests and audits only, as per event it would make a replay
quadratic in the account's lots and holds: an effect asserts the lots it touched
(``assert_lots``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from domain.errors import InsufficientCredits
from domain.holds import Hold
from domain.lots import Lot, LotAmount, NewLot, available_mc, draw


def draw_available(lots: Mapping[str, Lot], amount_mc: int, at: datetime) -> list[LotAmount]:
    """Split ``amount_mc`` over the spendable lots in spend order, or refuse with
    InsufficientCredits (a user's error) when less is available at ``at``."""
    available = available_mc(lots.values(), at)
    if amount_mc > available:
        raise InsufficientCredits(amount_mc, available)
    return draw(lots.values(), amount_mc, at)


def add_lot(lots: dict[str, Lot], new_lot: NewLot, source: str, reference: str) -> Lot:
    """Add a new lot after the ones there (its seq is its grant order)."""
    assert new_lot["lot_id"] not in lots, f"lot {new_lot['lot_id']} exists"
    lot = Lot.new(new_lot, seq=len(lots), source=source, reference=reference)
    lots[lot.lot_id] = lot
    return lot


def assert_lots(lots: Mapping[str, Lot], lot_ids: Iterable[str]) -> None:
    """The invariants of the lots an event touched (only those: see the module's doc)."""
    for lot_id in lot_ids:  # bounded by the event's parts
        lots[lot_id].assert_invariants()


def assert_account(lots: Mapping[str, Lot], holds: Mapping[str, Hold]) -> None:
    """Every invariant over the whole account (O(lots + holds)): every lot and hold, and
    each lot's held credit is what the open holds allocated on it."""
    held_by_lot: dict[str, int] = dict.fromkeys(lots, 0)
    for hold in holds.values():  # bounded by the account's holds
        hold.assert_invariants()
        assert set(hold.allocations) <= set(lots), f"hold {hold.hold_id}: no such lot"
        if hold.is_open:
            for lot_id, mc in hold.allocations.items():
                held_by_lot[lot_id] += mc
    for lot in lots.values():  # bounded by the account's lots
        lot.assert_invariants()
        assert lot.held_mc == held_by_lot[lot.lot_id], f"lot {lot.lot_id}: held != holds"
