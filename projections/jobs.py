"""Projection "jobs": job status and parameters, the images a job produced, and usage records.

Job events after ``Submitted`` carry only the job id; the user comes from the job's own row
(the runner delivers a job's events in order). One statement per event: a terminal event
updates the job and writes its images and usage record together, in one round trip.

Usage: one record per job whose hold was settled, i.e. that ran and was billed (completed,
failed through the user's fault, cancelled after it started), even at 0 mc. Platform failures
and cancellations before start void the hold and leave no usage record.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from domain.jobs import Fault, JobStatus
from infra.envelope import JOBS_TOPIC, Envelope
from projections.base import Projection
from projections.decoding import UnknownEventType, domain_event


class UnknownJob(Exception):
    """An event for a job whose Submitted event was never projected."""


_SUBMITTED = """
INSERT INTO jobs (
    job_id, user_id, idempotency_key, status, model, tier, steps, width, height, batch_size,
    seed, parameters, submitted_at, updated_at, submitted_position, position
)
VALUES ($1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $2, $2, $3, $3)
"""


def _update(assignments: str) -> str:
    """An update of one job: $1 job id, $2 occurred_at, $3 position, then the event's own."""
    return f"UPDATE jobs SET {assignments}, updated_at = $2, position = $3 WHERE job_id = $1"


def _finish(assignments: str, record_usage: str) -> str:
    """A terminal update that also writes the usage record when ``record_usage`` holds."""
    return f"""
WITH job AS ({_update(assignments)} RETURNING *),
usage AS (
    INSERT INTO usage_records (
        job_id, user_id, outcome, model, tier, steps, width, height, batch_size,
        gpu_ms, cuda_ms, charged_mc, occurred_at, position
    )
    SELECT job_id, user_id, status, model, tier, steps, width, height, batch_size,
        gpu_ms, cuda_ms, charged_mc, $2, $3
    FROM job WHERE {record_usage}
)
"""


_ACCEPTED = _update(
    "status = $4, hold_id = $5, hold_mc = $6, budget_ms = $7, estimate_ms = $8, accepted_at = $2"
)
_REJECTED = _update("status = $4, rejection_reason = $5, rejection_detail = $6, finished_at = $2")
_DISPATCHED = _update("status = $4, attempt = $5, worker_id = $6, dispatched_at = $2")
_STARTED = _update("status = $4, worker_id = $5, gpu = $6, started_at = $2")
_CANCEL_REQUESTED = _update("cancel_requested = true")
_ATTEMPT_FAILED = _update("status = $4, failure_reason = $5")

_COMPLETED = (
    _finish(
        "status = $4, gpu_ms = $5, cuda_ms = $6, charged_mc = $7,"
        " image_count = cardinality($8::text[]), finished_at = $2",
        "true",
    )
    + """,
images AS (
    INSERT INTO images (
        user_id, name, job_id, idx, key, thumbnail_key, size_bytes, width, height,
        created_at, position
    )
    SELECT job.user_id, i.name, job.job_id, i.idx - 1, i.key, i.thumbnail_key, i.size_bytes,
        i.width, i.height, $2, $3
    FROM job, unnest($8::text[], $9::text[], $10::text[], $11::bigint[], $12::int[], $13::int[])
        WITH ORDINALITY AS i(name, key, thumbnail_key, size_bytes, width, height, idx)
)
SELECT count(*) FROM job
"""
)
_FAILED = (
    _finish(
        "status = $4, failure_reason = $5, failure_fault = $6, retryable = $7, gpu_ms = $8,"
        " charged_mc = $9, finished_at = $2",
        "$10",
    )
    + "SELECT count(*) FROM job"
)
_CANCELLED = (
    _finish("status = $4, gpu_ms = $5, charged_mc = $6, finished_at = $2", "$7")
    + "SELECT count(*) FROM job"
)
_REFUNDED = """
WITH job AS (
    UPDATE jobs SET refunded_mc = $4, updated_at = $2, position = $3 WHERE job_id = $1
    RETURNING job_id
),
usage AS (UPDATE usage_records SET refunded_mc = $4 WHERE job_id = $1)
SELECT count(*) FROM job
"""

Handler = Callable[[asyncpg.Connection, Envelope, Any], Awaitable[object]]


def _key(env: Envelope) -> tuple[Any, ...]:
    """The leading parameters of every statement: $1 job id, $2 occurred_at, $3 position."""
    return env.aggregate_id, env.occurred_at, env.position


