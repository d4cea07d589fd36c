"""The scheduler's queue as a projection of the jobs topic (table scheduler_jobs)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import ClassVar

import asyncpg

from eventstore.envelope import Envelope
from infra.topics import JOBS_TOPIC
from projections.base import Projection


class QueueStatus(StrEnum):
    """A row's status in scheduler_jobs (the strings stored in its status column): where the
    job is for the scheduler, coarser than the job's own status (every end is ``done``)."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    DONE = "done"


DONE = ("GenerationJob.Rejected", "GenerationJob.Completed", "GenerationJob.Failed",
        "GenerationJob.Cancelled")  # fmt: skip
# Events that change nothing about a job's place in the queue.
_NOT_QUEUE_EVENTS = ("GenerationJob.CancelRequested", "GenerationJob.Refunded",
                     "GenerationJob.ImageDeleted")  # fmt: skip


class SchedulerQueue(Projection):
    name: ClassVar[str] = "scheduler"
    topics: ClassVar[tuple[str, ...]] = (JOBS_TOPIC,)
    tables: ClassVar[tuple[str, ...]] = ("scheduler_jobs",)

    def wants(self, env: Envelope) -> bool:
        return env.type not in _NOT_QUEUE_EVENTS

    async def apply(self, conn: asyncpg.Connection, env: Envelope) -> None:
        d, job_id = env.data, env.aggregate_id
        if env.type == "GenerationJob.Submitted":
            await conn.execute(
                "INSERT INTO scheduler_jobs (job_id, user_id, tier, model, parameters, seed, "
                "status, queued_at, queue_position) "
                f"VALUES ($1,$2,$3,$4,$5,$6,'{QueueStatus.SUBMITTED}',$7,$8) "
                "ON CONFLICT (job_id) DO NOTHING",
                job_id, d["user_id"], d["tier"], d["parameters"]["model"],
                json.dumps(d["parameters"]), d["seed"], env.occurred_at, env.position,
            )  # fmt: skip
        elif env.type == "GenerationJob.Accepted":
            await conn.execute(
                f"UPDATE scheduler_jobs SET status = '{QueueStatus.QUEUED}', budget_ms = $2, "
                "queue_position = $3 "
                "WHERE job_id = $1",
                job_id, d["budget_ms"], env.position,
            )  # fmt: skip
        elif env.type == "GenerationJob.Dispatched":
            await conn.execute(
                f"UPDATE scheduler_jobs SET status = '{QueueStatus.DISPATCHED}', attempt = $2, "
                "worker_id = $3, dispatched_at = $4 WHERE job_id = $1 "
                f"AND status <> '{QueueStatus.DONE}'",
                job_id, d["attempt"], d["worker_id"], env.occurred_at,
            )  # fmt: skip
        elif env.type == "GenerationJob.Started":
            await conn.execute(
                f"UPDATE scheduler_jobs SET status = '{QueueStatus.RUNNING}' "
                f"WHERE job_id = $1 AND attempt = $2 AND status <> '{QueueStatus.DONE}'",
                job_id, d["attempt"],
            )  # fmt: skip
        elif env.type == "GenerationJob.AttemptFailed":
            # Back to the queue, behind the jobs that waited meanwhile.
            await conn.execute(
                f"UPDATE scheduler_jobs SET status = '{QueueStatus.QUEUED}', worker_id = NULL, "
                "queue_position = $2 WHERE job_id = $1",
                job_id, env.position,
            )  # fmt: skip
        elif env.type in DONE:
            await conn.execute(
                f"UPDATE scheduler_jobs SET status = '{QueueStatus.DONE}' WHERE job_id = $1", job_id
            )
