"""The ledger's asserted invariants trip when broken (issue 20: assertions where money moves).

A corrupted lot, hold or history must stop the command or the replay with an AssertionError
(a bug, never a user's DomainError); valid histories never trip them (see also the state
machine in test_credit_account_stateful.py, which runs with every assertion active).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import hypothesis.strategies as st
import pytest
from hypothesis import given

from domain.credits import CreditAccount, Hold, Lot, LotSource
from domain.errors import SettleExceedsHold
from domain.postings import postings_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LOT_PARTS = ("remaining_mc", "held_mc", "consumed_mc", "expired_mc", "debited_mc", "refunded_mc")


def funded_account(mc: int = 10_000) -> CreditAccount:
    account = CreditAccount(user_id="u", timestamp=T0)
    account.grant(
        lot_id="lot",
        source=LotSource.PURCHASE,
        amount_mc=mc,
        valid_from=T0,
        valid_until=T0 + timedelta(days=30),
        reference="r",
        actor="test",
        reason="test",
        at=T0,
    )
    return account


@st.composite
def valid_lots(draw: st.DrawFn) -> Lot:
    """A lot that went through random movements, each within what the lot has."""
    amount = draw(st.integers(1, 10**9))
    lot = Lot("l", 0, "purchase", amount, T0, None, "r", remaining_mc=amount)
    for step in draw(st.lists(st.sampled_from(["reserve", "charge", "debit", "refund"]))):
        if step == "reserve" and lot.remaining_mc:
            lot.reserve(draw(st.integers(1, lot.remaining_mc)))
        elif step == "charge" and lot.held_mc:
            charged = draw(st.integers(0, lot.held_mc))
            lot.resolve(charged_mc=charged, released_mc=lot.held_mc - charged, expired_mc=0)
        elif step == "debit" and lot.remaining_mc:
            lot.debit(draw(st.integers(1, lot.remaining_mc)))
        elif step == "refund" and lot.consumed_mc > lot.refunded_mc:
            lot.refund(draw(st.integers(1, lot.consumed_mc - lot.refunded_mc)))
    return lot


@given(lot=valid_lots())
def test_movements_within_a_lot_keep_its_invariants(lot: Lot) -> None:
    lot.assert_invariants()
    assert lot.amount_mc + lot.refunded_mc == (
        lot.remaining_mc + lot.held_mc + lot.consumed_mc + lot.expired_mc + lot.debited_mc
    )


@given(lot=valid_lots(), part=st.sampled_from(LOT_PARTS), delta=st.integers(-(10**9), 10**9))
def test_any_corrupted_part_of_a_lot_trips_the_assertion(lot: Lot, part: str, delta: int) -> None:
    # One part changed alone always breaks the conservation law (or makes a part negative).
    delta = delta or 1
    corrupted = dataclasses.replace(lot, **{part: getattr(lot, part) + delta})
    with pytest.raises(AssertionError):
        corrupted.assert_invariants()


def test_an_expired_lot_with_spendable_credit_trips_the_assertion() -> None:
    lot = Lot("l", 0, "purchase", 100, T0, None, "r", remaining_mc=100, expired=True)
    with pytest.raises(AssertionError, match="expired lot"):
        lot.assert_invariants()


def test_a_corrupted_lot_stops_the_next_event_that_touches_it() -> None:
    account = funded_account()
    account.lots["lot"].remaining_mc += 5  # credit from nowhere
    with pytest.raises(AssertionError):
        account.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)


def test_a_hold_that_lost_its_allocations_trips_the_assertion() -> None:
    account = funded_account()
    account.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)
    hold = account.holds["h"]
    hold.assert_invariants()
    broken = Hold("h", "j", 100, allocations={"lot": 60})
    with pytest.raises(AssertionError):
        broken.assert_invariants()
    with pytest.raises(AssertionError):
        dataclasses.replace(hold, status="settled", charged_mc=101).assert_invariants()


def test_settling_more_than_the_hold_is_a_user_error_from_the_command() -> None:
    account = funded_account()
    account.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)
    with pytest.raises(SettleExceedsHold):
        account.settle(hold_id="h", charged_mc=101, gpu_ms=101, rate_mc_per_ms=1, at=T0)


def test_a_settlement_over_its_hold_that_bypasses_the_command_trips_the_assertion() -> None:
    account = funded_account()
    account.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)
    with pytest.raises(AssertionError, match="settle 150"):
        account._settled(
            hold_id="h",
            job_id="j",
            charged_mc=150,
            gpu_ms=150,
            rate_mc_per_ms=1,
            tier="basic",
            cuda_ms=None,
            parts=[{"lot_id": "lot", "charged_mc": 150, "released_mc": 0, "expired_mc": 0}],
            timestamp=T0,
        )


def test_a_tampered_history_does_not_replay() -> None:
    account = funded_account()
    account.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)
    account.settle(hold_id="h", charged_mc=40, gpu_ms=40, rate_mc_per_ms=1, at=T0)
    history = list(account.collect_events())
    settled = history[-1]
    assert isinstance(settled, CreditAccount.HoldSettled)
    # The charge says 40 mc but the parts charge 70 and release 30: 70 mc would vanish.
    settled.__dict__["parts"] = [
        {"lot_id": "lot", "charged_mc": 70, "released_mc": 30, "expired_mc": 0}
    ]
    replayed = None
    for ev in history[:-1]:
        replayed = ev.mutate(replayed)
    with pytest.raises(AssertionError):
        settled.mutate(replayed)


def test_every_credit_event_posts_a_balanced_entry_and_forged_amounts_trip() -> None:
    account = funded_account()
    account.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)
    account.settle(hold_id="h", charged_mc=40, gpu_ms=40, rate_mc_per_ms=1, at=T0)
    for ev in account.collect_events():
        assert sum(p.amount_mc for p in postings_for("u", ev)) == 0
    # eventsourcing makes each event class a dataclass at run time: mypy knows only the fields
    # of the base class's __init__.
    forged = CreditAccount.LotExpired(  # type: ignore[call-arg]
        originator_id=account.id, originator_version=9, timestamp=T0, lot_id="lot", expired_mc=-5
    )
    with pytest.raises(AssertionError, match="movement of -5 mc"):
        postings_for("u", forged)


def test_the_full_scan_finds_held_credit_no_hold_accounts_for() -> None:
    account = funded_account()
    account.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)
    account.assert_invariants()
    lot = account.lots["lot"]
    lot.held_mc, lot.remaining_mc = lot.held_mc + 10, lot.remaining_mc - 10  # still balanced
    lot.assert_invariants()  # the lot alone cannot tell
    with pytest.raises(AssertionError, match="held != holds"):
        account.assert_invariants()
