"""How each credit event moves each lot, and the statement line it makes.

``ledger_change`` is the lot arithmetic of every CreditAccount event that moves credit: which
lots gain or lose remaining, held, consumed, expired, debited or refunded credit, the lot it
creates, and its statement line (a ``LineKind`` and a description). The ledger projection
applies it in SQL; ``LedgerChange.apply_to`` is the same thing on the domain's own ``Lot``
objects. tests/unit/test_credit_account_stateful.py checks after every command that applying
the changes of an account's events reproduces every lot of the aggregate exactly.

``StatementLine`` is a line of both statements: ``GET /v1/me/ledger`` (the read model's
``LedgerEntry``, a line per event) and ``pinksea ledger statement`` (audit.statement, from the
event store, a line per posting on the user's available and held accounts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from domain.credits import CreditAccount, Lot, LotSource
from domain.units import format_credits


class LineKind(StrEnum):
    """What a statement line records: one kind per credit-moving event type."""

    GRANT = "grant"  # CreditsGranted: a new lot
    RESERVE = "reserve"  # CreditsReserved: a hold placed on lots
    SETTLE = "settle"  # HoldSettled: the measured charge, the rest released
    RELEASE = "release"  # HoldReleased: a hold voided entirely
    EXPIRE = "expire"  # LotExpired: a lot's unspent credit expired
    ADJUST = "adjust"  # CreditsAdjusted: credit added (a new admin lot) or debited by an admin
    REFUND = "refund"  # CreditsRefunded: a settled charge given back


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One line of a user's statement, with the balances after it."""

    event_id: str  # "<aggregate id>:<version>" of the credit event
    position: int  # the event's position in the store
    occurred_at: datetime
    kind: str  # a LineKind
    job_id: str | None
    lot_id: str | None  # the lot the line is about, if one
    amount_mc: int  # the change of the available balance (spendable or not-yet-valid credit)
    held_change_mc: int  # the change of the held balance (reserved by open holds)
    available_after_mc: int
    held_after_mc: int
    description: str  # LedgerChange.description: a sentence for people


@dataclass(frozen=True, slots=True)
class LotMove:
    """Signed changes to one lot's parts; ``closes`` marks the lot's expiry event."""

    lot_id: str
    remaining_mc: int = 0
    held_mc: int = 0
    consumed_mc: int = 0
    expired_mc: int = 0
    debited_mc: int = 0
    refunded_mc: int = 0
    closes: bool = False


@dataclass(frozen=True, slots=True)
class LotOpened:
    """A lot an event creates, with all of it remaining."""

    lot_id: str
    source: str
    amount_mc: int
    valid_from: datetime
    valid_until: datetime | None
    reference: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class LedgerChange:
    """What one credit event does to the user's lots, balance and statement."""

    kind: LineKind
    description: str
    job_id: str | None = None
    moves: tuple[LotMove, ...] = ()
    new_lot: LotOpened | None = None
    lot_id: str | None = None  # the lot a statement line is about, if one

    def total(self, part: str) -> int:
        total: int = sum(getattr(m, part) for m in self.moves)
        return total

    @property
    def new_credit_mc(self) -> int:
        return 0 if self.new_lot is None else self.new_lot.amount_mc

    @property
    def amount_mc(self) -> int:
        """The change of the available balance: the statement line's amount."""
        return self.total("remaining_mc") + self.new_credit_mc

    @property
    def held_change_mc(self) -> int:
        return self.total("held_mc")

    @property
    def granted_mc(self) -> int:
        """New credit from outside: grants and positive adjustments (not refund lots)."""
        lot = self.new_lot
        return 0 if lot is None or lot.source == LotSource.REFUND.value else lot.amount_mc

    @property
    def refunded_mc(self) -> int:
        """Charges given back: to their lots, or as a new refund lot when those expired."""
        return self.total("refunded_mc") + self.new_credit_mc - self.granted_mc

    def apply_to(self, lots: dict[str, Lot]) -> None:
        """Apply the change to ``lots`` (lot id -> lot, in grant order), as the aggregate's
        event bodies do and as the ledger projection does in SQL."""
        if self.new_lot is not None:
            new = self.new_lot
            lots[new.lot_id] = Lot(
                lot_id=new.lot_id,
                seq=len(lots),
                source=new.source,
                amount_mc=new.amount_mc,
                valid_from=new.valid_from,
                valid_until=new.valid_until,
                reference=new.reference,
                remaining_mc=new.amount_mc,
            )
        for m in self.moves:
            lot = lots[m.lot_id]
            lot.remaining_mc += m.remaining_mc
            lot.held_mc += m.held_mc
            lot.consumed_mc += m.consumed_mc
            lot.expired_mc += m.expired_mc
            lot.debited_mc += m.debited_mc
            lot.refunded_mc += m.refunded_mc
            lot.expired = lot.expired or m.closes


def _expired_suffix(moves: tuple[LotMove, ...]) -> str:
    expired = sum(m.expired_mc for m in moves)
    return f", {format_credits(expired)} expired with their lot" if expired else ""


