"""The command side end to end, on in-memory persistence and on the real PostgreSQL.

Every test runs twice: ``[memory]`` with the library's in-memory recorder and ``[postgres]``
against the session's own database (``make services`` must be running for that one).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain import ids
from domain.application import PinkseaApplication
from domain.credits import LotSource
from domain.errors import IdempotencyConflict, InvalidParameters, InvalidTransition, NotFound
from domain.job_lifecycle import MAX_ATTEMPTS, Fault
from domain.jobs import IDEMPOTENCY_KEY_TTL, GenerationJob, ImageRecord, JobParameters, JobStatus
from domain.plans import get_plan
from domain.postings import postings_for
from eventstore.persistence import event_store_env

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
TINY = JobParameters(model="tiny-sd", prompt="a pink sea", steps=4, width=64, height=64)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def app(request: pytest.FixtureRequest) -> Iterator[PinkseaApplication]:
    if request.param == "memory":
        application = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    else:
        database_url = request.getfixturevalue("database_url")
        application = PinkseaApplication(env=event_store_env(database_url, pool_size=20))
    yield application
    application.close()


@pytest.fixture
def user(app: PinkseaApplication) -> str:
    user_id = f"user-{uuid4()}"
    app.register_user(user_id, T0)
    return user_id


def submit(app: PinkseaApplication, user: str, key: str = "k1", params: JobParameters = TINY):
    return app.submit_job(user, idempotency_key=key, params=params, at=T0)


def run_to_start(app: PinkseaApplication, job_id, attempt: int = 1) -> None:
    app.record_dispatch(job_id, attempt=attempt, worker_id=f"w{attempt}", at=T0)
    app.record_start(job_id, attempt=attempt, worker_id=f"w{attempt}", gpu="T4", at=T0)


def trial_mc() -> int:
    return get_plan("trial").credits_per_month_mc


def test_sign_up_starts_a_trial_with_its_credits_once(app: PinkseaApplication, user: str) -> None:
    again = app.register_user(user, T0 + timedelta(days=1))
    assert again.changed is False
    assert app.subscription(user).plan.slug == "trial"
    assert app.account(user).available_mc(T0) == trial_mc()


def test_submit_holds_credit_and_completion_settles_exact_gpu_ms(
    app: PinkseaApplication, user: str
) -> None:
    result = submit(app, user)
    assert result.status == JobStatus.ACCEPTED.value and result.created
    assert result.hold_mc > 0 and result.budget_ms == result.hold_mc
    assert app.account(user).held_mc == result.hold_mc
    run_to_start(app, result.job_id)
    settled = app.complete_job(result.job_id, attempt=1, gpu_ms=377, cuda_ms=370, images=[], at=T0)
    assert settled.applied and settled.charged_mc == 377
    account = app.account(user)
    assert account.held_mc == 0
    assert account.available_mc(T0) == trial_mc() - 377
    assert settled.position >= result.position


def test_repeated_submit_returns_the_first_result_and_other_params_conflict(
    app: PinkseaApplication, user: str
) -> None:
    first = submit(app, user)
    again = submit(app, user)
    assert (again.job_id, again.hold_mc, again.created) == (first.job_id, first.hold_mc, False)
    assert app.account(user).held_mc == first.hold_mc  # held once
    other = JobParameters(model="tiny-sd", prompt="another", steps=4, width=64, height=64)
    with pytest.raises(IdempotencyConflict):
        submit(app, user, params=other)


def test_invalid_parameters_record_nothing(app: PinkseaApplication, user: str) -> None:
    bad = JobParameters(model="tiny-sd", prompt="x", steps=4, width=63, height=64)
    with pytest.raises(InvalidParameters, match="width must be a multiple of 8"):
        submit(app, user, params=bad)
    with pytest.raises(NotFound):
        app.job(ids.job_id(user, "k1"))


def test_rejections_have_reason_codes_and_hold_nothing(app: PinkseaApplication, user: str) -> None:
    flux = JobParameters(model="flux-dev", prompt="x", steps=4, width=512, height=512)
    assert submit(app, user, "flux", flux).rejection == "model_not_in_plan"
    huge = JobParameters(
        model="sd-1.5", prompt="x", steps=150, width=1024, height=1024, batch_size=8
    )
    rejected = submit(app, user, "huge", huge)
    assert rejected.status == "rejected" and rejected.rejection == "insufficient_credits"
    assert "mc are available" in (rejected.detail or "")
    over_quota = app.submit_job(
        user, idempotency_key="quota", params=TINY, at=T0, storage_used_bytes=5 * 1024**3
    )
    assert over_quota.rejection == "storage_quota"
    assert app.account(user).held_mc == 0
    # A refusal saves nothing: no job under the key, nothing in the store.
    for key in ("flux", "huge", "quota"):
        with pytest.raises(NotFound):
            app.job(ids.job_id(user, key))
    assert rejected.job_id is None and rejected.position == app.current_position()
    # Nothing changed, so the repeated refused submission is refused again, decided afresh.
    assert submit(app, user, "flux", flux).rejection == "model_not_in_plan"


def test_a_refused_submission_retried_with_its_key_after_a_top_up_is_accepted(
    app: PinkseaApplication, user: str
) -> None:
    big = JobParameters(
        model="sd-1.5", prompt="x", steps=150, width=1024, height=1024, batch_size=8
    )
    refused = submit(app, user, "big", big)
    assert refused.rejection == "insufficient_credits"
    app.grant_credits(
        user,
        grant_id="top-up",
        source=LotSource.ADMIN,
        amount_mc=10**9,
        valid_from=T0,
        valid_until=None,
        actor="admin",
        reason="top-up",
        at=T0,
    )
    accepted = submit(app, user, "big", big)
    assert accepted.status == "accepted" and accepted.created
    assert accepted.job_id == ids.job_id(user, "big")  # the key's first job: nothing before
    replay = submit(app, user, "big", big)
    assert (replay.job_id, replay.created) == (accepted.job_id, False)
    assert app.account(user).held_mc == accepted.hold_mc


def test_a_key_answers_for_24_hours_then_submits_a_new_job(
    app: PinkseaApplication, user: str
) -> None:
    first = submit(app, user, "daily")
    just_before = app.submit_job(
        user,
        idempotency_key="daily",
        params=TINY,
        at=T0 + IDEMPOTENCY_KEY_TTL - timedelta(seconds=1),
    )
    assert (just_before.job_id, just_before.created) == (first.job_id, False)
    later = T0 + IDEMPOTENCY_KEY_TTL
    second = app.submit_job(user, idempotency_key="daily", params=TINY, at=later)
    assert second.created and second.job_id == ids.job_id(user, "daily", 1)
    assert app.account(user).held_mc == first.hold_mc + second.hold_mc
    # The expired key is free for any body; the new job is its answer for the next 24 hours.
    other = JobParameters(model="tiny-sd", prompt="another", steps=4, width=64, height=64)
    with pytest.raises(IdempotencyConflict):
        app.submit_job(user, idempotency_key="daily", params=other, at=later)
    third = app.submit_job(
        user, idempotency_key="daily", params=other, at=later + IDEMPOTENCY_KEY_TTL
    )
    assert third.created and third.job_id == ids.job_id(user, "daily", 2)


def test_a_rejection_stored_before_is_no_answer_for_its_key(
    app: PinkseaApplication, user: str
) -> None:
    # Rejections used to be saved as jobs; one such job must not answer its key's retry.
    old = GenerationJob.submit(
        user_id=user, idempotency_key="old", params=TINY, tier="basic", at=T0
    )
    old._rejected(reason="insufficient_credits", detail="then", timestamp=T0)
    app.save(old)
    retried = submit(app, user, "old")
    assert retried.created and retried.job_id == ids.job_id(user, "old", 1)
    assert app.job(old.id).status == JobStatus.REJECTED.value  # history stays as it was


def test_concurrent_submissions_with_one_key_make_one_job(
    app: PinkseaApplication, user: str
) -> None:
    later = T0 + IDEMPOTENCY_KEY_TTL  # the key's first job has expired: they race for use 1
    submit(app, user, "race")
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: app.submit_job(user, idempotency_key="race", params=TINY, at=later),
                range(8),
            )
        )
    assert {r.job_id for r in results} == {ids.job_id(user, "race", 1)}
    assert [r.created for r in results].count(True) == 1
    assert app.account(user).held_mc == 2 * results[0].hold_mc


def test_queue_limit_counts_unfinished_jobs(app: PinkseaApplication, user: str) -> None:
    limit = get_plan("trial").max_open_jobs
    for i in range(limit):
        assert submit(app, user, f"k{i}").status == "accepted"
    assert submit(app, user, "one-more").rejection == "queue_limit"


def test_cancel_before_start_voids_the_hold(app: PinkseaApplication, user: str) -> None:
    job = submit(app, user)
    app.record_dispatch(job.job_id, attempt=1, worker_id="w1", at=T0)
    assert app.cancel_job(job.job_id, T0).changed
    assert app.cancel_job(job.job_id, T0).changed is False
    assert app.job(job.job_id).status == "cancelled"
    assert app.account(user).available_mc(T0) == trial_mc()
    # The worker's late start and finish reports change nothing: it is never billed.
    app.record_start(job.job_id, attempt=1, worker_id="w1", gpu="T4", at=T0)
    late = app.complete_job(job.job_id, attempt=1, gpu_ms=100, cuda_ms=None, images=[], at=T0)
    assert late.applied is False
    assert app.account(user).available_mc(T0) == trial_mc()


def test_cancel_while_running_bills_the_time_used(app: PinkseaApplication, user: str) -> None:
    job = submit(app, user)
    run_to_start(app, job.job_id)
    app.cancel_job(job.job_id, T0)
    assert app.job(job.job_id).cancel_requested and app.job(job.job_id).status == "running"
    stopped = app.record_cancelled_run(job.job_id, attempt=1, gpu_ms=120, at=T0)
    assert stopped.charged_mc == 120 and stopped.job_status == "cancelled"
    assert app.account(user).available_mc(T0) == trial_mc() - 120


def test_gpu_time_past_the_budget_is_not_billed(app: PinkseaApplication, user: str) -> None:
    job = submit(app, user)
    run_to_start(app, job.job_id)
    settled = app.complete_job(
        job.job_id, attempt=1, gpu_ms=job.budget_ms + 250, cuda_ms=None, images=[], at=T0
    )
    assert settled.charged_mc == job.hold_mc


def test_retryable_failure_requeues_then_platform_failure_voids(
    app: PinkseaApplication, user: str
) -> None:
    job = submit(app, user)
    for attempt in range(1, MAX_ATTEMPTS):
        run_to_start(app, job.job_id, attempt)
        r = app.fail_job(
            job.job_id,
            attempt=attempt,
            reason="oom",
            retryable=True,
            fault=Fault.PLATFORM,
            gpu_ms=50,
            at=T0,
        )
        assert r.job_status == "accepted" and r.charged_mc == 0
        assert app.account(user).held_mc == job.hold_mc  # the hold is kept for the retry
    run_to_start(app, job.job_id, MAX_ATTEMPTS)
    final = app.fail_job(
        job.job_id,
        attempt=MAX_ATTEMPTS,
        reason="oom",
        retryable=True,
        fault=Fault.PLATFORM,
        gpu_ms=50,
        at=T0,
    )
    assert final.job_status == "failed" and final.charged_mc == 0
    assert app.account(user).available_mc(T0) == trial_mc()


def test_user_fault_failure_bills_the_time_used(app: PinkseaApplication, user: str) -> None:
    job = submit(app, user)
    run_to_start(app, job.job_id)
    r = app.fail_job(
        job.job_id,
        attempt=1,
        reason="prompt refused by the safety checker",
        retryable=False,
        fault=Fault.USER,
        gpu_ms=90,
        at=T0,
    )
    assert r.job_status == "failed" and r.charged_mc == 90


def test_an_abandoned_attempt_is_never_billed(app: PinkseaApplication, user: str) -> None:
    job = submit(app, user)
    run_to_start(app, job.job_id, 1)
    # The worker of attempt 1 stopped heartbeating: the scheduler re-dispatches.
    run_to_start(app, job.job_id, 2)
    stale = app.complete_job(job.job_id, attempt=1, gpu_ms=999, cuda_ms=None, images=[], at=T0)
    assert stale.applied is False
    done = app.complete_job(job.job_id, attempt=2, gpu_ms=200, cuda_ms=None, images=[], at=T0)
    assert done.applied and done.charged_mc == 200
    assert app.account(user).available_mc(T0) == trial_mc() - 200


def test_dispatch_past_the_attempt_cap_fails_the_job_and_voids_the_hold(
    app: PinkseaApplication, user: str
) -> None:
    job = submit(app, user)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        run_to_start(app, job.job_id, attempt)
    app.record_dispatch(job.job_id, attempt=MAX_ATTEMPTS + 1, worker_id="w", at=T0)
    assert app.job(job.job_id).status == "failed"
    assert app.account(user).held_mc == 0


def test_refund_returns_the_charge(app: PinkseaApplication, user: str) -> None:
    job = submit(app, user)
    run_to_start(app, job.job_id)
    app.complete_job(job.job_id, attempt=1, gpu_ms=300, cuda_ms=None, images=[], at=T0)
    assert app.refund_job(job.job_id, reason="blank image", actor="admin", at=T0).changed
    assert app.refund_job(job.job_id, reason="blank image", actor="admin", at=T0).changed is False
    assert app.account(user).available_mc(T0) == trial_mc()
    other = submit(app, user, "k2")
    app.cancel_job(other.job_id, T0)
    with pytest.raises(InvalidTransition):
        app.refund_job(other.job_id, reason="r", actor="admin", at=T0)


def test_image_deletion_is_an_event_once_and_only_by_the_owner(
    app: PinkseaApplication, user: str
) -> None:
    job = submit(app, user)
    run_to_start(app, job.job_id)
    images: list[ImageRecord] = [
        {"name": f"{job.job_id}-{i}", "key": f"k{i}.png", "thumbnail_key": f"k{i}.webp",
         "size_bytes": 100 + i, "width": 64, "height": 64}
        for i in range(2)
    ]  # fmt: skip
    app.complete_job(job.job_id, attempt=1, gpu_ms=300, cuda_ms=None, images=images, at=T0)
    name = images[0]["name"]
    later = T0 + timedelta(hours=1)

    for someone, image in (("someone-else", name), (user, "no-such-image")):
        with pytest.raises(NotFound):
            app.delete_image(job.job_id, user_id=someone, name=image, at=later)
    with pytest.raises(NotFound):
        app.delete_image(uuid4(), user_id=user, name=name, at=later)

    first = app.delete_image(job.job_id, user_id=user, name=name, at=later)
    assert first.changed and first.position > job.position
    again = app.delete_image(job.job_id, user_id=user, name=name, at=later + timedelta(hours=1))
    assert again.changed is False  # a repeated delete records nothing
    deleted = app.job(job.job_id)
    assert deleted.deleted_images == {name: later}
    assert [i["name"] for i in deleted.images] == [i["name"] for i in images]  # as produced
    stored = list(app.repository.event_store.get(job.job_id))
    assert sum(type(e).__name__ == "ImageDeleted" for e in stored) == 1
    # The hold and the charge are untouched: deleting an image is not a billing event.
    assert deleted.charged_mc == 300 and app.account(user).held_mc == 0


def test_subscription_lifecycle_grants_each_paid_period_once(
    app: PinkseaApplication, user: str
) -> None:
    start, end = T0, T0 + timedelta(days=30)
    app.start_subscription(
        user, plan="pro", external_id="sub_1", period_start=start, period_end=end, at=T0
    )
    for _ in range(2):  # the same invoice twice grants once
        app.renew_period(user, invoice_id="in_1", period_start=start, period_end=end, at=T0)
    pro_mc = get_plan("pro").credits_per_month_mc
    assert app.account(user).available_mc(T0) == trial_mc() + pro_mc
    app.record_payment_failed(user, invoice_id="in_2", at=end)
    assert app.submit_job(user, idempotency_key="late", params=TINY, at=end).rejection == (
        "payment_failed"
    )
    app.renew_period(
        user, invoice_id="in_2", period_start=end, period_end=end + timedelta(days=30), at=end
    )
    assert app.subscription(user).status == "active"
    app.schedule_cancellation(user, end)
    app.revoke_cancellation(user, end)
    assert app.subscription(user).cancel_at is None
    app.end_subscription(user, reason="cancelled", at=end + timedelta(days=30))
    assert app.subscription(user).plan.slug == "trial"


def test_expiry_runs_at_valid_until_and_is_idempotent(app: PinkseaApplication, user: str) -> None:
    after_trial = T0 + timedelta(days=31)
    assert app.expire_due(user, after_trial).changed
    assert app.expire_due(user, after_trial).changed is False
    assert app.account(user).available_mc(after_trial) == 0


def test_tester_plan_and_grants_are_audited_events(app: PinkseaApplication, user: str) -> None:
    app.grant_tester_plan(
        user,
        grant_id="g1",
        admin="admin@pinksea",
        credits=1000,
        valid_from=T0,
        valid_until=T0 + timedelta(days=7),
        reason="QA for the Flux launch",
        at=T0,
    )
    assert app.subscription(user).plan.slug == "tester"
    flux = JobParameters(model="flux-schnell", prompt="x", steps=4, width=512, height=512)
    assert submit(app, user, "flux", flux).status == "accepted"
    app.grant_credits(
        user,
        grant_id="promo-7",
        source=LotSource.PURCHASE,
        amount_mc=5000,
        valid_from=T0,
        valid_until=None,
        actor="stripe",
        reason="top-up",
        at=T0,
    )
    app.adjust_credits(
        user,
        adjustment_id="adj-1",
        amount_mc=-1000,
        reason="duplicate grant",
        actor="admin@pinksea",
        at=T0,
    )
    account = app.account(user)
    sources = sorted(lot.source for lot in account.lots.values())
    assert sources == ["purchase", "tester", "trial"]


def test_every_stored_credit_event_has_balanced_postings(
    app: PinkseaApplication, user: str
) -> None:
    job = submit(app, user)
    run_to_start(app, job.job_id)
    app.complete_job(job.job_id, attempt=1, gpu_ms=10, cuda_ms=None, images=[], at=T0)
    app.expire_due(user, T0 + timedelta(days=40))
    account = app.account(user)
    events = list(app.events.get(account.id))
    assert len(events) == account.version
    for ev in events:
        assert sum(p.amount_mc for p in postings_for(user, ev)) == 0


def test_low_balance_is_reached_once_per_downward_crossing(
    app: PinkseaApplication, user: str
) -> None:
    threshold = get_plan("trial").low_balance_threshold_mc

    def warnings() -> list[str]:
        account = app.account(user)
        return [
            type(e).__name__
            for e in app.events.get(account.id)
            if type(e).__name__.startswith("LowBalance")
        ]

    # Spend down to just above the threshold: no warning yet.
    app.adjust_credits(
        user,
        adjustment_id="down",
        amount_mc=-(trial_mc() - threshold - 1),
        reason="test",
        actor="t",
        at=T0,
    )
    assert warnings() == []
    job = submit(app, user)  # its hold takes available below the threshold
    assert warnings() == ["LowBalanceReached"]
    submit(app, user, "k2")  # still low: no second warning
    assert warnings() == ["LowBalanceReached"]
    app.cancel_job(job.job_id, T0)
    app.grant_credits(
        user,
        grant_id="top-up",
        source=LotSource.PURCHASE,
        amount_mc=50_000,
        valid_from=T0,
        valid_until=None,
        actor="t",
        reason="t",
        at=T0,
    )
    assert warnings() == ["LowBalanceReached", "LowBalanceCleared"]
    app.adjust_credits(
        user, adjustment_id="down-again", amount_mc=-50_000, reason="t", actor="t", at=T0
    )
    assert warnings() == ["LowBalanceReached", "LowBalanceCleared", "LowBalanceReached"]
