"""The rules every command follows (domain/commands/store.py), the job lifecycle's table and
decisions (domain/jobs.py), and the library's private API the store relies on.

All on the library's in-memory persistence: these are the store's semantics, not PostgreSQL's
(tests/domain/test_application.py runs the commands on both).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, ProcessRecorder, Recording, Tracking

from domain.application import (
    MAX_CONFLICT_RETRIES,
    BillingState,
    CommandResult,
    ConcurrencyConflict,
    PinkseaApplication,
    StripeEventAlreadyApplied,
)
from domain.commands.store import CommandStore, command
from domain.credits import LotSource
from domain.errors import InvalidTransition
from domain.job_lifecycle import (
    LIFECYCLE,
    MAX_ATTEMPTS,
    TERMINAL,
    DeadLetterDecision,
    Fault,
    has_attempts_left,
)
from domain.jobs import GenerationJob, JobParameters, JobStatus
from domain.webhooks import StripeEvent

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
TINY = JobParameters(model="tiny-sd", prompt="a pink sea", steps=4, width=64, height=64)
MEMORY = {"PERSISTENCE_MODULE": "eventsourcing.popo"}


class TrackedApplication(PinkseaApplication):
    """As workflows/tracking.py: the recorder keeps a consumer's positions."""

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()


@pytest.fixture
def app() -> Iterator[PinkseaApplication]:
    application = PinkseaApplication(env=MEMORY)
    yield application
    application.close()


@pytest.fixture
def user(app: PinkseaApplication) -> str:
    app.register_user("u1", T0)
    return "u1"


def newest_position(app: PinkseaApplication) -> int:
    return app.recorder.max_notification_id() or 0


# ------------------------------------------------------------------ the library's private API


def test_the_library_private_api_the_store_uses_keeps_its_shape() -> None:
    """CommandStore._save_tracked is the one caller of these; a release that renames them or
    changes what they take or give fails here, not in the settler."""
    record = inspect.signature(Application._record)
    assert list(record.parameters) == ["self", "processing_event"]
    assert "Recording" in str(record.return_annotation)
    snapshots = inspect.signature(Application._take_snapshots)
    assert list(snapshots.parameters) == ["self", "processing_event"]
    processing = ProcessingEvent[Any](tracking=Tracking("src", 1))
    assert processing.tracking == Tracking("src", 1)
    assert list(inspect.signature(processing.collect_events).parameters) == ["objs", "kwargs"]
    assert {"events", "aggregates"} <= set(vars(processing))
    assert "notification" in {f for f in vars(Recording)} | set(
        getattr(Recording, "__dataclass_fields__", {})
    )


def test_a_tracked_save_records_the_position_with_the_events_and_takes_snapshots() -> None:
    app = TrackedApplication(env=MEMORY)
    with app.tracking(Tracking("reports#0", 7)):
        registered = app.register_user("u1", T0)
    recorder = app.recorder
    assert isinstance(recorder, ProcessRecorder)
    assert recorder.max_tracking_id("reports#0") == 7
    assert registered.changed and registered.position == newest_position(app)
    account = app.account("u1")
    # The account snapshots every 50 versions: the tracked path takes them as save() does.
    for n in range(50 - account.version):
        with app.tracking(Tracking("reports#0", 8 + n)):
            app.adjust_credits(
                "u1", adjustment_id=f"a{n}", amount_mc=1, reason="r", actor="admin", at=T0
            )
    assert app.account("u1").version == 50
    assert app.snapshots is not None
    assert [s.originator_version for s in app.snapshots.get(account.id)] == [50]
    assert recorder.max_tracking_id("reports#0") == 8 + 50 - account.version - 1
    app.close()


# ---------------------------------------------------------------------- the command decorator


class Flaky(CommandStore):
    """A store with commands that conflict on purpose."""

    conflicts = 0

    @command
    def conflicting(self, times: int) -> CommandResult:
        if self.conflicts < times:
            self.conflicts += 1
            raise IntegrityError("someone saved first")
        return CommandResult(True)

    @command
    def nested(self) -> CommandResult:
        return self.conflicting(0)


def test_a_conflict_is_retried_until_it_goes_through_and_then_given_up() -> None:
    store = Flaky(env=MEMORY)
    assert store.conflicting(3).changed and store.conflicts == 3
    store.conflicts = 0
    with pytest.raises(ConcurrencyConflict):
        store.conflicting(MAX_CONFLICT_RETRIES)
    assert store.conflicts == MAX_CONFLICT_RETRIES


def test_commands_do_not_nest() -> None:
    with pytest.raises(RuntimeError, match="inside another command"):
        Flaky(env=MEMORY).nested()


