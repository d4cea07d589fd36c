"""CreditAccount: one per user, the ledger of their credits in integer millicredits.

Credits arrive as lots; jobs reserve credits with two-phase holds (reserve, then settle the
measured amount and release the rest, or release all); unspent credit expires with an explicit
event. Every movement records the lots it touched, so a release or a refund returns credit to
the lots it came from. Commands validate and then trigger one event; the ``@event`` bodies only
mutate state, because they run again on every replay.

Invariants (checked by tests/unit/test_credit_account_stateful.py after every step):
- every lot: amount + refunded = remaining + held + consumed + expired + debited, all >= 0;
- available (sum of spendable remainders) is never negative;
- a hold resolves once, and charges at most its amount;
- a deactivated account places no new hold (what is held still resolves, grants still land).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Transcoding
from typing_extensions import TypedDict  # pydantic reads these (event JSON Schemas)

from domain import ids
from domain.errors import (
    AccountDeactivated,
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidParameters,
    InvalidTransition,
    SettleExceedsHold,
    UnknownHold,
)
from domain.units import require_aware

# Sorts after every real expiry date.
NEVER = datetime.max.replace(tzinfo=UTC)

# A refund whose original lot has expired is given back as a new lot valid this long.
REFUND_LOT_VALIDITY = timedelta(days=30)


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


class HoldStatus(StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"


# Per-lot parts of an event: plain dicts so events stay plain JSON data.
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

    def __deepcopy__(self, memo: dict[int, object]) -> Lot:
        # Every field is immutable: a shallow copy is a deep copy, and much cheaper. The
        # repository deep-copies cached accounts on every command.
        return replace(self)

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


@dataclass
class Hold:
    hold_id: str
    job_id: str
    amount_mc: int
    allocations: dict[str, int]  # lot_id -> mc held, in spend order
    status: str = HoldStatus.OPEN.value
    charged_mc: int = 0
    charges: dict[str, int] = field(default_factory=dict)  # lot_id -> mc charged
    refunded_mc: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> Hold:
        return replace(self, allocations=dict(self.allocations), charges=dict(self.charges))


class CreditAccount(Aggregate):
    TOPIC = "pinksea:CreditAccount"

    class Created(Aggregate.Created):
        # The library requires an explicit topic on the inherited default; we use Opened.
        TOPIC = "pinksea:CreditAccount.Created"

    class Opened(Aggregate.Created):
        TOPIC = "pinksea:CreditAccount.Opened"
        user_id: str

    class CreditsGranted(Aggregate.Event):
        TOPIC = "pinksea:CreditAccount.CreditsGranted"
        lot_id: str
        source: str
        amount_mc: int
        valid_from: datetime
        valid_until: datetime | None
        reference: str
        actor: str
        reason: str

    class CreditsReserved(Aggregate.Event):
        TOPIC = "pinksea:CreditAccount.CreditsReserved"
        hold_id: str
        job_id: str
        amount_mc: int
        allocations: list[LotAmount]

    class HoldSettled(Aggregate.Event):
        TOPIC = "pinksea:CreditAccount.HoldSettled"
        hold_id: str
        job_id: str
        charged_mc: int
        gpu_ms: int  # billed GPU time
        rate_mc_per_ms: int
        tier: str  # the GPU tier the rate applies to
        cuda_ms: int | None  # CUDA-event time of the run: an audit figure, never billed
        parts: list[SettledPart]

    class HoldReleased(Aggregate.Event):
        TOPIC = "pinksea:CreditAccount.HoldReleased"
        hold_id: str
        job_id: str
        reason: str
        parts: list[ReleasedPart]

    class LotExpired(Aggregate.Event):
        TOPIC = "pinksea:CreditAccount.LotExpired"
        lot_id: str
        expired_mc: int

    class CreditsAdjusted(Aggregate.Event):
        TOPIC = "pinksea:CreditAccount.CreditsAdjusted"
        adjustment_id: str
        amount_mc: int  # positive: credit added as a new admin lot; negative: debited
        reason: str
        actor: str
        new_lot: NewLot | None
        debits: list[LotAmount]

    class LowBalanceReached(Aggregate.Event):
        """Available credit fell below the plan's threshold (once per downward crossing)."""

        TOPIC = "pinksea:CreditAccount.LowBalanceReached"
        threshold_mc: int
        available_mc: int

    class LowBalanceCleared(Aggregate.Event):
        """Available credit is back at or above the threshold: the warning re-arms."""

        TOPIC = "pinksea:CreditAccount.LowBalanceCleared"
        threshold_mc: int
        available_mc: int

    class CreditsRefunded(Aggregate.Event):
        TOPIC = "pinksea:CreditAccount.CreditsRefunded"
        hold_id: str
        job_id: str
        amount_mc: int
        reason: str
        actor: str
        returns: list[LotAmount]  # back to the lots the charge came from
        new_lot: NewLot | None  # the part whose lots had expired

    class Deactivated(Aggregate.Event):
        """An admin stopped the account: no new holds until it is reactivated. Moves no credit."""

        TOPIC = "pinksea:CreditAccount.Deactivated"
        reason: str
        actor: str

    class Reactivated(Aggregate.Event):
        TOPIC = "pinksea:CreditAccount.Reactivated"
        reason: str
        actor: str

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
        return sum(lot.remaining_mc for lot in self.lots.values() if lot.spendable_at(at))

    @property
    def held_mc(self) -> int:
        return sum(h.amount_mc for h in self.holds.values() if h.status == HoldStatus.OPEN.value)

    @property
    def open_holds(self) -> list[Hold]:
        return [h for h in self.holds.values() if h.status == HoldStatus.OPEN.value]

    def spendable_lots(self, at: datetime) -> list[Lot]:
        lots = [lot for lot in self.lots.values() if lot.spendable_at(at) and lot.remaining_mc > 0]
        return sorted(lots, key=Lot.spend_order_key)

    def lots_due_for_expiry(self, at: datetime) -> list[Lot]:
        return [
            lot
            for lot in self.lots.values()
            if not lot.expired and lot.valid_until is not None and lot.valid_until <= at
        ]

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
        return True

    def reserve(self, *, hold_id: str, job_id: str, amount_mc: int, at: datetime) -> bool:
        """Place a hold. Returns False when this hold exists already (idempotent)."""
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
        allocations = self._draw(amount_mc, at)
        self._reserved(
            hold_id=hold_id,
            job_id=job_id,
            amount_mc=amount_mc,
            allocations=allocations,
            timestamp=at,
        )
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
        if hold.status == HoldStatus.SETTLED.value and hold.charged_mc == charged_mc:
            return False
        if hold.status != HoldStatus.OPEN.value:
            raise HoldAlreadyResolved(f"hold {hold_id} is already {hold.status}")
        if charged_mc < 0 or charged_mc != gpu_ms * rate_mc_per_ms:
            raise InvalidParameters("charged_mc must equal gpu_ms x rate and be >= 0")
        if charged_mc > hold.amount_mc:
            raise SettleExceedsHold(
                f"cannot charge {charged_mc} mc on a hold of {hold.amount_mc} mc"
            )
        parts: list[SettledPart] = []
        to_charge = charged_mc
        for lot_id, held in hold.allocations.items():
            charged = min(to_charge, held)
            to_charge -= charged
            back = held - charged
            expired = self.lots[lot_id].expired
            parts.append(
                SettledPart(
                    lot_id=lot_id,
                    charged_mc=charged,
                    released_mc=0 if expired else back,
                    expired_mc=back if expired else 0,
                )
            )
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
        return True

    def release(self, *, hold_id: str, reason: str, at: datetime) -> bool:
        """Void a hold entirely. False if it was released before."""
        require_aware(at)
        hold = self._hold(hold_id)
        if hold.status == HoldStatus.RELEASED.value:
            return False
        if hold.status != HoldStatus.OPEN.value:
            raise HoldAlreadyResolved(f"hold {hold_id} is already {hold.status}")
        parts: list[ReleasedPart] = []
        for lot_id, held in hold.allocations.items():
            expired = self.lots[lot_id].expired
            parts.append(
                ReleasedPart(
                    lot_id=lot_id,
                    released_mc=0 if expired else held,
                    expired_mc=held if expired else 0,
                )
            )
        self._released(
            hold_id=hold_id, job_id=hold.job_id, reason=reason, parts=parts, timestamp=at
        )
        return True

    def expire_due(self, at: datetime) -> int:
        """Expire every lot whose validity ended by ``at``. Returns how many lots expired."""
        require_aware(at)
        due = self.lots_due_for_expiry(at)
        for lot in due:
            self._lot_expired(lot_id=lot.lot_id, expired_mc=lot.remaining_mc, timestamp=at)
        return len(due)

    def adjust(
        self,
        *,
        adjustment_id: str,
        amount_mc: int,
        reason: str,
        actor: str,
        at: datetime,
        valid_until: datetime | None = None,
    ) -> bool:
        """Add (as a new admin lot) or debit credit. False if this adjustment was made before."""
        require_aware(at)
        previous = self.adjustments.get(adjustment_id)
        if previous is not None:
            if previous != amount_mc:
                raise IdempotencyConflict(
                    f"adjustment {adjustment_id} was made with another amount"
                )
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
        return True

    def revoke_lot(
        self, *, adjustment_id: str, lot_id: str, reason: str, actor: str, at: datetime
    ) -> int:
        """Debit what is left of one lot (e.g. its invoice was refunded). Returns the mc
        debited; a repeat debits nothing. Held or spent credit of the lot is not touched."""
        require_aware(at)
        if adjustment_id in self.adjustments:
            return 0
        lot = self.lots.get(lot_id)
        if lot is None or lot.remaining_mc == 0:
            return 0
        amount = lot.remaining_mc
        self._adjusted(
            adjustment_id=adjustment_id,
            amount_mc=-amount,
            reason=reason,
            actor=actor,
            new_lot=None,
            debits=[LotAmount(lot_id=lot_id, mc=amount)],
            timestamp=at,
        )
        return amount

    def check_low_balance(self, threshold_mc: int, at: datetime) -> None:
        """Record a crossing of the low-balance threshold, in either direction."""
        available = self.available_mc(at)
        if not self.low_balance and available < threshold_mc:
            self._low_balance_reached(
                threshold_mc=threshold_mc, available_mc=available, timestamp=at
            )
        elif self.low_balance and available >= threshold_mc:
            self._low_balance_cleared(
                threshold_mc=threshold_mc, available_mc=available, timestamp=at
            )

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
        if hold.status != HoldStatus.SETTLED.value:
            raise InvalidTransition(
                f"hold {hold_id} is {hold.status}; only settled jobs are refunded"
            )
        if hold.refunded_mc:
            return 0
        if hold.charged_mc == 0:
            raise InvalidTransition("the job was not charged; there is nothing to refund")
        returns: list[LotAmount] = []
        to_new_lot = 0
        for lot_id, charged in hold.charges.items():
            if charged == 0:
                continue
            if self.lots[lot_id].spendable_at(at):
                returns.append(LotAmount(lot_id=lot_id, mc=charged))
            else:
                to_new_lot += charged
        new_lot: NewLot | None = None
        if to_new_lot:
            new_lot = NewLot(
                lot_id=ids.lot_id("refund", hold_id),
                mc=to_new_lot,
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
        return hold.charged_mc

    # ------------------------------------------------------------------------------ helpers

    def _hold(self, hold_id: str) -> Hold:
        try:
            return self.holds[hold_id]
        except KeyError:
            raise UnknownHold(f"no hold {hold_id} on this account") from None

    def _draw(self, amount_mc: int, at: datetime) -> list[LotAmount]:
        """Split ``amount_mc`` over spendable lots in spend order, or refuse."""
        available = self.available_mc(at)
        if amount_mc > available:
            raise InsufficientCredits(amount_mc, available)
        parts: list[LotAmount] = []
        left = amount_mc
        for lot in self.spendable_lots(at):
            take = min(left, lot.remaining_mc)
            parts.append(LotAmount(lot_id=lot.lot_id, mc=take))
            left -= take
            if left == 0:
                break
        return parts

    def _add_lot(self, new_lot: NewLot, source: str, reference: str) -> Lot:
        lot = Lot(
            lot_id=new_lot["lot_id"],
            seq=len(self.lots),
            source=source,
            amount_mc=new_lot["mc"],
            valid_from=new_lot["valid_from"],
            valid_until=new_lot["valid_until"],
            reference=reference,
            remaining_mc=new_lot["mc"],
        )
        self.lots[lot.lot_id] = lot
        return lot

    # ------------------------------------------------------------- event bodies (mutate only)

    @event(CreditsGranted)
    def _granted(
        self,
        lot_id: str,
        source: str,
        amount_mc: int,
        valid_from: datetime,
        valid_until: datetime | None,
        reference: str,
        actor: str,
        reason: str,
        timestamp: datetime,
    ) -> None:
        self._add_lot(
            NewLot(lot_id=lot_id, mc=amount_mc, valid_from=valid_from, valid_until=valid_until),
            source,
            reference,
        )

    @event(CreditsReserved)
    def _reserved(
        self,
        hold_id: str,
        job_id: str,
        amount_mc: int,
        allocations: list[LotAmount],
        timestamp: datetime,
    ) -> None:
        for part in allocations:
            lot = self.lots[part["lot_id"]]
            lot.remaining_mc -= part["mc"]
            lot.held_mc += part["mc"]
        self.holds[hold_id] = Hold(
            hold_id=hold_id,
            job_id=job_id,
            amount_mc=amount_mc,
            allocations={p["lot_id"]: p["mc"] for p in allocations},
        )

    @event(HoldSettled)
    def _settled(
        self,
        hold_id: str,
        job_id: str,
        charged_mc: int,
        gpu_ms: int,
        rate_mc_per_ms: int,
        tier: str,
        cuda_ms: int | None,
        parts: list[SettledPart],
        timestamp: datetime,
    ) -> None:
        hold = self.holds[hold_id]
        for part in parts:
            lot = self.lots[part["lot_id"]]
            lot.held_mc -= part["charged_mc"] + part["released_mc"] + part["expired_mc"]
            lot.consumed_mc += part["charged_mc"]
            lot.remaining_mc += part["released_mc"]
            lot.expired_mc += part["expired_mc"]
        hold.status = HoldStatus.SETTLED.value
        hold.charged_mc = charged_mc
        hold.charges = {p["lot_id"]: p["charged_mc"] for p in parts}

    @event(HoldReleased)
    def _released(
        self, hold_id: str, job_id: str, reason: str, parts: list[ReleasedPart], timestamp: datetime
    ) -> None:
        for part in parts:
            lot = self.lots[part["lot_id"]]
            lot.held_mc -= part["released_mc"] + part["expired_mc"]
            lot.remaining_mc += part["released_mc"]
            lot.expired_mc += part["expired_mc"]
        self.holds[hold_id].status = HoldStatus.RELEASED.value

    @event(LotExpired)
    def _lot_expired(self, lot_id: str, expired_mc: int, timestamp: datetime) -> None:
        lot = self.lots[lot_id]
        lot.remaining_mc -= expired_mc
        lot.expired_mc += expired_mc
        lot.expired = True

    @event(CreditsAdjusted)
    def _adjusted(
        self,
        adjustment_id: str,
        amount_mc: int,
        reason: str,
        actor: str,
        new_lot: NewLot | None,
        debits: list[LotAmount],
        timestamp: datetime,
    ) -> None:
        if new_lot is not None:
            self._add_lot(new_lot, LotSource.ADMIN.value, f"adjustment:{adjustment_id}")
        for part in debits:
            lot = self.lots[part["lot_id"]]
            lot.remaining_mc -= part["mc"]
            lot.debited_mc += part["mc"]
        self.adjustments[adjustment_id] = amount_mc

    @event(LowBalanceReached)
    def _low_balance_reached(
        self, threshold_mc: int, available_mc: int, timestamp: datetime
    ) -> None:
        self.low_balance = True

    @event(LowBalanceCleared)
    def _low_balance_cleared(
        self, threshold_mc: int, available_mc: int, timestamp: datetime
    ) -> None:
        self.low_balance = False

    @event(Deactivated)
    def _deactivated(self, reason: str, actor: str, timestamp: datetime) -> None:
        self.deactivated = True

    @event(Reactivated)
    def _reactivated(self, reason: str, actor: str, timestamp: datetime) -> None:
        self.deactivated = False

    @event(CreditsRefunded)
    def _refunded(
        self,
        hold_id: str,
        job_id: str,
        amount_mc: int,
        reason: str,
        actor: str,
        returns: list[LotAmount],
        new_lot: NewLot | None,
        timestamp: datetime,
    ) -> None:
        hold = self.holds[hold_id]
        for part in returns:
            lot = self.lots[part["lot_id"]]
            lot.remaining_mc += part["mc"]
            lot.refunded_mc += part["mc"]
        if new_lot is not None:
            self._add_lot(new_lot, LotSource.REFUND.value, f"refund:{hold_id}")
        hold.refunded_mc = amount_mc


# ---------------------------------------------------------------- transcodings for snapshots


class LotAsDict(Transcoding):
    type = Lot
    name = "pinksea_lot"

    def encode(self, obj: Lot) -> dict[str, Any]:
        return dict(obj.__dict__)

    def decode(self, data: dict[str, Any]) -> Lot:
        return Lot(**data)


class HoldAsDict(Transcoding):
    type = Hold
    name = "pinksea_hold"

    def encode(self, obj: Hold) -> dict[str, Any]:
        return dict(obj.__dict__)

    def decode(self, data: dict[str, Any]) -> Hold:
        return Hold(**data)
