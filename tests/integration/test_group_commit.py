"""Group commit (eventstore/group_commit.py) on the real PostgreSQL.

Batches are made deterministic by holding the events table's lock from another connection:
the committer's first batch waits on it, the saves of interest queue up meanwhile, and when the
lock is released they are all taken as the next batch (the tests check that they were).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking

from domain import ids
from domain.application import PinkseaApplication
from domain.errors import NotFound
from domain.jobs import JobParameters
from eventstore.group_commit import (
    GroupCommitApplicationRecorder,
    GroupCommitProcessRecorder,
    GroupCommitter,
)
from eventstore.persistence import event_store_env
from workflows.tracking import TrackingPinkseaApplication

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, tzinfo=UTC)
TINY = JobParameters(model="tiny-sd", prompt="batch", steps=4, width=64, height=64)
WAIT_STEPS_MAX = 2000  # polls of 5 ms for the committer to reach a state (10 s)


def _wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(WAIT_STEPS_MAX):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError("the committer never reached the expected state")


def _events(originator_id: UUID | None = None, count: int = 1) -> list[StoredEvent]:
    originator_id = originator_id or uuid4()
    return [
        StoredEvent(originator_id, version, "tests:GroupCommitted", b"{}")
        for version in range(1, count + 1)
    ]


@pytest.fixture
def app(database_url: str) -> Iterator[PinkseaApplication]:
    application = PinkseaApplication(env=event_store_env(database_url, pool_size=20))
    yield application
    application.close()


def _committer(application: PinkseaApplication) -> GroupCommitter:
    recorder = application.recorder
    assert isinstance(recorder, GroupCommitApplicationRecorder | GroupCommitProcessRecorder)
    return recorder.committer


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc


def in_one_batch(
    database_url: str,
    committer: GroupCommitter,
    calls: list[Callable[[], Any]],
    *,
    saves: int | None = None,
) -> list[Any]:
    """Run each call on its own thread so that their ``saves`` saves (one per call unless
    told) are committed as one batch, behind a first batch of one save that waits on the lock;
    each call's result, or the exception it raised."""
    saves = len(calls) if saves is None else saves
    with ThreadPoolExecutor(1 + len(calls)) as pool, psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE pinksea_events IN EXCLUSIVE MODE")
        batches_before = len(committer.batch_sizes)
        first = pool.submit(committer.insert, _events())
        _wait_until(lambda: len(committer.batch_sizes) == batches_before + 1)
        futures = [pool.submit(_outcome, call) for call in calls]
        _wait_until(lambda: committer.queued == saves)
        blocker.rollback()  # releases the lock
        first.result()
        results = [f.result() for f in futures]
    # (Commands that lost a conflict in the batch retried in later batches.)
    assert committer.batch_sizes[batches_before : batches_before + 2] == [1, saves]
    return results


def test_event_store_env_wires_group_commit_into_both_recorders(database_url: str) -> None:
    # So the 16-writer race (tests/integration/test_concurrent_submissions.py) and every other
    # user of event_store_env run on it.
    app = PinkseaApplication(env=event_store_env(database_url, pool_size=2))
    settler = TrackingPinkseaApplication(env=event_store_env(database_url, pool_size=2))
    plain = PinkseaApplication(env=event_store_env(database_url, pool_size=2, group_commit=False))
    assert isinstance(app.recorder, GroupCommitApplicationRecorder)
    assert isinstance(settler.recorder, GroupCommitProcessRecorder)
    assert not isinstance(plain.recorder, GroupCommitApplicationRecorder)
    for application in (app, settler, plain):
        application.close()


def test_batch_mates_of_conflicting_saves_commit_and_each_gets_its_own_ids(
    app: PinkseaApplication, database_url: str
) -> None:
    committer = _committer(app)
    taken = uuid4()
    assert app.recorder.insert_events(_events(taken))  # version 1 of ``taken`` exists
    contested = uuid4()
    saves = [_events(count=n) for n in (1, 2, 3, 1, 2)]
    saves += [_events(contested), _events(contested), _events(taken)]
    results = in_one_batch(
        database_url,
        committer,
        [partial(app.recorder.insert_events, s) for s in saves],
    )

    # The one that inserted version 1 of an existing aggregate failed alone; of the two that
    # contested the same new version exactly one won; every other save went through.
    assert isinstance(results[-1], IntegrityError)
    contest = results[5:7]
    assert sum(isinstance(r, IntegrityError) for r in contest) == 1
    succeeded = [(s, r) for s, r in zip(saves, results, strict=True) if isinstance(r, list)]
    assert len(succeeded) == 6
    all_ids = [i for _, r in succeeded for i in r]
    assert len(set(all_ids)) == len(all_ids)
    for stored, notification_ids in succeeded:
        assert len(notification_ids) == len(stored)
        rows = [app.recorder.select_notifications(start=i, limit=1)[0] for i in notification_ids]
        assert [(r.originator_id, r.originator_version) for r in rows] == [
            (e.originator_id, e.originator_version) for e in stored
        ]
    # Nothing of the failed saves was written beside the winner of the contest.
    for originator_id in (taken, contested):
        assert len(app.recorder.select_events(originator_id)) == 1


def test_a_repeated_tracking_position_fails_alone(database_url: str) -> None:
    settler = TrackingPinkseaApplication(env=event_store_env(database_url, pool_size=12))
    recorder = settler.recorder
    source = f"reports-{uuid4()}"
    saves: list[tuple[list[StoredEvent], Tracking]] = [
        (_events(), Tracking(source, 7)),
        (_events(), Tracking(source, 7)),  # a redelivered report: its position is taken
        (_events(count=2), Tracking(f"{source}-other", 3)),
        ([], Tracking(f"{source}-empty", 1)),  # a position alone, no events
    ]
    results = in_one_batch(
        database_url,
        _committer(settler),
        [partial(recorder.insert_events, events, tracking=t) for events, t in saves],
    )
    assert sum(isinstance(r, IntegrityError) for r in results[:2]) == 1
    assert len(results[2]) == 2
    assert results[3] is None
    assert settler.consumed_up_to(source) == 7
    assert settler.consumed_up_to(f"{source}-other") == 3
    assert settler.consumed_up_to(f"{source}-empty") == 1
    settler.close()