def test_a_lost_race_reads_the_aggregates_again_and_decides_again(
    app: PinkseaApplication, user: str
) -> None:
    rival_saved: list[bool] = []

    class Racing(PinkseaApplication):
        @command
        def adjust_after_a_rival(self, user_id: str) -> CommandResult:
            account = self.account(user_id)
            if not rival_saved:  # another writer saves the account meanwhile, once
                rival = self.account(user_id)
                rival.adjust(adjustment_id="rival", amount_mc=5, reason="r", actor="a", at=T0)
                Application.save(self, rival)
                rival_saved.append(True)
            account.adjust(adjustment_id="ours", amount_mc=7, reason="r", actor="a", at=T0)
            self.save(account)
            return CommandResult(True)

    racing = Racing(env=MEMORY)
    racing.register_user(user, T0)
    before = racing.account(user).available_mc(T0)
    result = racing.adjust_after_a_rival(user)
    assert racing.account(user).available_mc(T0) == before + 12  # both, ours on the new state
    assert result.position == newest_position(racing)


def test_the_position_is_what_the_command_saved_or_the_newest(
    app: PinkseaApplication, user: str
) -> None:
    granted = app.grant_credits(
        user,
        grant_id="g1",
        source=LotSource.ADMIN,
        amount_mc=1000,
        valid_from=T0,
        valid_until=None,
        actor="admin",
        reason="r",
        at=T0,
    )
    assert granted.changed and granted.position == newest_position(app)
    app.register_user("u2", T0)  # someone else's events after ours
    again = app.register_user(user, T0)
    assert not again.changed and again.position == newest_position(app)


# ------------------------------------------------------------------ Stripe records, explicitly


def test_a_stripe_command_saves_its_record_with_its_effect_once(
    app: PinkseaApplication, user: str
) -> None:
    paid = StripeEvent(event_id="evt_1", type="invoice.paid", at=T0)
    period: dict[str, Any] = {"period_start": T0, "period_end": T0.replace(day=30), "at": T0}
    paying: dict[str, Any] = {"start_plan": "starter", "external_id": "sub_1", **period}
    result = app.renew_period(user, invoice_id="in_1", stripe_event=paid, **paying)
    assert result.changed and app.stripe_event_seen("evt_1")
    record = app.find(paid.record_id)
    recordings = app.recorder.select_notifications(result.position, 1)
    assert recordings[0].originator_id == record.id  # the record is in the command's save
    with pytest.raises(StripeEventAlreadyApplied):
        app.renew_period(user, invoice_id="in_2", stripe_event=paid, **paying)
    assert app.subscription(user).invoices == ["in_1"]


def test_a_stripe_command_with_nothing_to_do_still_records_the_event(
    app: PinkseaApplication, user: str
) -> None:
    sync = StripeEvent(event_id="evt_old", type="customer.subscription.updated", at=T0)
    kwargs: dict[str, Any] = {
        "external_id": "sub_1",
        "plan": "starter",
        "state": BillingState.INACTIVE,
        "period_start": T0,
        "period_end": T0,
        "cancel_at_period_end": False,
        "at": T0,
    }
    app.sync_stripe_subscription(user, object_at=T0, **kwargs)
    stale = app.sync_stripe_subscription(
        user, object_at=T0.replace(hour=1), stripe_event=sync, **kwargs
    )
    assert stale.changed is False and app.stripe_event_seen("evt_old")
    ignored = StripeEvent(event_id="evt_x", type="charge.refunded", at=T0)
    assert app.record_stripe_event(ignored).changed and app.stripe_event_seen("evt_x")
    with pytest.raises(StripeEventAlreadyApplied):
        app.record_stripe_event(ignored)


# --------------------------------------------------------------------------- the lifecycle


def test_the_lifecycle_table_names_every_status_and_ends_in_the_terminal_ones() -> None:
    assert set(LIFECYCLE) == set(JobStatus)
    assert all(moves <= set(JobStatus) for moves in LIFECYCLE.values())
    assert {JobStatus(s) for s in TERMINAL} == {
        JobStatus.REJECTED,
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    }
    assert all(LIFECYCLE[JobStatus(s)] == frozenset() for s in TERMINAL)
    # Every status that is not terminal can still end (a job is never stuck by the table);
    # a submitted job only becomes accepted (a refusal saves no job), which can end.
    ends = {JobStatus(t) for t in TERMINAL}
    assert LIFECYCLE[JobStatus.SUBMITTED] == {JobStatus.ACCEPTED}
    assert all(LIFECYCLE[s] & ends for s in set(JobStatus) - ends - {JobStatus.SUBMITTED})
    # Nothing moves to rejected any more: rejected jobs are history from before.
    assert all(JobStatus.REJECTED not in moves for moves in LIFECYCLE.values())
    assert [has_attempts_left(n) for n in range(MAX_ATTEMPTS + 1)] == [True] * MAX_ATTEMPTS + [
        False
    ]


