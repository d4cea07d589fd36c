"""The scheduler's view of its workers' prefetch slots, from their reports and its queue rows:
a worker of the release before (no slot offered) is sent work only when idle; a busy worker
that offers a slot has one until a job is queued there; a Finished promotes the queued job."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg

from infra.messages import Finished, Heartbeat, Outcome, Started
from infra.settings import Settings
from projections.scheduler_queue import QueueStatus
from workflows.scheduler.service import Scheduler, expected_ms

NOW = datetime.now(UTC)


def scheduler(*, prefetch: bool = True) -> Scheduler:
    return Scheduler(Settings(), None, None, prefetch=prefetch)  # type: ignore[arg-type]


def beat(worker_id: str, busy: uuid.UUID | None, queued: uuid.UUID | None, slots: int) -> Heartbeat:
    return Heartbeat(
        worker_id=worker_id,
        tier="basic",
        busy_job_id=busy,
        busy_attempt=1 if busy else None,
        queued_job_id=queued,
        queued_attempt=1 if queued else None,
        prefetch_slots=slots,
        at=NOW,
    )


def row(job_id: uuid.UUID, status: str, worker_id: str, budget_ms: int = 4000) -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "worker_id": worker_id, "budget_ms": budget_ms}


def rows(*r: dict[str, Any]) -> Sequence[asyncpg.Record]:
    return cast(Sequence[asyncpg.Record], r)


def free(s: Scheduler, table: Sequence[asyncpg.Record]) -> tuple[list[str], list[str]]:
    idle, slots = s.free_workers(table)
    return [w.worker_id for w in idle], [w.worker_id for w in slots]


def test_a_worker_of_the_release_before_is_sent_work_only_when_idle() -> None:
    s = scheduler()
    job = uuid.uuid4()
    s.observe(beat("old", job, None, slots=0))
    assert free(s, rows(row(job, QueueStatus.RUNNING, "old"))) == ([], [])
    s.observe(beat("old", None, None, slots=0))
    assert free(s, rows()) == (["old"], [])


def test_a_busy_worker_has_one_slot_until_a_job_is_queued_there() -> None:
    s = scheduler()
    running, queued = uuid.uuid4(), uuid.uuid4()
    s.observe(beat("w", running, None, slots=1))
    table = [row(running, QueueStatus.RUNNING, "w")]
    assert free(s, rows(*table)) == ([], ["w"])
    # Dispatched there (the queue row, before the worker says so): the slot is taken.
    table.append(row(queued, QueueStatus.DISPATCHED, "w"))
    assert free(s, rows(*table)) == ([], [])
    s.observe(beat("w", running, queued, slots=1))
    assert free(s, rows(*table)) == ([], [])
    # The running job ends: the queued one runs now, and the slot is free again.
    s.observe(finished("w", running))
    assert (s.workers["w"].busy_job, s.workers["w"].queued_job) == (queued, None)
    assert free(s, rows(*table)) == ([], ["w"])
    s.observe(started("w", queued))
    assert free(s, rows(*table)) == ([], ["w"])
    s.observe(finished("w", queued))
    assert free(s, rows(*table)) == (["w"], [])


def test_no_slot_without_prefetch_and_slots_are_ordered_by_the_expected_end() -> None:
    off = scheduler(prefetch=False)
    job = uuid.uuid4()
    off.observe(beat("w", job, None, slots=1))
    assert free(off, rows(row(job, QueueStatus.RUNNING, "w"))) == ([], [])

    s = scheduler()
    short, long_ = uuid.uuid4(), uuid.uuid4()
    s.observe(beat("short", short, None, slots=1))
    s.observe(beat("long", long_, None, slots=1))
    table = rows(
        row(short, QueueStatus.RUNNING, "short", budget_ms=1_300),
        row(long_, QueueStatus.RUNNING, "long", budget_ms=31_000),
    )
    _, slots = s.free_workers(table)
    by_worker = {w.worker_id: w.frees_in_ms for w in slots}
    # Expected GPU time from the budget (1.5x the estimate + 1 s): 200 ms and 20 s.
    assert (expected_ms(1_300), expected_ms(31_000)) == (200, 20_000)
    assert by_worker["short"] <= 200 < by_worker["long"] <= 20_000
    assert [w.worker_id for w in sorted(slots, key=lambda w: w.frees_in_ms)] == ["short", "long"]


def started(worker_id: str, job_id: uuid.UUID) -> Started:
    return Started(
        job_id=job_id, attempt=1, worker_id=worker_id, gpu="cpu", model_load_ms=0, at=NOW
    )


def finished(worker_id: str, job_id: uuid.UUID) -> Finished:
    return Finished(
        job_id=job_id,
        attempt=1,
        worker_id=worker_id,
        outcome=Outcome.COMPLETED,
        gpu_ms=10,
        cuda_ms=None,
        model_load_ms=0,
        at=NOW,
    )