def test_commands_in_one_batch_answer_with_their_own_results_positions_and_errors(
    app: PinkseaApplication, database_url: str
) -> None:
    users = [f"batch-{uuid4()}" for _ in range(6)]
    for user in users[:4]:
        app.register_user(user, T0)
    calls: list[Callable[[], Any]] = [
        partial(app.submit_job, u, idempotency_key="k", params=TINY, at=T0) for u in users[:4]
    ]
    # Two sign-ups beside them, and a command that fails its check (no such user).
    calls += [partial(app.register_user, u, T0) for u in users[4:]]
    calls.append(
        lambda: app.submit_job(f"nobody-{uuid4()}", idempotency_key="k", params=TINY, at=T0)
    )
    # The failing command saves nothing: one save fewer than calls.
    results = in_one_batch(database_url, _committer(app), calls, saves=len(calls) - 1)

    assert isinstance(results[-1], NotFound)
    for user, result in zip(users[:4], results[:4], strict=True):
        assert result.status == "accepted"
        (newest,) = app.recorder.select_notifications(start=result.position, limit=1)
        assert newest.originator_id in {result.job_id, ids.account_id(user)}
    for user, result in zip(users[4:], results[4:6], strict=True):
        assert result.changed
        (newest,) = app.recorder.select_notifications(start=result.position, limit=1)
        assert newest.originator_id in {ids.account_id(user), ids.subscription_id(user)}
    positions = [r.position for r in results[:6]]
    assert len(set(positions)) == len(positions)


def test_a_command_that_loses_a_conflict_in_its_batch_retries_and_succeeds(
    app: PinkseaApplication, database_url: str
) -> None:
    user = f"contested-{uuid4()}"
    app.register_user(user, T0)
    keys = [f"k{i}" for i in range(4)]  # four submissions on one account: three must retry
    results = in_one_batch(
        database_url,
        _committer(app),
        [partial(app.submit_job, user, idempotency_key=k, params=TINY, at=T0) for k in keys],
    )
    assert [r.status for r in results] == ["accepted"] * 4
    account = app.account(user)
    assert account.held_mc == sum(r.hold_mc for r in results)
    assert len(account.holds) == 4


def test_notification_ids_are_in_commit_order_for_a_tailing_reader(
    app: PinkseaApplication, database_url: str
) -> None:
    """A reader that follows the log after its position (as the relay does) sees every event,
    while group-committing writers and a plain one (another process's recorder) race."""
    plain = PinkseaApplication(env=event_store_env(database_url, pool_size=6, group_commit=False))
    start = app.recorder.max_notification_id() or 0
    writers, saves_per_writer = 8, 60
    done = threading.Event()
    seen: list[int] = []

    def tail() -> None:
        position = start
        for _ in range(100_000):
            finished = done.is_set()  # read before the last pass, so that pass sees all
            rows = app.recorder.select_notifications(
                start=position, limit=500, inclusive_of_start=False
            )
            seen.extend(r.id for r in rows)
            position = rows[-1].id if rows else position
            if finished and not rows:
                return
        raise AssertionError("the tail never caught up")

    def write(writer: int) -> None:
        recorder = (plain if writer % 2 else app).recorder  # half of them plain
        for _ in range(saves_per_writer):
            recorder.insert_events(_events(count=1 + writer % 3))

    tailer = threading.Thread(target=tail)
    tailer.start()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    done.set()
    tailer.join()
    stored = app.recorder.select_notifications(start=start, limit=100_000, inclusive_of_start=False)
    assert seen == [r.id for r in stored]  # nothing skipped, nothing out of order
    assert max(_committer(app).batch_sizes) > 1  # the writers did share transactions
    plain.close()


def test_a_batch_takes_the_table_lock_that_orders_notification_ids(
    app: PinkseaApplication, database_url: str
) -> None:
    """The tail above can only catch a missing lock by luck; this sees the lock itself: a
    plain insert's ROW EXCLUSIVE lock does not stop another plain insert, but it stops a batch
    until it ends, because the batch asks for the EXCLUSIVE lock first."""
    committer = _committer(app)
    waiting_for_exclusive = (
        "SELECT count(*) FROM pg_locks WHERE relation = 'pinksea_events'::regclass"
        " AND mode = 'ExclusiveLock' AND NOT granted"
    )
    with (
        ThreadPoolExecutor(1) as pool,
        psycopg.connect(database_url) as inserter,
        psycopg.connect(database_url, autocommit=True) as observer,
    ):
        inserter.execute("LOCK TABLE pinksea_events IN ROW EXCLUSIVE MODE")
        save = pool.submit(committer.insert, _events())

        def batch_waits() -> bool:
            row = observer.execute(waiting_for_exclusive).fetchone()
            return row is not None and row[0] == 1

        _wait_until(batch_waits)
        assert not save.done()
        inserter.rollback()
        assert save.result()


def test_an_idle_committer_ends_and_the_next_save_starts_another(
    app: PinkseaApplication,
) -> None:
    committer = _committer(app)
    committer.idle_exit_s = 0.05
    (first,) = app.recorder.insert_events(_events()) or []
    _wait_until(lambda: not committer.running)
    (second,) = app.recorder.insert_events(_events()) or []  # a new committer ran it
    assert second > first