def test_a_finished_job_refuses_every_move() -> None:
    job = GenerationJob.submit(user_id="u", idempotency_key="k", params=TINY, tier="basic", at=T0)
    job.accept(hold_mc=10, estimate_ms=5, budget_ms=10, at=T0)
    job.cancel(gpu_ms=0, charged_mc=0, at=T0)
    with pytest.raises(InvalidTransition, match="a cancelled job cannot become"):
        job.dispatch(attempt=1, worker_id="w", at=T0)
    with pytest.raises(InvalidTransition):
        job.give_up(cause="c", at=T0)
    with pytest.raises(InvalidTransition):
        job.accept(hold_mc=10, estimate_ms=5, budget_ms=10, at=T0)


def accepted(app: PinkseaApplication, user: str, key: str) -> UUID:
    """The job of a submission that must be accepted (a refusal saves no job)."""
    result = app.submit_job(user, idempotency_key=key, params=TINY, at=T0)
    assert result.job_id is not None, result
    return result.job_id


def run(app: PinkseaApplication, job_id: Any, attempt: int, worker: str = "w") -> None:
    app.record_dispatch(job_id, attempt=attempt, worker_id=worker, at=T0)
    app.record_start(job_id, attempt=attempt, worker_id=worker, gpu="T4", at=T0)


def test_only_a_retryable_failure_of_the_last_attempt_is_dead_lettered(
    app: PinkseaApplication, user: str
) -> None:
    job = accepted(app, user, "k")
    failure: dict[str, Any] = {"reason": "oom", "fault": Fault.PLATFORM, "gpu_ms": 5, "at": T0}
    for attempt in range(1, MAX_ATTEMPTS):
        run(app, job, attempt)
        retried = app.fail_job(job, attempt=attempt, retryable=True, **failure)
        assert retried.job_status == "accepted" and retried.dead_letter is None
    run(app, job, MAX_ATTEMPTS)
    last = app.fail_job(job, attempt=MAX_ATTEMPTS, retryable=True, **failure)
    assert last.job_status == "failed"
    assert last.dead_letter == DeadLetterDecision(attempts=MAX_ATTEMPTS, reason="oom")
    assert app.fail_job(job, attempt=MAX_ATTEMPTS, retryable=True, **failure).dead_letter is None

    other = accepted(app, user, "k2")
    run(app, other, 1)
    refused = app.fail_job(other, attempt=1, retryable=False, **failure)
    assert refused.job_status == "failed" and refused.dead_letter is None


def test_a_worker_lost_on_the_last_attempt_is_abandoned_once(
    app: PinkseaApplication, user: str
) -> None:
    job = accepted(app, user, "k")
    run(app, job, 1)
    with pytest.raises(InvalidTransition, match="dispatch the next attempt"):
        app.abandon_job(job, attempt=1, at=T0)
    for attempt in range(2, MAX_ATTEMPTS + 1):
        run(app, job, attempt)
    assert app.abandon_job(job, attempt=1, at=T0).applied is False  # a stale attempt
    given_up = app.abandon_job(job, attempt=MAX_ATTEMPTS, at=T0)
    assert given_up.applied and given_up.job_status == "failed" and given_up.charged_mc == 0
    assert given_up.dead_letter == DeadLetterDecision(
        attempts=MAX_ATTEMPTS, reason="workers lost on every attempt"
    )
    assert app.job(job).failure == f"gave up after {MAX_ATTEMPTS} attempts"
    assert app.account(user).held_mc == 0
    again = app.abandon_job(job, attempt=MAX_ATTEMPTS, at=T0)
    assert again.applied is False and again.dead_letter is None


def test_a_dispatch_says_whether_to_send_it(app: PinkseaApplication, user: str) -> None:
    job = accepted(app, user, "k")
    first = app.record_dispatch(job, attempt=1, worker_id="w1", at=T0)
    assert first.changed and first.send and first.dead_letter is None
    repeat = app.record_dispatch(job, attempt=1, worker_id="w1", at=T0)
    assert not repeat.changed and repeat.send  # recorded, maybe never sent: send it
    rival = app.record_dispatch(job, attempt=1, worker_id="w2", at=T0)
    assert not rival.changed and not rival.send  # another worker has this attempt
    for attempt in range(2, MAX_ATTEMPTS + 1):
        run(app, job, attempt)
    past = app.record_dispatch(job, attempt=MAX_ATTEMPTS + 1, worker_id="w", at=T0)
    assert past.changed and not past.send
    assert past.dead_letter == DeadLetterDecision(
        attempts=MAX_ATTEMPTS, reason=f"gave up after {MAX_ATTEMPTS} attempts"
    )
    finished = app.record_dispatch(job, attempt=MAX_ATTEMPTS + 1, worker_id="w", at=T0)
    assert not finished.changed and not finished.send and finished.dead_letter is None