def _opened(
    ev: CreditAccount.CreditsAdjusted | CreditAccount.CreditsRefunded,
    source: LotSource,
    reference: str,
) -> LotOpened | None:
    """The lot an adjustment or a refund creates, if it creates one."""
    if ev.new_lot is None:
        return None
    new = ev.new_lot
    return LotOpened(
        new["lot_id"],
        source.value,
        new["mc"],
        new["valid_from"],
        new["valid_until"],
        reference,
        ev.actor,
        ev.reason,
    )


def ledger_change(ev: object) -> LedgerChange | None:
    """The lot movements and statement line of one CreditAccount event; None for an event
    that moves no credit (Opened, the low-balance flags, deactivation) or is no credit event."""
    match ev:
        case CreditAccount.CreditsGranted():
            return LedgerChange(
                kind=LineKind.GRANT,
                description=f"{format_credits(ev.amount_mc)} credits granted "
                f"({ev.source}): {ev.reason}",
                new_lot=LotOpened(
                    ev.lot_id,
                    ev.source,
                    ev.amount_mc,
                    ev.valid_from,
                    ev.valid_until,
                    ev.reference,
                    ev.actor,
                    ev.reason,
                ),
                lot_id=ev.lot_id,
            )
        case CreditAccount.CreditsReserved():
            return LedgerChange(
                kind=LineKind.RESERVE,
                description=f"{format_credits(ev.amount_mc)} credits held for job {ev.job_id}",
                job_id=ev.job_id,
                moves=tuple(
                    LotMove(a["lot_id"], remaining_mc=-a["mc"], held_mc=a["mc"])
                    for a in ev.allocations
                ),
            )
        case CreditAccount.HoldSettled():
            moves = tuple(
                LotMove(
                    p["lot_id"],
                    remaining_mc=p["released_mc"],
                    held_mc=-(p["charged_mc"] + p["released_mc"] + p["expired_mc"]),
                    consumed_mc=p["charged_mc"],
                    expired_mc=p["expired_mc"],
                )
                for p in ev.parts
            )
            released = sum(m.remaining_mc for m in moves)
            return LedgerChange(
                kind=LineKind.SETTLE,
                description=f"Job {ev.job_id}: {format_credits(ev.charged_mc)} credits charged "
                f"for {ev.gpu_ms} GPU-ms, {format_credits(released)} released"
                + _expired_suffix(moves),
                job_id=ev.job_id,
                moves=moves,
            )
        case CreditAccount.HoldReleased():
            moves = tuple(
                LotMove(
                    p["lot_id"],
                    remaining_mc=p["released_mc"],
                    held_mc=-(p["released_mc"] + p["expired_mc"]),
                    expired_mc=p["expired_mc"],
                )
                for p in ev.parts
            )
            held = -sum(m.held_mc for m in moves)
            return LedgerChange(
                kind=LineKind.RELEASE,
                description=f"Job {ev.job_id}: hold of {format_credits(held)} credits released "
                f"({ev.reason})" + _expired_suffix(moves),
                job_id=ev.job_id,
                moves=moves,
            )
        case CreditAccount.LotExpired():
            return LedgerChange(
                kind=LineKind.EXPIRE,
                description=f"{format_credits(ev.expired_mc)} unspent credits expired",
                moves=(
                    LotMove(
                        ev.lot_id,
                        remaining_mc=-ev.expired_mc,
                        expired_mc=ev.expired_mc,
                        closes=True,
                    ),
                ),
                lot_id=ev.lot_id,
            )
        case CreditAccount.CreditsAdjusted():
            # The reference as the account's _adjusted gives it.
            new_lot = _opened(ev, LotSource.ADMIN, f"adjustment:{ev.adjustment_id}")
            sign = "+" if ev.amount_mc > 0 else ""
            return LedgerChange(
                kind=LineKind.ADJUST,
                description=f"Adjustment of {sign}{format_credits(ev.amount_mc)} credits "
                f"by {ev.actor}: {ev.reason}",
                moves=tuple(
                    LotMove(d["lot_id"], remaining_mc=-d["mc"], debited_mc=d["mc"])
                    for d in ev.debits
                ),
                new_lot=new_lot,
                lot_id=None if new_lot is None else new_lot.lot_id,
            )
        case CreditAccount.CreditsRefunded():
            # The reference as the account's _refunded gives it.
            new_lot = _opened(ev, LotSource.REFUND, f"refund:{ev.hold_id}")
            return LedgerChange(
                kind=LineKind.REFUND,
                description=f"Job {ev.job_id}: {format_credits(ev.amount_mc)} credits "
                f"refunded by {ev.actor}: {ev.reason}",
                job_id=ev.job_id,
                moves=tuple(
                    LotMove(r["lot_id"], remaining_mc=r["mc"], refunded_mc=r["mc"])
                    for r in ev.returns
                ),
                new_lot=new_lot,
                lot_id=None if new_lot is None else new_lot.lot_id,
            )
    return None
