"""A hypothesis state machine that tries to break the ledger.

It drives one CreditAccount with random grants (random validity windows), reserves, settles,
releases, expiries at random times, adjustments, refunds and repeated commands, and after every
step compares the account with a small reference model written independently of it, checks the
invariants, checks that every event's postings balance, checks that the domain's lot arithmetic
(``domain.ledger_changes.ledger_change``, what the ledger projection applies) of the events so
far reproduces every lot of the account exactly, and checks that the account rebuilt from its
stored events, and from a snapshot plus later events, equals the live one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

from domain.application import PinkseaApplication
from domain.credits import CreditAccount, Lot, LotSource
from domain.errors import (
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidTransition,
    SettleExceedsHold,
)
from domain.ledger_changes import ledger_change
from domain.postings import EXPIRED, REVENUE, available, held, postings_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PROMO = {"trial", "tester", "admin"}
USER = "user-under-test"


# ------------------------------------------------------------------------ reference model


@dataclass
class RefLot:
    lot_id: str
    seq: int
    source: str
    valid_from: datetime
    valid_until: datetime | None
    amount: int
    remaining: int
    held: int = 0
    consumed: int = 0
    expired: int = 0
    debited: int = 0
    refunded: int = 0
    is_expired: bool = False


@dataclass
class RefHold:
    amount: int
    parts: list[tuple[str, int]]
    state: str = "open"
    charges: list[tuple[str, int]] = field(default_factory=list)
    refunded: bool = False


class Reference:
    """The ledger rules, restated as plainly as possible."""

    def __init__(self) -> None:
        self.lots: dict[str, RefLot] = {}
        self.holds: dict[str, RefHold] = {}

    def usable(self, lot: RefLot, now: datetime) -> bool:
        if lot.is_expired or lot.valid_from > now:
            return False
        return lot.valid_until is None or now < lot.valid_until

    def available(self, now: datetime) -> int:
        return sum(lot.remaining for lot in self.lots.values() if self.usable(lot, now))

    def draw(self, amount: int, now: datetime) -> list[tuple[str, int]]:
        candidates = [lot for lot in self.lots.values() if self.usable(lot, now) and lot.remaining]
        far_future = datetime.max.replace(tzinfo=UTC)
        candidates.sort(
            key=lambda lot: (
                lot.valid_until or far_future,
                lot.source not in PROMO,
                lot.seq,
            )
        )
        parts, left = [], amount
        for lot in candidates:
            if left == 0:
                break
            take = min(left, lot.remaining)
            parts.append((lot.lot_id, take))
            left -= take
        assert left == 0
        return parts

    def give_back(self, lot_id: str, mc: int) -> None:
        lot = self.lots[lot_id]
        lot.held -= mc
        if lot.is_expired:
            lot.expired += mc
        else:
            lot.remaining += mc


# --------------------------------------------------------------------------- the machine


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.app = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.now = T0
        self.account = CreditAccount(user_id=USER, timestamp=self.now)
        self.ref = Reference()
        self.counter = 0
        self.balances: Counter[str] = Counter()
        self.snapshot_version = 0
        self.lots_from_changes: dict[str, Lot] = {}  # only ever moved by ledger_change
        self._persist()

    def _next_id(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter}"

    def _persist(self) -> None:
        for ev in self.account.collect_events():
            postings = postings_for(USER, ev)
            assert sum(p.amount_mc for p in postings) == 0, f"unbalanced {type(ev).__name__}"
            for p in postings:
                self.balances[p.account] += p.amount_mc
            change = ledger_change(ev)
            if change is None:
                assert not postings, f"{type(ev).__name__} moves credit but no lot"
            else:
                change.apply_to(self.lots_from_changes)
                # The statement line's amounts are the event's postings on the user's accounts.
                assert change.amount_mc == sum(
                    p.amount_mc for p in postings if p.account == available(USER)
                )
                assert change.held_change_mc == sum(
                    p.amount_mc for p in postings if p.account == held(USER)
                )
            self.app.save(ev)

    # ---------------------------------------------------------------------------- rules

    @rule(minutes=st.integers(0, 60 * 24 * 20))
    def advance_clock(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule(
        amount=st.integers(1, 50_000),
        starts_in=st.integers(-60 * 24 * 10, 60 * 24 * 5),
        lasts=st.one_of(st.none(), st.integers(1, 60 * 24 * 40)),
        source=st.sampled_from([s.value for s in LotSource if s is not LotSource.REFUND]),
        repeat=st.booleans(),
    )
    def grant(
        self, amount: int, starts_in: int, lasts: int | None, source: str, repeat: bool
    ) -> None:
        lot_id = self._next_id("lot")
        valid_from = self.now + timedelta(minutes=starts_in)
        valid_until = None if lasts is None else valid_from + timedelta(minutes=lasts)
        kwargs: dict[str, Any] = dict(
            lot_id=lot_id,
            source=LotSource(source),
            amount_mc=amount,
            valid_from=valid_from,
            valid_until=valid_until,
            reference=lot_id,
            actor="test",
            reason="test",
            at=self.now,
        )
        assert self.account.grant(**kwargs) is True
        if repeat:
            assert self.account.grant(**kwargs) is False  # a repeated grant changes nothing
        self.ref.lots[lot_id] = RefLot(
            lot_id, len(self.ref.lots), source, valid_from, valid_until, amount, amount
        )
        self._persist()

    @rule(target=holds, amount=st.integers(1, 80_000), repeat=st.booleans())
    def reserve(self, amount: int, repeat: bool) -> object:
        hold_id = self._next_id("hold")
        expected_ok = amount <= self.ref.available(self.now)
        try:
            self.account.reserve(hold_id=hold_id, job_id=hold_id, amount_mc=amount, at=self.now)
        except InsufficientCredits as e:
            assert not expected_ok
            assert e.available_mc == self.ref.available(self.now)
            return multiple()
        assert expected_ok, "reserved more than was available"
        if repeat:
            assert not self.account.reserve(
                hold_id=hold_id, job_id=hold_id, amount_mc=amount, at=self.now
            )
        parts = self.ref.draw(amount, self.now)
        for lot_id, mc in parts:
            self.ref.lots[lot_id].remaining -= mc
            self.ref.lots[lot_id].held += mc
        self.ref.holds[hold_id] = RefHold(amount, parts)
        self._persist()
        return hold_id

    @rule(hold_id=holds, fraction=st.integers(0, 1000), overcharge=st.booleans())
    def settle(self, hold_id: str, fraction: int, overcharge: bool) -> None:
        ref = self.ref.holds[hold_id]
        charged = ref.amount * fraction // 1000
        if overcharge:
            charged = ref.amount + 1 + fraction
        try:
            self.account.settle(
                hold_id=hold_id, charged_mc=charged, gpu_ms=charged, rate_mc_per_ms=1, at=self.now
            )
        except SettleExceedsHold:
            assert charged > ref.amount and ref.state == "open"
            return
        except HoldAlreadyResolved:
            assert ref.state != "open"
            return
        if ref.state == "settled":
            # Only an exact repeat of the settlement is accepted, as a no-op.
            assert sum(mc for _, mc in ref.charges) == charged
            self._persist()
            return
        assert ref.state == "open" and charged <= ref.amount
        left = charged
        for lot_id, mc in ref.parts:
            take = min(left, mc)
            left -= take
            lot = self.ref.lots[lot_id]
            lot.held -= take
            lot.consumed += take
            ref.charges.append((lot_id, take))
            self.ref.give_back(lot_id, mc - take)
        ref.state = "settled"
        self._persist()

    @rule(hold_id=holds)
    def release(self, hold_id: str) -> None:
        ref = self.ref.holds[hold_id]
        try:
            changed = self.account.release(hold_id=hold_id, reason="test", at=self.now)
        except HoldAlreadyResolved:
            assert ref.state == "settled"
            return
        if ref.state == "released":
            assert changed is False
            return
        assert changed and ref.state == "open"
        for lot_id, mc in ref.parts:
            self.ref.give_back(lot_id, mc)
        ref.state = "released"
        self._persist()

    @rule()
    def expire(self) -> None:
        self._expire()

    @precondition(lambda self: self._held_lot_ends() is not None)
    @rule()
    def expire_while_held(self) -> None:
        """Jump to the end of a lot with credit on hold and expire it, so that holds resolve
        on expired lots (their credit expires with the lot) and refunds find them expired."""
        until = self._held_lot_ends()
        assert until is not None
        self.now = max(self.now, until)
        self._expire()

    def _held_lot_ends(self) -> datetime | None:
        ends = [
            lot.valid_until
            for lot in self.ref.lots.values()
            if lot.held and not lot.is_expired and lot.valid_until is not None
        ]
        return min(ends, default=None)

    def _expire(self) -> None:
        self.account.expire_due(self.now)
        for lot in self.ref.lots.values():
            if not lot.is_expired and lot.valid_until is not None and lot.valid_until <= self.now:
                lot.expired += lot.remaining
                lot.remaining = 0
                lot.is_expired = True
        self._persist()

    @rule(amount=st.integers(-30_000, 30_000).filter(bool), repeat=st.booleans())
    def adjust(self, amount: int, repeat: bool) -> None:
        adjustment_id = self._next_id("adj")
        kwargs: dict[str, Any] = dict(
            adjustment_id=adjustment_id, amount_mc=amount, reason="r", actor="admin"
        )
        if amount < 0 and -amount > self.ref.available(self.now):
            try:
                self.account.adjust(**kwargs, at=self.now)
            except InsufficientCredits:
                return
            raise AssertionError("debited more than was available")
        assert self.account.adjust(**kwargs, at=self.now)
        if repeat:
            assert not self.account.adjust(**kwargs, at=self.now)
            try:
                self.account.adjust(**{**kwargs, "amount_mc": amount + 1}, at=self.now)
                raise AssertionError("the same adjustment id with another amount was accepted")
            except IdempotencyConflict:
                pass
        if amount > 0:
            assert self.account.adjustments
            lot_id = next(
                lot.lot_id
                for lot in self.account.lots.values()
                if lot.reference == f"adjustment:{adjustment_id}"
            )
            self.ref.lots[lot_id] = RefLot(
                lot_id, len(self.ref.lots), "admin", self.now, None, amount, amount
            )
        else:
            for lot_id, mc in self.ref.draw(-amount, self.now):
                self.ref.lots[lot_id].remaining -= mc
                self.ref.lots[lot_id].debited += mc
        self._persist()

    @rule(hold_id=holds)
    def refund(self, hold_id: str) -> None:
        ref = self.ref.holds[hold_id]
        charged = sum(mc for _, mc in ref.charges)
        try:
            refunded = self.account.refund(hold_id=hold_id, reason="r", actor="admin", at=self.now)
        except InvalidTransition:
            assert ref.state != "settled" or charged == 0
            return
        if ref.refunded:
            assert refunded == 0
            return
        assert ref.state == "settled" and refunded == charged > 0
        to_new_lot = 0
        for lot_id, mc in ref.charges:
            lot = self.ref.lots[lot_id]
            if mc and self.ref.usable(lot, self.now):
                lot.remaining += mc
                lot.refunded += mc
            else:
                to_new_lot += mc
        if to_new_lot:
            new = next(
                lot for lot in self.account.lots.values() if lot.reference == f"refund:{hold_id}"
            )
            assert new.amount_mc == to_new_lot and new.source == "refund"
            self.ref.lots[new.lot_id] = RefLot(
                new.lot_id,
                len(self.ref.lots),
                "refund",
                self.now,
                new.valid_until,
                to_new_lot,
                to_new_lot,
            )
        ref.refunded = True
        self._persist()

    @precondition(lambda self: self.account.version != self.snapshot_version)
    @rule()
    def snapshot(self) -> None:
        self.app.take_snapshot(self.account.id)
        self.snapshot_version = self.account.version

    # ----------------------------------------------------------------------- invariants

    @invariant()
    def lots_match_reference(self) -> None:
        assert set(self.account.lots) == set(self.ref.lots)
        for lot_id, ref in self.ref.lots.items():
            lot = self.account.lots[lot_id]
            got = (
                lot.remaining_mc,
                lot.held_mc,
                lot.consumed_mc,
                lot.expired_mc,
                lot.debited_mc,
                lot.refunded_mc,
                lot.expired,
            )
            want = (
                ref.remaining,
                ref.held,
                ref.consumed,
                ref.expired,
                ref.debited,
                ref.refunded,
                ref.is_expired,
            )
            assert got == want, f"lot {lot_id} ({ref.source}): {got} != {want}"

    @invariant()
    def ledger_changes_reproduce_the_lots(self) -> None:
        """Applying ``ledger_change`` of every event so far gives the aggregate's lots exactly:
        every field, the grant order (``seq``) and the expiry flag included."""
        assert self.lots_from_changes == self.account.lots

    @invariant()
    def lots_conserve_credit(self) -> None:
        for lot in self.account.lots.values():
            parts = (lot.remaining_mc, lot.held_mc, lot.consumed_mc, lot.expired_mc, lot.debited_mc)
            assert min(parts) >= 0
            assert lot.amount_mc + lot.refunded_mc == sum(parts)

    @invariant()
    def holds_match_reference(self) -> None:
        assert set(self.account.holds) == set(self.ref.holds)
        for hold_id, ref in self.ref.holds.items():
            hold = self.account.holds[hold_id]
            assert hold.status == ref.state
            assert sum(hold.allocations.values()) == hold.amount_mc == ref.amount
            assert list(hold.allocations.items()) == ref.parts
            assert hold.charged_mc <= hold.amount_mc
        held_total = sum(h.amount for h in self.ref.holds.values() if h.state == "open")
        assert (
            self.account.held_mc
            == held_total
            == sum(lot.held_mc for lot in self.account.lots.values())
        )

    @invariant()
    def available_never_negative(self) -> None:
        assert self.account.available_mc(self.now) == self.ref.available(self.now) >= 0

    @invariant()
    def postings_agree_with_state(self) -> None:
        lots = self.account.lots.values()
        assert self.balances[available(USER)] == sum(lot.remaining_mc for lot in lots)
        assert self.balances[held(USER)] == sum(lot.held_mc for lot in lots)
        # Refunds come out of revenue: back into the charged lots, or as a new refund lot.
        refunded = sum(
            lot.refunded_mc + (lot.amount_mc if lot.source == "refund" else 0) for lot in lots
        )
        assert self.balances[REVENUE] == sum(lot.consumed_mc for lot in lots) - refunded
        assert self.balances[EXPIRED] == sum(lot.expired_mc for lot in lots)
        assert sum(self.balances.values()) == 0

    @invariant()
    def account_invariants_hold(self) -> None:
        # The aggregate's own full scan (every event body asserted the lots it touched).
        self.account.assert_invariants()

    @invariant()
    def rebuilt_equals_live(self) -> None:
        replayed: CreditAccount | None = None
        for ev in self.app.events.get(self.account.id):
            assert isinstance(ev, CreditAccount.Event)
            replayed = ev.mutate(replayed)
        # A snapshot and the later events.
        from_repository: CreditAccount = self.app.repository.get(self.account.id)
        for rebuilt in (replayed, from_repository):
            assert rebuilt is not None
            assert rebuilt.version == self.account.version
            assert rebuilt.lots == self.account.lots
            assert rebuilt.holds == self.account.holds
            assert rebuilt.adjustments == self.account.adjustments


LedgerMachine.TestCase.settings = settings(stateful_step_count=40, deadline=None)
TestLedger = LedgerMachine.TestCase
