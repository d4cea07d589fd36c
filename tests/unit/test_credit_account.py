"""CreditAccount by example: spend order, two-phase holds, expiry, adjustments, refunds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.credits import REFUND_LOT_VALIDITY, CreditAccount, LotSource
from domain.errors import (
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidParameters,
    InvalidTransition,
    SettleExceedsHold,
    UnknownHold,
)
from domain.postings import EXPIRED, REVENUE, available, funding, held, postings_for

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def new_account() -> CreditAccount:
    return CreditAccount(user_id="u1", timestamp=T0)


def grant(
    account: CreditAccount,
    lot_id: str,
    mc: int,
    *,
    source: LotSource = LotSource.SUBSCRIPTION,
    valid_from: datetime = T0,
    days: int | None = 30,
) -> None:
    account.grant(
        lot_id=lot_id,
        source=source,
        amount_mc=mc,
        valid_from=valid_from,
        valid_until=None if days is None else valid_from + days * DAY,
        reference=lot_id,
        actor="test",
        reason="test",
        at=T0,
    )


def test_spend_order_soonest_expiry_then_promotional_then_oldest() -> None:
    a = new_account()
    grant(a, "paid-late", 100, days=30)
    grant(a, "never", 100, days=None, source=LotSource.ADMIN)
    grant(a, "paid-soon", 100, days=10)
    grant(a, "promo-soon", 100, days=10, source=LotSource.TRIAL)
    grant(a, "paid-soon-2", 100, days=10)
    a.reserve(hold_id="h", job_id="j", amount_mc=450, at=T0)
    assert list(a.holds["h"].allocations.items()) == [
        ("promo-soon", 100),
        ("paid-soon", 100),
        ("paid-soon-2", 100),
        ("paid-late", 100),
        ("never", 50),
    ]


def test_lots_not_yet_valid_or_past_validity_are_not_spendable() -> None:
    a = new_account()
    grant(a, "future", 100, valid_from=T0 + 5 * DAY)
    grant(a, "now", 40, days=1)
    assert a.available_mc(T0) == 40
    assert a.available_mc(T0 + 6 * DAY) == 100  # "now" ended, "future" began
    with pytest.raises(InsufficientCredits) as e:
        a.reserve(hold_id="h", job_id="j", amount_mc=41, at=T0)
    assert (e.value.requested_mc, e.value.available_mc) == (41, 40)
    assert not a.holds  # a refused reserve records nothing


def test_settle_charges_measured_amount_and_releases_rest_to_same_lots() -> None:
    a = new_account()
    grant(a, "a", 300, days=5)
    grant(a, "b", 1000, days=20)
    a.reserve(hold_id="h", job_id="j", amount_mc=800, at=T0)
    assert a.available_mc(T0) == 500 and a.held_mc == 800
    a.settle(hold_id="h", charged_mc=450, gpu_ms=450, rate_mc_per_ms=1, at=T0)
    assert a.lots["a"].consumed_mc == 300 and a.lots["b"].consumed_mc == 150
    assert a.lots["b"].remaining_mc == 850
    assert a.available_mc(T0) == 850 and a.held_mc == 0
    # A repeat of the same settlement changes nothing; a different one is refused.
    assert a.settle(hold_id="h", charged_mc=450, gpu_ms=450, rate_mc_per_ms=1, at=T0) is False
    with pytest.raises(HoldAlreadyResolved):
        a.settle(hold_id="h", charged_mc=10, gpu_ms=10, rate_mc_per_ms=1, at=T0)
    with pytest.raises(HoldAlreadyResolved):
        a.release(hold_id="h", reason="late", at=T0)


def test_settle_cannot_exceed_hold_or_disagree_with_gpu_time() -> None:
    a = new_account()
    grant(a, "a", 1000)
    a.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)
    with pytest.raises(SettleExceedsHold):
        a.settle(hold_id="h", charged_mc=101, gpu_ms=101, rate_mc_per_ms=1, at=T0)
    with pytest.raises(InvalidParameters):
        a.settle(hold_id="h", charged_mc=50, gpu_ms=49, rate_mc_per_ms=1, at=T0)
    with pytest.raises(UnknownHold):
        a.settle(hold_id="nope", charged_mc=1, gpu_ms=1, rate_mc_per_ms=1, at=T0)
    assert a.holds["h"].status == "open"


def test_release_is_once_and_idempotent() -> None:
    a = new_account()
    grant(a, "a", 1000)
    a.reserve(hold_id="h", job_id="j", amount_mc=600, at=T0)
    assert a.release(hold_id="h", reason="cancelled", at=T0) is True
    assert a.release(hold_id="h", reason="cancelled", at=T0) is False
    assert a.available_mc(T0) == 1000
    with pytest.raises(HoldAlreadyResolved):
        a.settle(hold_id="h", charged_mc=1, gpu_ms=1, rate_mc_per_ms=1, at=T0)


def test_reserve_with_same_id_is_idempotent_and_other_amount_conflicts() -> None:
    a = new_account()
    grant(a, "a", 1000)
    assert a.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0) is True
    assert a.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0) is False
    with pytest.raises(IdempotencyConflict):
        a.reserve(hold_id="h", job_id="j", amount_mc=200, at=T0)
    assert a.held_mc == 100


def test_expiry_takes_unheld_remainder_and_held_part_expires_when_hold_resolves() -> None:
    a = new_account()
    grant(a, "a", 1000, days=1)
    a.reserve(hold_id="h", job_id="j", amount_mc=400, at=T0)
    assert a.expire_due(T0 + DAY) == 1
    assert a.expire_due(T0 + DAY) == 0  # expiring twice does nothing
    lot = a.lots["a"]
    assert (lot.remaining_mc, lot.held_mc, lot.expired_mc) == (0, 400, 600)
    a.settle(hold_id="h", charged_mc=150, gpu_ms=150, rate_mc_per_ms=1, at=T0 + DAY)
    assert (lot.remaining_mc, lot.held_mc, lot.consumed_mc, lot.expired_mc) == (0, 0, 150, 850)


def test_refund_returns_to_same_lots_or_a_new_refund_lot_when_they_expired() -> None:
    a = new_account()
    grant(a, "short", 100, days=1)
    grant(a, "long", 1000, days=60)
    a.reserve(hold_id="h", job_id="j", amount_mc=500, at=T0)
    a.settle(hold_id="h", charged_mc=300, gpu_ms=300, rate_mc_per_ms=1, at=T0)
    a.expire_due(T0 + 2 * DAY)
    later = T0 + 2 * DAY
    assert a.refund(hold_id="h", reason="bad image", actor="admin", at=later) == 300
    assert a.refund(hold_id="h", reason="bad image", actor="admin", at=later) == 0
    assert a.lots["long"].refunded_mc == 200 and a.lots["long"].remaining_mc == 800 + 200
    [refund_lot] = [lot for lot in a.lots.values() if lot.source == LotSource.REFUND.value]
    assert refund_lot.amount_mc == 100
    assert refund_lot.valid_until == later + REFUND_LOT_VALIDITY


def test_refund_needs_a_settled_charged_hold() -> None:
    a = new_account()
    grant(a, "a", 1000)
    a.reserve(hold_id="h", job_id="j", amount_mc=100, at=T0)
    with pytest.raises(InvalidTransition):
        a.refund(hold_id="h", reason="r", actor="admin", at=T0)
    a.settle(hold_id="h", charged_mc=0, gpu_ms=0, rate_mc_per_ms=1, at=T0)
    with pytest.raises(InvalidTransition):
        a.refund(hold_id="h", reason="r", actor="admin", at=T0)


def test_adjustments_add_a_lot_or_debit_in_spend_order() -> None:
    a = new_account()
    grant(a, "a", 1000)
    a.adjust(adjustment_id="plus", amount_mc=500, reason="goodwill", actor="admin", at=T0)
    assert a.available_mc(T0) == 1500
    a.adjust(adjustment_id="minus", amount_mc=-1200, reason="abuse", actor="admin", at=T0)
    assert a.lots["a"].debited_mc == 1000
    assert a.available_mc(T0) == 300
    with pytest.raises(InsufficientCredits):
        a.adjust(adjustment_id="too-much", amount_mc=-301, reason="x", actor="admin", at=T0)
    with pytest.raises(IdempotencyConflict):
        a.adjust(adjustment_id="plus", amount_mc=501, reason="goodwill", actor="admin", at=T0)
    with pytest.raises(InvalidParameters):
        a.adjust(adjustment_id="z", amount_mc=0, reason="x", actor="admin", at=T0)


def test_grant_validation_and_idempotency() -> None:
    a = new_account()
    grant(a, "a", 1000)
    grant(a, "a", 1000)  # repeat: no-op
    assert len(a.lots) == 1 and a.lots["a"].amount_mc == 1000
    with pytest.raises(IdempotencyConflict):
        grant(a, "a", 999)
    with pytest.raises(InvalidParameters):
        grant(a, "b", 0)
    with pytest.raises(ValueError, match="timezone"):
        a.reserve(hold_id="h", job_id="j", amount_mc=1, at=datetime(2026, 1, 1))


def test_every_event_posts_balanced_entries_to_the_right_accounts() -> None:
    a = new_account()
    grant(a, "a", 1000, days=1, source=LotSource.TRIAL)
    a.reserve(hold_id="h1", job_id="j1", amount_mc=600, at=T0)
    a.settle(hold_id="h1", charged_mc=200, gpu_ms=200, rate_mc_per_ms=1, at=T0)
    a.reserve(hold_id="h2", job_id="j2", amount_mc=300, at=T0)
    a.expire_due(T0 + DAY)
    a.release(hold_id="h2", reason="void", at=T0 + DAY)
    a.refund(hold_id="h1", reason="r", actor="admin", at=T0 + DAY)
    balances: dict[str, int] = {}
    for ev in a.collect_events():
        postings = postings_for("u1", ev)
        assert sum(p.amount_mc for p in postings) == 0
        for p in postings:
            balances[p.account] = balances.get(p.account, 0) + p.amount_mc
    assert balances[funding("trial")] == -1000
    assert balances[held("u1")] == 0
    assert balances[REVENUE] == 0  # charged 200, refunded 200
    assert balances[EXPIRED] == 800  # 500 unheld at expiry + 300 released after it
    assert balances[available("u1")] == 200  # the refund, as a new lot
