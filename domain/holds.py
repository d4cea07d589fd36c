"""Holds: the two-phase reservations of a credit account, and how one resolves over its lots.

A hold reserves credit on lots in spend order (``allocations``) and resolves exactly once:
settled (the charge is taken from the allocations in their order, the rest goes back) or
released (all of it goes back). Credit going back to a lot that expired meanwhile expires. A
settled hold's charge can be refunded once, to the lots it came from while they are still
spendable, the rest as a new lot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from eventsourcing.persistence import Transcoding

from domain.errors import (
    HoldAlreadyResolved,
    InvalidParameters,
    InvalidTransition,
    SettleExceedsHold,
)
from domain.lots import Lot, LotAmount, ReleasedPart, SettledPart


class HoldStatus(StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"


@dataclass
class Hold:
    # The fields are the snapshot's shape (HoldAsDict): adding one needs a default.
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

    @property
    def is_open(self) -> bool:
        return self.status == HoldStatus.OPEN.value

    def assert_invariants(self) -> None:
        """A hold holds what it allocated, charges at most that, and refunds its charge whole
        or not at all. An AssertionError here is a bug, never a user's mistake."""
        assert self.amount_mc > 0, f"hold {self.hold_id} of {self.amount_mc} mc"
        assert sum(self.allocations.values()) == self.amount_mc, f"hold {self.hold_id}: {self}"
        assert all(mc > 0 for mc in self.allocations.values()), f"hold {self.hold_id}: {self}"
        assert self.status in _STATUSES, f"hold {self.hold_id}: status {self.status}"
        assert 0 <= self.charged_mc <= self.amount_mc, f"hold {self.hold_id} overcharged"
        assert sum(self.charges.values()) == self.charged_mc, f"hold {self.hold_id}: {self}"
        assert all(
            0 <= mc <= self.allocations.get(lot_id, -1) for lot_id, mc in self.charges.items()
        ), f"hold {self.hold_id} charged a lot beyond its allocation: {self}"
        settled = self.status == HoldStatus.SETTLED.value
        assert settled or (self.charged_mc == 0 and not self.charges), f"{self}"
        assert self.refunded_mc in (0, self.charged_mc), f"hold {self.hold_id}: partial refund"
        assert settled or self.refunded_mc == 0, f"hold {self.hold_id} refunded unsettled"

    # ----------------------------------------------------------------- how it resolves

    def settlement(
        self, charged_mc: int, gpu_ms: int, rate_mc_per_ms: int, lots: Mapping[str, Lot]
    ) -> list[SettledPart] | None:
        """Charge ``charged_mc`` from the allocations in their order, the rest goes back; None
        when it was settled alike before (a repeat). Refuses what may not be charged."""
        if self.status == HoldStatus.SETTLED.value and self.charged_mc == charged_mc:
            return None
        if not self.is_open:
            raise HoldAlreadyResolved(f"hold {self.hold_id} is already {self.status}")
        if charged_mc < 0 or charged_mc != gpu_ms * rate_mc_per_ms:
            raise InvalidParameters("charged_mc must equal gpu_ms x rate and be >= 0")
        if charged_mc > self.amount_mc:
            raise SettleExceedsHold(
                f"cannot charge {charged_mc} mc on a hold of {self.amount_mc} mc"
            )
        parts: list[SettledPart] = []
        to_charge = charged_mc
        for lot_id, held in self.allocations.items():  # bounded by the hold's lots
            charged = min(to_charge, held)
            to_charge -= charged
            back = held - charged
            expired = lots[lot_id].expired
            parts.append(
                SettledPart(
                    lot_id=lot_id,
                    charged_mc=charged,
                    released_mc=0 if expired else back,
                    expired_mc=back if expired else 0,
                )
            )
        assert to_charge == 0
        assert sum(p["charged_mc"] + p["released_mc"] + p["expired_mc"] for p in parts) == (
            self.amount_mc
        )
        return parts

    def release_parts(self, lots: Mapping[str, Lot]) -> list[ReleasedPart] | None:
        """Everything goes back (and expires where its lot has); None when it was released
        before (a repeat)."""
        if self.status == HoldStatus.RELEASED.value:
            return None
        if not self.is_open:
            raise HoldAlreadyResolved(f"hold {self.hold_id} is already {self.status}")
        parts = [
            ReleasedPart(
                lot_id=lot_id,
                released_mc=0 if lots[lot_id].expired else held,
                expired_mc=held if lots[lot_id].expired else 0,
            )
            for lot_id, held in self.allocations.items()
        ]
        assert sum(p["released_mc"] + p["expired_mc"] for p in parts) == self.amount_mc
        return parts

    def refund_split(
        self, lots: Mapping[str, Lot], at: datetime
    ) -> tuple[list[LotAmount], int] | None:
        """The charge back: to each charged lot still spendable, and the mc that must come
        back as a new lot instead (its lots are not spendable any more); None when it was
        refunded before (a repeat)."""
        if self.status != HoldStatus.SETTLED.value:
            raise InvalidTransition(
                f"hold {self.hold_id} is {self.status}; only settled jobs are refunded"
            )
        if self.refunded_mc:
            return None
        if self.charged_mc == 0:
            raise InvalidTransition("the job was not charged; there is nothing to refund")
        returns: list[LotAmount] = []
        to_new_lot_mc = 0
        for lot_id, charged in self.charges.items():  # bounded by the hold's lots
            if charged == 0:
                continue
            if lots[lot_id].spendable_at(at):
                returns.append(LotAmount(lot_id=lot_id, mc=charged))
            else:
                to_new_lot_mc += charged
        assert sum(r["mc"] for r in returns) + to_new_lot_mc == self.charged_mc
        return returns, to_new_lot_mc


_STATUSES = frozenset(s.value for s in HoldStatus)


class HoldAsDict(Transcoding):
    type = Hold
    name = "pinksea_hold"  # stored in snapshots: never rename

    def encode(self, obj: Hold) -> dict[str, Any]:
        return dict(obj.__dict__)

    def decode(self, data: dict[str, Any]) -> Hold:
        return Hold(**data)
