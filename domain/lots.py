"""Lots: the value type credit arrives in, the order it is spent in, and its arithmetic.

A lot's credit is always in exactly one place. The conservation law, asserted after every
movement (``Lot.assert_invariants``):

    amount + refunded = remaining + held + consumed + expired + debited,  no part negative

(``refunded`` is consumed credit given back, which is spendable again). The movements below
are the only ways a lot changes; the account's ``@event`` bodies call them, so they run again
on every replay and must stay pure arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from eventsourcing.persistence import Transcoding
from typing_extensions import TypedDict  # pydantic reads these (event JSON Schemas)

# Sorts after every real expiry date.
NEVER = datetime.max.replace(tzinfo=UTC)


class LotSource(StrEnum):
    SUBSCRIPTION = "subscription"
    TRIAL = "trial"
    TESTER = "tester"
    PURCHASE = "purchase"
    ADMIN = "admin"
    REFUND = "refund"
    CONTRACT = "contract"  # a period of negotiated (enterprise) terms, billed outside Stripe


# Promotional credit is spent before paid credit of the same expiry.
PROMOTIONAL_SOURCES = frozenset(
    {LotSource.TRIAL.value, LotSource.TESTER.value, LotSource.ADMIN.value}
)


# Per-lot parts of an event: plain dicts so events stay plain JSON data. Their names and keys
# are in the stored events and in docs/events/: never rename them.
class LotAmount(TypedDict):
    lot_id: str
    mc: int


class SettledPart(TypedDict):
    lot_id: str
    charged_mc: int
    released_mc: int
    expired_mc: int


class ReleasedPart(TypedDict):
    lot_id: str
    released_mc: int
    expired_mc: int


class NewLot(TypedDict):
    lot_id: str
    mc: int
    valid_from: datetime
    valid_until: datetime | None


@dataclass
class Lot:
    # The fields are the snapshot's shape (LotAsDict): adding one needs a default.
    lot_id: str
    seq: int  # grant order within the account: "oldest first"
    source: str
    amount_mc: int
    valid_from: datetime
    valid_until: datetime | None  # None: never expires
    reference: str
    remaining_mc: int  # spendable: not held, consumed, expired or debited
    held_mc: int = 0
    consumed_mc: int = 0
    expired_mc: int = 0
    debited_mc: int = 0  # taken by negative adjustments
    refunded_mc: int = 0  # consumed credit given back by refunds
    expired: bool = False  # the expiry event has happened

    @classmethod
    def new(cls, new_lot: NewLot, *, seq: int, source: str, reference: str) -> Lot:
        assert new_lot["mc"] > 0, f"lot {new_lot['lot_id']} of {new_lot['mc']} mc"
        assert seq >= 0
        lot = cls(
            lot_id=new_lot["lot_id"],
            seq=seq,
            source=source,
            amount_mc=new_lot["mc"],
            valid_from=new_lot["valid_from"],
            valid_until=new_lot["valid_until"],
            reference=reference,
            remaining_mc=new_lot["mc"],
        )
        lot.assert_invariants()
        return lot

    def __deepcopy__(self, memo: dict[int, object]) -> Lot:
        # Every field is immutable: a shallow copy is a deep copy, and much cheaper. The
        # repository deep-copies cached accounts on every command.
        return replace(self)

    # ------------------------------------------------------------------------- queries

    def spendable_at(self, at: datetime) -> bool:
        return (
            not self.expired
            and self.valid_from <= at
            and (self.valid_until is None or at < self.valid_until)
        )

    def spend_order_key(self) -> tuple[datetime, int, int]:
        """Soonest expiry first (never-expiring last), then promotional before paid, then oldest."""
        until = NEVER if self.valid_until is None else self.valid_until
        promotional_first = 0 if self.source in PROMOTIONAL_SOURCES else 1
        return (until, promotional_first, self.seq)

    def assert_invariants(self) -> None:
        """Conservation of the lot's credit; an AssertionError here is a bug (or a corrupted
        history), never a user's mistake."""
        parts = (
            self.remaining_mc,
            self.held_mc,
            self.consumed_mc,
            self.expired_mc,
            self.debited_mc,
        )
        assert self.amount_mc > 0, f"lot {self.lot_id}: amount {self.amount_mc} mc"
        assert min(*parts, self.refunded_mc) >= 0, f"lot {self.lot_id}: a negative part {self}"
        assert self.amount_mc + self.refunded_mc == sum(parts), f"lot {self.lot_id}: {self}"
        assert self.refunded_mc <= self.consumed_mc, f"lot {self.lot_id}: refunded > consumed"
        assert not self.expired or self.remaining_mc == 0, f"expired lot {self.lot_id} spendable"

    # ----------------------------------------------------------------------- movements
    # Preconditions only: the account asserts the invariants of every lot an event touched
    # once the whole event is applied.

    def reserve(self, mc: int) -> None:
        assert 0 < mc <= self.remaining_mc, f"lot {self.lot_id}: reserve {mc} mc of {self}"
        self.remaining_mc -= mc
        self.held_mc += mc

    def resolve(self, *, charged_mc: int, released_mc: int, expired_mc: int) -> None:
        """The end of a hold on this lot: charged, released back, or (lot expired) expired."""
        assert min(charged_mc, released_mc, expired_mc) >= 0
        assert charged_mc + released_mc + expired_mc <= self.held_mc
        assert released_mc == 0 or not self.expired, f"released into expired lot {self.lot_id}"
        self.held_mc -= charged_mc + released_mc + expired_mc
        self.consumed_mc += charged_mc
        self.remaining_mc += released_mc
        self.expired_mc += expired_mc

    def expire(self, mc: int) -> None:
        assert not self.expired, f"lot {self.lot_id} expires twice"
        assert mc == self.remaining_mc, f"lot {self.lot_id}: expire {mc} of {self.remaining_mc}"
        self.remaining_mc -= mc
        self.expired_mc += mc
        self.expired = True

    def debit(self, mc: int) -> None:
        assert 0 < mc <= self.remaining_mc, f"lot {self.lot_id}: debit {mc} mc of {self}"
        self.remaining_mc -= mc
        self.debited_mc += mc

    def refund(self, mc: int) -> None:
        assert mc > 0 and not self.expired, f"lot {self.lot_id}: refund {mc} mc to {self}"
        assert self.refunded_mc + mc <= self.consumed_mc, f"lot {self.lot_id}: over-refund"
        self.remaining_mc += mc
        self.refunded_mc += mc


