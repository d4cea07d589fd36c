"""CreditAccount: one per user, the ledger of their credits in integer millicredits.

Credits arrive as lots (domain/lots.py: the value type, spend order, arithmetic); jobs reserve
credits with two-phase holds (domain/holds.py: reserve, then settle the measured amount and
release the rest, or release all); unspent credit expires with an explicit event. Every
movement records the lots it touched, so a release or a refund returns credit to the lots it
came from. Commands validate and then trigger one event; the events and their effects, which
only mutate because they run again on every replay, are in domain/credit_events.py. What needs
the account's lots and holds together (the draw that refuses, a new lot, the invariants across
both) is domain/account_lots.py; an operator's adjustments and a lot's revocation are
domain/credit_adjustments.py, bound here as methods. Every name this module had before those
splits is still importable from it.

Invariants, asserted after every event that moves credit on the lots and the hold it touched
(a full scan per event would make a replay quadratic in the account's lots and holds;
``assert_invariants`` is the full scan, for tests and audits):
- every lot: amount + refunded = remaining + held + consumed + expired + debited, all >= 0;
- a hold holds what it allocated, resolves once, charges at most its amount, refunds once;
- available (sum of spendable remainders) is never negative;
- a deactivated account places no new hold (what is held still resolves, grants still land).
User mistakes stay DomainErrors (domain/errors.py); an AssertionError is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import account_lots, credit_adjustments, ids
from domain import credit_events as events
from domain.errors import AccountDeactivated, IdempotencyConflict, InvalidParameters, UnknownHold
from domain.holds import Hold, HoldAsDict, HoldStatus
from domain.lots import (
    NEVER,
    PROMOTIONAL_SOURCES,
    Lot,
    LotAmount,
    LotAsDict,
    LotSource,
    NewLot,
    ReleasedPart,
    SettledPart,
    available_mc,
    due_for_expiry,
    spendable,
)
from domain.units import require_aware

__all__ = [
    "NEVER",
    "PROMOTIONAL_SOURCES",
    "REFUND_LOT_VALIDITY",
    "CreditAccount",
    "Hold",
    "HoldAsDict",
    "HoldStatus",
    "Lot",
    "LotAmount",
    "LotAsDict",
    "LotSource",
    "NewLot",
    "ReleasedPart",
    "SettledPart",
]

# A refund whose original lot has expired is given back as a new lot valid this long.
REFUND_LOT_VALIDITY = timedelta(days=30)


class CreditAccount(Aggregate):
    TOPIC = "pinksea:CreditAccount"

    # The events, bound here: the library makes each the account's own event class.
    # (For mypy, aliases of the event types; an annotation at run time would make the
    # library turn the aggregate into a dataclass.)
    if TYPE_CHECKING:
        Created: TypeAlias = events.Created
        Opened: TypeAlias = events.Opened
        CreditsGranted: TypeAlias = events.CreditsGranted
        CreditsReserved: TypeAlias = events.CreditsReserved
        HoldSettled: TypeAlias = events.HoldSettled
        HoldReleased: TypeAlias = events.HoldReleased
        LotExpired: TypeAlias = events.LotExpired
        CreditsAdjusted: TypeAlias = events.CreditsAdjusted
        LowBalanceReached: TypeAlias = events.LowBalanceReached
        LowBalanceCleared: TypeAlias = events.LowBalanceCleared
        CreditsRefunded: TypeAlias = events.CreditsRefunded
        Deactivated: TypeAlias = events.Deactivated
        Reactivated: TypeAlias = events.Reactivated
    else:
        Created = events.Created
        Opened = events.Opened
        CreditsGranted = events.CreditsGranted
        CreditsReserved = events.CreditsReserved
        HoldSettled = events.HoldSettled
        HoldReleased = events.HoldReleased
        LotExpired = events.LotExpired
        CreditsAdjusted = events.CreditsAdjusted
        LowBalanceReached = events.LowBalanceReached
        LowBalanceCleared = events.LowBalanceCleared
        CreditsRefunded = events.CreditsRefunded
        Deactivated = events.Deactivated
        Reactivated = events.Reactivated

    # The default of accounts whose snapshot predates the attribute.
    deactivated = False

    @staticmethod
    def create_id(user_id: str) -> UUID:
        return ids.account_id(user_id)

    @event(Opened)
    def __init__(self, user_id: str, timestamp: datetime) -> None:
        self.user_id = user_id
        self.lots: dict[str, Lot] = {}
        self.holds: dict[str, Hold] = {}
        self.adjustments: dict[str, int] = {}
        self.low_balance = False
        self.low_balance_threshold_mc = 0
        self.deactivated = False

    # ----------------------------------------------------------------------------- queries

    def available_mc(self, at: datetime) -> int:
        return available_mc(self.lots.values(), at)

    @property
    def held_mc(self) -> int:
        return sum(h.amount_mc for h in self.holds.values() if h.is_open)

    @property
    def open_holds(self) -> list[Hold]:
        return [h for h in self.holds.values() if h.is_open]

    def spendable_lots(self, at: datetime) -> list[Lot]:
        return spendable(self.lots.values(), at)

    def lots_due_for_expiry(self, at: datetime) -> list[Lot]:
        return due_for_expiry(self.lots.values(), at)

    def assert_invariants(self) -> None:
        """Every invariant over the whole account (domain/account_lots.py: O(lots + holds))."""
        account_lots.assert_account(self.lots, self.holds)

    # ---------------------------------------------------------------------------- commands

    def grant(
        self,
        *,
        lot_id: str,
        source: LotSource,
        amount_mc: int,
        valid_from: datetime,
        valid_until: datetime | None,
        reference: str,
        actor: str,
        reason: str,
        at: datetime,
    ) -> bool:
        """Add a lot. Returns False when this lot was granted before (idempotent)."""
        assert lot_id, "a lot needs an id"
        require_aware(at)
        require_aware(valid_from, "valid_from")
        if valid_until is not None:
            require_aware(valid_until, "valid_until")
        existing = self.lots.get(lot_id)
        if existing is not None:
            if existing.amount_mc != amount_mc or existing.source != source.value:
                raise IdempotencyConflict(f"lot {lot_id} was granted with different terms")
            return False
        if amount_mc <= 0:
            raise InvalidParameters("a grant must be a positive amount of millicredits")
        if valid_until is not None and valid_until <= valid_from:
            raise InvalidParameters("valid_until must be after valid_from")
        self._granted(
            lot_id=lot_id,
            source=source.value,
            amount_mc=amount_mc,
            valid_from=valid_from,
            valid_until=valid_until,
            reference=reference,
            actor=actor,
            reason=reason,
            timestamp=at,
        )
        assert self.lots[lot_id].remaining_mc == amount_mc
        return True

    def reserve(self, *, hold_id: str, job_id: str, amount_mc: int, at: datetime) -> bool:
        """Place a hold. Returns False when this hold exists already (idempotent)."""
        assert hold_id and job_id, "a hold needs its id and its job's"
        require_aware(at)
        existing = self.holds.get(hold_id)
        if existing is not None:
            if existing.amount_mc != amount_mc:
                raise IdempotencyConflict(f"hold {hold_id} exists with a different amount")
            return False
        if self.deactivated:
            raise AccountDeactivated("this account is deactivated; it can run no new jobs")
        if amount_mc <= 0:
            raise InvalidParameters("a hold must be a positive amount of millicredits")
        before_mc = self.available_mc(at)
        self._reserved(
            hold_id=hold_id,
            job_id=job_id,
            amount_mc=amount_mc,
            allocations=self._draw(amount_mc, at),
            timestamp=at,
        )
        assert self.available_mc(at) == before_mc - amount_mc >= 0
        return True

    def settle(
        self,
        *,
        hold_id: str,
        charged_mc: int,
        gpu_ms: int,
        rate_mc_per_ms: int,
        at: datetime,
        tier: str = "",
        cuda_ms: int | None = None,
    ) -> bool:
        """Charge the measured amount and release the rest. False if already settled alike."""
        require_aware(at)
        hold = self._hold(hold_id)
        parts = hold.settlement(charged_mc, gpu_ms, rate_mc_per_ms, self.lots)
        if parts is None:
            return False
        self._settled(
            hold_id=hold_id,
            job_id=hold.job_id,
            charged_mc=charged_mc,
            gpu_ms=gpu_ms,
            rate_mc_per_ms=rate_mc_per_ms,
            tier=tier,
            cuda_ms=cuda_ms,
            parts=parts,
            timestamp=at,
        )
        assert hold.status == HoldStatus.SETTLED.value and hold.charged_mc == charged_mc
        return True

    def release(self, *, hold_id: str, reason: str, at: datetime) -> bool:
        """Void a hold entirely. False if it was released before."""
        require_aware(at)
        hold = self._hold(hold_id)
        parts = hold.release_parts(self.lots)
        if parts is None:
            return False
        self._released(
            hold_id=hold_id, job_id=hold.job_id, reason=reason, parts=parts, timestamp=at
        )
        assert hold.status == HoldStatus.RELEASED.value
        return True

    def expire_due(self, at: datetime) -> int:
        """Expire every lot whose validity ended by ``at``. Returns how many lots expired."""
        require_aware(at)
        due = self.lots_due_for_expiry(at)
        for lot in due:  # bounded by the account's lots
            self._lot_expired(lot_id=lot.lot_id, expired_mc=lot.remaining_mc, timestamp=at)
        assert not self.lots_due_for_expiry(at)
        return len(due)

    # Credit moved by an operator's or an invoice's word (domain/credit_adjustments.py).
    adjust = credit_adjustments.adjust
    revoke_lot = credit_adjustments.revoke_lot

    def check_low_balance(self, threshold_mc: int, at: datetime) -> None:
        """Record a crossing of the low-balance threshold, in either direction."""
        assert threshold_mc >= 0, f"low-balance threshold {threshold_mc} mc"
        require_aware(at)
        available = self.available_mc(at)
        if not self.low_balance and available < threshold_mc:
            self._low_balance_reached(
                threshold_mc=threshold_mc, available_mc=available, timestamp=at
            )
        elif self.low_balance and available >= threshold_mc:
            self._low_balance_cleared(
                threshold_mc=threshold_mc, available_mc=available, timestamp=at
            )
        assert self.low_balance == (available < threshold_mc)

    def deactivate(self, *, reason: str, actor: str, at: datetime) -> bool:
        """Stop the account: no new holds. False when it is deactivated already."""
        require_aware(at)
        if self.deactivated:
            return False
        if not reason.strip():
            raise InvalidParameters("a deactivation needs a reason")
        self._deactivated(reason=reason, actor=actor, timestamp=at)
        assert self.deactivated
        return True

    def reactivate(self, *, reason: str, actor: str, at: datetime) -> bool:
        """Let the account place holds again. False when it is active already."""
        require_aware(at)
        if not self.deactivated:
            return False
        if not reason.strip():
            raise InvalidParameters("a reactivation needs a reason")
        self._reactivated(reason=reason, actor=actor, timestamp=at)
        assert not self.deactivated
        return True

    def refund(self, *, hold_id: str, reason: str, actor: str, at: datetime) -> int:
        """Give a settled hold's charge back to the lots it came from. Returns mc refunded
        now (0 when it was refunded before)."""
        require_aware(at)
        hold = self._hold(hold_id)
        split = hold.refund_split(self.lots, at)
        if split is None:
            return 0
        returns, to_new_lot_mc = split
        new_lot: NewLot | None = None
        if to_new_lot_mc:
            new_lot = NewLot(
                lot_id=ids.lot_id("refund", hold_id),
                mc=to_new_lot_mc,
                valid_from=at,
                valid_until=at + REFUND_LOT_VALIDITY,
            )
        self._refunded(
            hold_id=hold_id,
            job_id=hold.job_id,
            amount_mc=hold.charged_mc,
            reason=reason,
            actor=actor,
            returns=returns,
            new_lot=new_lot,
            timestamp=at,
        )
        assert hold.refunded_mc == hold.charged_mc > 0
        return hold.charged_mc

    # ------------------------------------------------------------------------------ helpers

    def _hold(self, hold_id: str) -> Hold:
        try:
            return self.holds[hold_id]
        except KeyError:
            raise UnknownHold(f"no hold {hold_id} on this account") from None

    def _draw(self, amount_mc: int, at: datetime) -> list[LotAmount]:
        return account_lots.draw_available(self.lots, amount_mc, at)

    def _add_lot(self, new_lot: NewLot, source: str, reference: str) -> Lot:
        return account_lots.add_lot(self.lots, new_lot, source, reference)

    def _assert_lot_invariants(self, lot_ids: Iterable[str]) -> None:
        account_lots.assert_lots(self.lots, lot_ids)

    # ------------------------------------------------------------- event bodies (mutate only)
    # Calling one triggers its event; its body, the event's effect, is beside the event in
    # domain/credit_events.py (and runs again on every replay).

    _granted = event(CreditsGranted)(events.granted)
    _reserved = event(CreditsReserved)(events.reserved)
    _settled = event(HoldSettled)(events.settled)
    _released = event(HoldReleased)(events.released)
    _lot_expired = event(LotExpired)(events.lot_expired)
    _adjusted = event(CreditsAdjusted)(events.adjusted)
    _low_balance_reached = event(LowBalanceReached)(events.low_balance_reached)
    _low_balance_cleared = event(LowBalanceCleared)(events.low_balance_cleared)
    _deactivated = event(Deactivated)(events.deactivated)
    _reactivated = event(Reactivated)(events.reactivated)
    _refunded = event(CreditsRefunded)(events.refunded)
