"""The operator's admin rules on the pure domain (the library's in-memory persistence):
deactivating an account, a tester grant's plan reverting at the end of its window, and an
enterprise contract's monthly credits. Each rule once, repeated, and replayed from its events.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate

from domain import ids
from domain.application import PinkseaApplication
from domain.credits import CreditAccount, LotSource
from domain.errors import AccountDeactivated, InvalidParameters, NotFound
from domain.jobs import JobParameters, JobStatus
from domain.periods import add_months, contract_period
from domain.plans import get_plan
from domain.subscription import CustomTerms, Subscription

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
DAY = timedelta(days=1)
TINY = JobParameters(model="tiny-sd", prompt="a pink sea", steps=4, width=64, height=64)
TERMS = CustomTerms(credits_per_month=20_000, tier="dedicated", concurrent_jobs=4, storage_gb=50)


@pytest.fixture
def app() -> Any:
    application = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield application
    application.close()


@pytest.fixture
def user(app: PinkseaApplication) -> str:
    user_id = f"user-{uuid4()}"
    app.register_user(user_id, T0)
    return user_id


def replayed(app: PinkseaApplication, aggregate_id: UUID) -> Any:
    """The aggregate rebuilt from its stored events alone (no cache, no snapshot)."""
    aggregate: Aggregate | None = None
    for ev in app.events.get(aggregate_id):
        assert isinstance(ev, Aggregate.Event)
        aggregate = ev.mutate(aggregate)
    return aggregate


def event_types(app: PinkseaApplication, aggregate_id: UUID) -> list[str]:
    return [type(ev).__name__ for ev in app.events.get(aggregate_id)]


def submit(app: PinkseaApplication, user: str, key: str, at: datetime = T0) -> Any:
    return app.submit_job(user, idempotency_key=key, params=TINY, at=at)


def trial_mc() -> int:
    return get_plan("trial").credits_per_month_mc


# ---------------------------------------------------------------------------- deactivation


def test_deactivation_cancels_queued_jobs_voids_their_holds_and_stops_running_ones(
    app: PinkseaApplication, user: str
) -> None:
    queued = submit(app, user, "queued")
    dispatched = submit(app, user, "dispatched")
    running = submit(app, user, "running")
    app.record_dispatch(dispatched.job_id, attempt=1, worker_id="w1", at=T0)
    app.record_dispatch(running.job_id, attempt=1, worker_id="w2", at=T0)
    app.record_start(running.job_id, attempt=1, worker_id="w2", gpu="T4", at=T0)
    assert app.account(user).held_mc == queued.hold_mc + dispatched.hold_mc + running.hold_mc

    result = app.deactivate_user(user, reason="chargeback fraud", actor="admin:root", at=T0)
    assert result.changed and result.deactivated
    assert set(result.cancelled_jobs) == {queued.job_id, dispatched.job_id}
    assert result.stopping_jobs == (running.job_id,)
    for job_id in result.cancelled_jobs:
        assert app.job(job_id).status == JobStatus.CANCELLED.value
    assert app.job(running.job_id).cancel_requested
    account = app.account(user)
    assert account.deactivated and account.held_mc == running.hold_mc  # only the running one
    assert account.available_mc(T0) == trial_mc() - running.hold_mc
    assert result.version == account.version

    # The running job's stop is billed like the owner's cancel; every hold resolved once.
    stopped = app.record_cancelled_run(running.job_id, attempt=1, gpu_ms=120, at=T0)
    assert stopped.applied and stopped.charged_mc == 120
    account = app.account(user)
    assert account.held_mc == 0 and account.available_mc(T0) == trial_mc() - 120
    assert not account.open_holds


def test_deactivation_is_idempotent_and_refuses_new_jobs_recording_nothing(
    app: PinkseaApplication, user: str
) -> None:
    first = app.deactivate_user(user, reason="abuse", actor="admin:root", at=T0)
    version = app.account(user).version
    again = app.deactivate_user(user, reason="abuse", actor="admin:root", at=T0 + DAY)
    assert first.changed and not again.changed and again.deactivated
    assert app.account(user).version == version == again.version  # nothing more recorded
    with pytest.raises(AccountDeactivated, match="deactivated"):
        submit(app, user, "after")
    with pytest.raises(NotFound):
        app.job(ids.job_id(user, "after"))  # no job, no rejection recorded
    # The aggregate refuses a hold on its own too (the invariant where state changes).
    with pytest.raises(AccountDeactivated):
        app.account(user).reserve(hold_id="h", job_id="j", amount_mc=1000, at=T0)
    assert event_types(app, ids.account_id(user))[-1] == "Deactivated"


def test_reactivation_lets_the_account_run_jobs_again(app: PinkseaApplication, user: str) -> None:
    app.deactivate_user(user, reason="abuse", actor="admin:root", at=T0)
    back = app.reactivate_user(user, reason="appeal upheld", actor="admin:root", at=T0 + DAY)
    assert back.changed and not back.deactivated
    assert not app.reactivate_user(user, reason="again", actor="admin:root", at=T0).changed
    assert submit(app, user, "back", T0 + DAY).status == JobStatus.ACCEPTED.value
    replay = replayed(app, ids.account_id(user))
    assert isinstance(replay, CreditAccount) and replay.deactivated is False
    assert event_types(app, ids.account_id(user))[-3:] == [
        "Deactivated",
        "Reactivated",
        "CreditsReserved",
    ]


def test_deactivation_needs_a_reason_and_a_registered_user(
    app: PinkseaApplication, user: str
) -> None:
    with pytest.raises(InvalidParameters, match="reason"):
        app.deactivate_user(user, reason="  ", actor="admin:root", at=T0)
    with pytest.raises(NotFound):
        app.deactivate_user("nobody", reason="x", actor="admin:root", at=T0)
    assert not app.account(user).deactivated


def test_deactivated_state_survives_replay_and_grants_still_land(
    app: PinkseaApplication, user: str
) -> None:
    job = submit(app, user, "j")
    app.deactivate_user(user, reason="abuse", actor="admin:root", at=T0)
    # Credit still arrives (a paid invoice, an admin grant) and expires; it moves no hold.
    app.grant_credits(
        user,
        grant_id="g",
        source=LotSource.ADMIN,
        amount_mc=7000,
        valid_from=T0,
        valid_until=None,
        actor="admin:root",
        reason="goodwill",
        at=T0,
    )
    replay = replayed(app, ids.account_id(user))
    live = app.account(user)
    assert replay.deactivated and replay.available_mc(T0) == live.available_mc(T0)
    assert replay.holds[str(job.job_id)].status == "released"


# ------------------------------------------------------------------------ tester windows


def grant_tester(
    app: PinkseaApplication, user: str, grant_id: str, *, until: datetime, at: datetime = T0
) -> Any:
    return app.grant_tester_plan(
        user,
        grant_id=grant_id,
        admin="admin:root",
        credits=1000,
        valid_from=at,
        valid_until=until,
        reason="beta",
        at=at,
    )


def test_a_trial_users_tester_plan_reverts_to_the_trial_at_valid_until_once(
    app: PinkseaApplication, user: str
) -> None:
    until = T0 + 14 * DAY
    grant_tester(app, user, "g1", until=until)
    sub = app.subscription(user)
    assert (sub.plan_slug, sub.status, sub.tester_until) == ("tester", "active", until)
    assert not app.end_tester_plan(user, until - timedelta(seconds=1)).changed
    assert app.end_tester_plan(user, until).changed
    sub = app.subscription(user)
    assert (sub.plan_slug, sub.status, sub.tester_until) == ("trial", "trialing", None)
    assert not app.end_tester_plan(user, until + DAY).changed  # exactly once
    # The tester credits expire with their own lot, by the lot expiry.
    assert app.expire_due(user, until).changed
    assert ids.lot_id("tester", "g1") in {
        lot.lot_id for lot in app.account(user).lots.values() if lot.expired
    }
    types = event_types(app, ids.subscription_id(user))
    assert types.count("TesterPlanEnded") == 1 and types.count("TesterPlanGranted") == 1
    replay = replayed(app, ids.subscription_id(user))
    assert (replay.plan_slug, replay.status, replay.tester_until) == ("trial", "trialing", None)


def test_a_repeated_grant_changes_nothing_and_a_later_window_extends_the_plan(
    app: PinkseaApplication, user: str
) -> None:
    grant_tester(app, user, "g1", until=T0 + 10 * DAY)
    assert not grant_tester(app, user, "g1", until=T0 + 10 * DAY).changed
    grant_tester(app, user, "g2", until=T0 + 30 * DAY, at=T0 + DAY)
    grant_tester(app, user, "g3", until=T0 + 20 * DAY, at=T0 + 2 * DAY)  # earlier: no effect
    assert app.subscription(user).tester_until == T0 + 30 * DAY
    assert not app.end_tester_plan(user, T0 + 25 * DAY).changed
    assert app.end_tester_plan(user, T0 + 30 * DAY).changed
    assert app.subscription(user).plan_slug == "trial"
    # A grant repeated after the revert (an admin's retry) does not put the plan back.
    assert not grant_tester(app, user, "g2", until=T0 + 30 * DAY, at=T0 + DAY).changed
    assert app.subscription(user).plan_slug == "trial"


def test_a_paid_users_tester_plan_reverts_to_the_paid_plan(
    app: PinkseaApplication, user: str
) -> None:
    app.start_subscription(
        user,
        plan="pro",
        external_id="sub_1",
        period_start=T0,
        period_end=T0 + 30 * DAY,
        at=T0,
    )
    grant_tester(app, user, "g1", until=T0 + 7 * DAY)
    app.record_payment_failed(user, invoice_id="in_1", at=T0 + DAY)  # Stripe's word meanwhile
    assert app.end_tester_plan(user, T0 + 7 * DAY).changed
    sub = app.subscription(user)
    assert (sub.plan_slug, sub.status, sub.external_id) == ("pro", "past_due", "sub_1")


def test_an_enterprise_tester_window_reverts_to_the_contract_and_its_terms(
    app: PinkseaApplication, user: str
) -> None:
    app.change_plan(
        user, to_plan="enterprise", actor="admin:root", reason="deal", at=T0, custom_terms=TERMS
    )
    grant_tester(app, user, "g1", until=T0 + 40 * DAY, at=T0 + DAY)
    # No contract period while the tester plan is in force.
    assert not app.start_contract_period(user, T0 + 35 * DAY).changed
    assert app.end_tester_plan(user, T0 + 40 * DAY).changed
    sub = app.subscription(user)
    assert (sub.plan_slug, sub.custom_terms, sub.status) == ("enterprise", TERMS, "active")
    # Back on the contract: the period that began meanwhile was granted with the revert.
    assert (sub.period_start, sub.period_end) == (add_months(T0, 1), add_months(T0, 2))
    assert not app.start_contract_period(user, T0 + 40 * DAY).changed


def test_no_revert_when_the_plan_moved_on_or_had_no_window(
    app: PinkseaApplication, user: str
) -> None:
    grant_tester(app, user, "g1", until=T0 + 7 * DAY)
    app.change_plan(user, to_plan="studio", actor="admin:root", reason="upgrade", at=T0 + DAY)
    assert not app.end_tester_plan(user, T0 + 8 * DAY).changed
    assert app.subscription(user).plan_slug == "studio"
    other = f"user-{uuid4()}"
    app.register_user(other, T0)
    app.change_plan(other, to_plan="tester", actor="admin:root", reason="open-ended", at=T0)
    assert not app.end_tester_plan(other, T0 + 365 * DAY).changed  # assigned with no window


# --------------------------------------------------------------------- contract periods


def enterprise(app: PinkseaApplication, user: str, at: datetime = T0, **terms: Any) -> Any:
    return app.change_plan(
        user,
        to_plan="enterprise",
        actor="admin:root",
        reason="negotiated deal",
        at=at,
        custom_terms=CustomTerms(**{**TERMS, **terms}),  # type: ignore[typeddict-item]
    )


def contract_lots(app: PinkseaApplication, user: str) -> list[tuple[datetime, Any, int]]:
    lots = [lot for lot in app.account(user).lots.values() if lot.source == "contract"]
    return sorted((lot.valid_from, lot.valid_until, lot.amount_mc) for lot in lots)


def test_a_contract_grants_each_months_credits_once_valid_to_the_periods_end(
    app: PinkseaApplication, user: str
) -> None:
    assert enterprise(app, user).changed
    month = TERMS["credits_per_month"] * 1000
    assert contract_lots(app, user) == [(T0, add_months(T0, 1), month)]  # the first at once
    assert not app.start_contract_period(user, T0 + 10 * DAY).changed
    second = app.start_contract_period(user, add_months(T0, 1))
    assert second.changed
    assert not app.start_contract_period(user, add_months(T0, 1) + DAY).changed  # once
    assert contract_lots(app, user) == [
        (T0, add_months(T0, 1), month),
        (add_months(T0, 1), add_months(T0, 2), month),
    ]
    sub = app.subscription(user)
    assert (sub.period_start, sub.period_end) == (add_months(T0, 1), add_months(T0, 2))
    lot_id = ids.lot_id(
        LotSource.CONTRACT.value, ids.contract_period_reference(sub.id, add_months(T0, 1))
    )
    assert app.account(user).lots[lot_id].amount_mc == month
    # Replayed from the events alone, the subscription knows what it granted.
    replay = replayed(app, sub.id)
    assert isinstance(replay, Subscription)
    assert replay.due_contract_period(add_months(T0, 1) + DAY) is None
    assert replay.due_contract_period(add_months(T0, 2)) == (add_months(T0, 2), add_months(T0, 3))


def test_after_downtime_only_the_current_period_is_granted(
    app: PinkseaApplication, user: str
) -> None:
    enterprise(app, user)
    app.start_contract_period(user, add_months(T0, 3) + 5 * DAY)
    starts = [start for start, _, _ in contract_lots(app, user)]
    assert starts == [T0, add_months(T0, 3)]


def test_new_terms_apply_from_the_next_period(app: PinkseaApplication, user: str) -> None:
    enterprise(app, user)
    assert enterprise(app, user, T0 + 5 * DAY, credits_per_month=50_000).changed
    assert len(contract_lots(app, user)) == 1  # the running period was granted already
    app.start_contract_period(user, add_months(T0, 1))
    assert [mc for _, _, mc in contract_lots(app, user)] == [20_000_000, 50_000_000]


def test_no_contract_periods_beside_a_stripe_subscription_or_off_enterprise(
    app: PinkseaApplication, user: str
) -> None:
    app.start_subscription(
        user, plan="pro", external_id="sub_1", period_start=T0, period_end=T0 + 30 * DAY, at=T0
    )
    enterprise(app, user)  # Stripe keeps billing: its invoices grant the credits
    assert contract_lots(app, user) == []
    assert not app.start_contract_period(user, add_months(T0, 2)).changed
    other = f"user-{uuid4()}"
    app.register_user(other, T0)
    enterprise(app, other)
    app.change_plan(other, to_plan="studio", actor="admin:root", reason="downgrade", at=T0 + DAY)
    assert not app.start_contract_period(other, add_months(T0, 1)).changed
    assert len(contract_lots(app, other)) == 1


def test_contract_lots_are_paid_credit_not_promotional(app: PinkseaApplication, user: str) -> None:
    enterprise(app, user)
    lot = next(lot for lot in app.account(user).lots.values() if lot.source == "contract")
    trial = next(lot for lot in app.account(user).lots.values() if lot.source == "trial")
    assert trial.spend_order_key() < lot.spend_order_key()


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        (datetime(2026, 1, 31, 9, tzinfo=UTC), 1, datetime(2026, 2, 28, 9, tzinfo=UTC)),
        (datetime(2026, 1, 31, 9, tzinfo=UTC), 2, datetime(2026, 3, 31, 9, tzinfo=UTC)),
        (datetime(2027, 12, 31, tzinfo=UTC), 2, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 5, 1, tzinfo=UTC), 12, datetime(2027, 5, 1, tzinfo=UTC)),
    ],
)
def test_months_count_from_the_anchor_with_the_day_clamped(
    anchor: datetime, months: int, expected: datetime
) -> None:
    assert add_months(anchor, months) == expected


def test_the_period_containing_an_instant() -> None:
    anchor = datetime(2026, 1, 31, 9, tzinfo=UTC)
    assert contract_period(anchor, anchor) == (anchor, add_months(anchor, 1))
    just_before = datetime(2026, 2, 28, 8, 59, tzinfo=UTC)
    assert contract_period(anchor, just_before) == (anchor, add_months(anchor, 1))
    assert contract_period(anchor, datetime(2026, 3, 30, tzinfo=UTC))[0] == add_months(anchor, 1)
