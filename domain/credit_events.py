"""The events of a CreditAccount: their stored shape and their effect on the account.

Every event is stored (``pinksea_events``), published (``pinksea.credits.v1``) and documented
(``docs/events/``, generated from these classes). Their topics, names and fields are the
stored shape: never rename or remove one, nor change a field's meaning
(tests/unit/test_event_contract.py). Beside each event is its effect, the body the library
runs when the command triggers it and again on every replay: it only mutates (no clock, no
I/O, no decisions: the command decided), then asserts the invariants of the lots and the hold
it touched. An AssertionError there is a bug, or a history that breaks the ledger's rules.

``CreditAccount`` (domain/credits.py) binds each class as its attribute of the same name (where
the library makes it the account's own event: use ``CreditAccount.HoldSettled``) and each
effect as the ``@event`` method that triggers it. An effect's first parameter is named
``self`` because the library calls it as that method.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from eventsourcing.domain import Aggregate

from domain.holds import Hold, HoldStatus
from domain.lots import LotAmount, LotSource, NewLot, ReleasedPart, SettledPart

if TYPE_CHECKING:
    from domain.credits import CreditAccount


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


def granted(
    self: CreditAccount,
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
    self._assert_lot_invariants([lot_id])


class CreditsReserved(Aggregate.Event):
    TOPIC = "pinksea:CreditAccount.CreditsReserved"
    hold_id: str
    job_id: str
    amount_mc: int
    allocations: list[LotAmount]


def reserved(
    self: CreditAccount,
    hold_id: str,
    job_id: str,
    amount_mc: int,
    allocations: list[LotAmount],
    timestamp: datetime,
) -> None:
    assert hold_id not in self.holds, f"hold {hold_id} placed twice"
    for part in allocations:
        self.lots[part["lot_id"]].reserve(part["mc"])
    hold = Hold(
        hold_id=hold_id,
        job_id=job_id,
        amount_mc=amount_mc,
        allocations={p["lot_id"]: p["mc"] for p in allocations},
    )
    self.holds[hold_id] = hold
    hold.assert_invariants()
    self._assert_lot_invariants(hold.allocations)


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


def settled(
    self: CreditAccount,
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
    # A settlement never charges more than its hold (the hold is the job's time budget).
    assert hold.is_open and 0 <= charged_mc <= hold.amount_mc, f"settle {charged_mc} {hold}"
    assert sum(p["charged_mc"] for p in parts) == charged_mc
    for part in parts:
        self.lots[part["lot_id"]].resolve(
            charged_mc=part["charged_mc"],
            released_mc=part["released_mc"],
            expired_mc=part["expired_mc"],
        )
    hold.status = HoldStatus.SETTLED.value
    hold.charged_mc = charged_mc
    hold.charges = {p["lot_id"]: p["charged_mc"] for p in parts}
    hold.assert_invariants()
    self._assert_lot_invariants(hold.allocations)


class HoldReleased(Aggregate.Event):
    TOPIC = "pinksea:CreditAccount.HoldReleased"
    hold_id: str
    job_id: str
    reason: str
    parts: list[ReleasedPart]


def released(
    self: CreditAccount,
    hold_id: str,
    job_id: str,
    reason: str,
    parts: list[ReleasedPart],
    timestamp: datetime,
) -> None:
    hold = self.holds[hold_id]
    assert hold.is_open, f"hold {hold_id} released when {hold.status}"
    for part in parts:
        self.lots[part["lot_id"]].resolve(
            charged_mc=0, released_mc=part["released_mc"], expired_mc=part["expired_mc"]
        )
    hold.status = HoldStatus.RELEASED.value
    hold.assert_invariants()
    self._assert_lot_invariants(hold.allocations)


class LotExpired(Aggregate.Event):
    TOPIC = "pinksea:CreditAccount.LotExpired"
    lot_id: str
    expired_mc: int


def lot_expired(self: CreditAccount, lot_id: str, expired_mc: int, timestamp: datetime) -> None:
    self.lots[lot_id].expire(expired_mc)
    self._assert_lot_invariants([lot_id])


class CreditsAdjusted(Aggregate.Event):
    TOPIC = "pinksea:CreditAccount.CreditsAdjusted"
    adjustment_id: str
    amount_mc: int  # positive: credit added as a new admin lot; negative: debited
    reason: str
    actor: str
    new_lot: NewLot | None
    debits: list[LotAmount]


def adjusted(
    self: CreditAccount,
    adjustment_id: str,
    amount_mc: int,
    reason: str,
    actor: str,
    new_lot: NewLot | None,
    debits: list[LotAmount],
    timestamp: datetime,
) -> None:
    assert amount_mc != 0 and (new_lot is None) == (amount_mc < 0)
    assert sum(d["mc"] for d in debits) == max(0, -amount_mc)
    if new_lot is not None:
        self._add_lot(new_lot, LotSource.ADMIN.value, f"adjustment:{adjustment_id}")
    for part in debits:
        self.lots[part["lot_id"]].debit(part["mc"])
    self.adjustments[adjustment_id] = amount_mc
    touched = [d["lot_id"] for d in debits]
    self._assert_lot_invariants(touched if new_lot is None else [*touched, new_lot["lot_id"]])


class LowBalanceReached(Aggregate.Event):
    """Available credit fell below the plan's threshold (once per downward crossing)."""

    TOPIC = "pinksea:CreditAccount.LowBalanceReached"
    threshold_mc: int
    available_mc: int


def low_balance_reached(
    self: CreditAccount, threshold_mc: int, available_mc: int, timestamp: datetime
) -> None:
    self.low_balance = True


class LowBalanceCleared(Aggregate.Event):
    """Available credit is back at or above the threshold: the warning re-arms."""

    TOPIC = "pinksea:CreditAccount.LowBalanceCleared"
    threshold_mc: int
    available_mc: int


def low_balance_cleared(
    self: CreditAccount, threshold_mc: int, available_mc: int, timestamp: datetime
) -> None:
    self.low_balance = False


class CreditsRefunded(Aggregate.Event):
    TOPIC = "pinksea:CreditAccount.CreditsRefunded"
    hold_id: str
    job_id: str
    amount_mc: int
    reason: str
    actor: str
    returns: list[LotAmount]  # back to the lots the charge came from
    new_lot: NewLot | None  # the part whose lots had expired


def refunded(
    self: CreditAccount,
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
    back_mc = sum(r["mc"] for r in returns) + (0 if new_lot is None else new_lot["mc"])
    assert amount_mc == hold.charged_mc == back_mc > 0, f"refund {amount_mc} of {hold}"
    for part in returns:
        self.lots[part["lot_id"]].refund(part["mc"])
    if new_lot is not None:
        self._add_lot(new_lot, LotSource.REFUND.value, f"refund:{hold_id}")
    hold.refunded_mc = amount_mc
    hold.assert_invariants()
    touched = [r["lot_id"] for r in returns]
    self._assert_lot_invariants(touched if new_lot is None else [*touched, new_lot["lot_id"]])


class Deactivated(Aggregate.Event):
    """An admin stopped the account: no new holds until it is reactivated. Moves no credit."""

    TOPIC = "pinksea:CreditAccount.Deactivated"
    reason: str
    actor: str


def deactivated(self: CreditAccount, reason: str, actor: str, timestamp: datetime) -> None:
    self.deactivated = True


class Reactivated(Aggregate.Event):
    TOPIC = "pinksea:CreditAccount.Reactivated"
    reason: str
    actor: str


def reactivated(self: CreditAccount, reason: str, actor: str, timestamp: datetime) -> None:
    self.deactivated = False