# ---------------------------------------------------------------------------- spend order


def available_mc(lots: Iterable[Lot], at: datetime) -> int:
    return sum(lot.remaining_mc for lot in lots if lot.spendable_at(at))


def spendable(lots: Iterable[Lot], at: datetime) -> list[Lot]:
    """The lots credit can be taken from at ``at``, in spend order."""
    candidates = [lot for lot in lots if lot.spendable_at(at) and lot.remaining_mc > 0]
    return sorted(candidates, key=Lot.spend_order_key)


def due_for_expiry(lots: Iterable[Lot], at: datetime) -> list[Lot]:
    """The lots whose validity ended by ``at`` and that have not expired yet."""
    return [
        lot
        for lot in lots
        if not lot.expired and lot.valid_until is not None and lot.valid_until <= at
    ]


def draw(lots: Iterable[Lot], amount_mc: int, at: datetime) -> list[LotAmount]:
    """Split ``amount_mc`` over the spendable lots in spend order. The caller has checked that
    this much is available (that is a user's error: InsufficientCredits)."""
    assert amount_mc > 0, f"draw of {amount_mc} mc"
    parts: list[LotAmount] = []
    left = amount_mc
    for lot in spendable(lots, at):  # bounded by the account's lots
        take = min(left, lot.remaining_mc)
        parts.append(LotAmount(lot_id=lot.lot_id, mc=take))
        left -= take
        if left == 0:
            break
    assert left == 0, f"drew {amount_mc - left} of {amount_mc} mc: availability unchecked"
    assert all(part["mc"] > 0 for part in parts)
    return parts


# ---------------------------------------------------------------------------- snapshots


class LotAsDict(Transcoding):
    type = Lot
    name = "pinksea_lot"  # stored in snapshots: never rename

    def encode(self, obj: Lot) -> dict[str, Any]:
        return dict(obj.__dict__)

    def decode(self, data: dict[str, Any]) -> Lot:
        return Lot(**data)