async def _submitted(conn: asyncpg.Connection, env: Envelope, ev: Any) -> None:
    params = ev.parameters
    await conn.execute(
        _SUBMITTED,
        *_key(env),
        ev.user_id,
        ev.idempotency_key,
        JobStatus.SUBMITTED.value,
        params["model"],
        ev.tier,
        params["steps"],
        params["width"],
        params["height"],
        params["batch_size"],
        ev.seed,
        json.dumps(params, sort_keys=True),
    )


async def _accepted(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    hold_id = str(env.aggregate_id)  # as GenerationJob.hold_id
    return await conn.execute(
        _ACCEPTED,
        *_key(env),
        JobStatus.ACCEPTED.value,
        hold_id,
        ev.hold_mc,
        ev.budget_ms,
        ev.estimate_ms,
    )


async def _rejected(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_REJECTED, *_key(env), JobStatus.REJECTED.value, ev.reason, ev.detail)


async def _dispatched(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(
        _DISPATCHED, *_key(env), JobStatus.DISPATCHED.value, ev.attempt, ev.worker_id
    )


async def _started(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_STARTED, *_key(env), JobStatus.RUNNING.value, ev.worker_id, ev.gpu)


async def _cancel_requested(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.execute(_CANCEL_REQUESTED, *_key(env))


async def _attempt_failed(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    # A retryable failure puts the job back in the queue (GenerationJob._attempt_failed).
    return await conn.execute(_ATTEMPT_FAILED, *_key(env), JobStatus.ACCEPTED.value, ev.reason)


async def _completed(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    images = ev.images
    return await conn.fetchval(
        _COMPLETED,
        *_key(env),
        JobStatus.COMPLETED.value,
        ev.gpu_ms,
        ev.cuda_ms,
        ev.charged_mc,
        [i["name"] for i in images],
        [i["key"] for i in images],
        [i["thumbnail_key"] for i in images],
        [i["size_bytes"] for i in images],
        [i["width"] for i in images],
        [i["height"] for i in images],
    )


async def _failed(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.fetchval(
        _FAILED,
        *_key(env),
        JobStatus.FAILED.value,
        ev.reason,
        ev.fault,
        ev.retryable,
        ev.gpu_ms,
        ev.charged_mc,
        ev.fault == Fault.USER.value,  # a user-fault failure is billed; a platform one is not
    )


async def _cancelled(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    # Cancelled before start: hold voided, nothing ran. Stopped by the worker: billed.
    ran = ev.after_start or ev.gpu_ms > 0 or ev.charged_mc > 0
    return await conn.fetchval(
        _CANCELLED,
        *_key(env),
        JobStatus.CANCELLED.value,
        ev.gpu_ms,
        ev.charged_mc,
        ran,
    )


async def _refunded(conn: asyncpg.Connection, env: Envelope, ev: Any) -> object:
    return await conn.fetchval(_REFUNDED, *_key(env), ev.amount_mc)


# By public type name: an event class that is renamed or removed only ever fails to match.
_HANDLERS: dict[str, Handler] = {
    "GenerationJob.Submitted": _submitted,
    "GenerationJob.Accepted": _accepted,
    "GenerationJob.Rejected": _rejected,
    "GenerationJob.Dispatched": _dispatched,
    "GenerationJob.Started": _started,
    "GenerationJob.CancelRequested": _cancel_requested,
    "GenerationJob.AttemptFailed": _attempt_failed,
    "GenerationJob.Completed": _completed,
    "GenerationJob.Failed": _failed,
    "GenerationJob.Cancelled": _cancelled,
    "GenerationJob.Refunded": _refunded,
}


class JobsProjection(Projection):
    name = "jobs"
    topics = (JOBS_TOPIC,)
    tables = ("jobs", "images", "usage_records")

    def wants(self, env: Envelope) -> bool:
        return env.aggregate_type == "GenerationJob"

    async def apply(self, conn: asyncpg.Connection, env: Envelope) -> None:
        handler = _HANDLERS.get(env.type)
        if handler is None:
            raise UnknownEventType(env.type)
        result = await handler(conn, env, domain_event(env))
        # UPDATE statements report "UPDATE n"; the CTE statements count the job rows.
        if result in (0, "UPDATE 0"):
            raise UnknownJob(f"no job {env.aggregate_id} (event {env.id})")
