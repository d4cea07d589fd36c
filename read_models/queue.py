"""Where a queued job stands in its tier's queue, and when it should start and finish.

Read from the jobs read model, the same rows as the job's view: an ``accepted`` job waits in
its tier's queue, and its row's ``position`` is the store position of the event that queued it
(Accepted, or AttemptFailed for a retry: no other event reaches an accepted job), which is the
order the scheduler's queue keeps too (projections/scheduler_queue.py). The scheduler is fair
across users rather than first-in first-out, so the position is the job's place in arrival
order: the jobs ahead of it are the ones that arrived first.

The ETA's basis is measured: the mean start-to-finish time of the tier's most recent completed
jobs (at most ``SAMPLE_JOBS``), and the number of distinct workers that finished one of them
within ``WORKERS_WINDOW`` (the workers known to be serving the tier). Each worker frees itself
every mean run time, so the jobs that must end before this one starts, the ones ahead and the
ones in service beyond the workers, take that many mean runs divided among the workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from domain.job_events import JobStatus

SAMPLE_JOBS = 50  # recent completed jobs of a tier whose run times make the estimate
WORKERS_WINDOW = timedelta(minutes=15)  # a worker that finished a job since then serves the tier
MAX_JOBS_ASKED = 100  # one page of jobs at most per query

_QUEUED = JobStatus.ACCEPTED.value
_IN_SERVICE = [JobStatus.DISPATCHED.value, JobStatus.RUNNING.value]
_COMPLETED = JobStatus.COMPLETED.value

_PLACES = f"""
SELECT me.job_id, me.tier,
       (SELECT count(*) FROM jobs AS j
        WHERE j.tier = me.tier AND j.status = '{_QUEUED}' AND j.position < me.position) AS ahead,
       (SELECT count(*) FROM jobs AS j
        WHERE j.tier = me.tier AND j.status = ANY($2::text[])) AS in_service
FROM jobs AS me
WHERE me.job_id = ANY($1::uuid[]) AND me.status = '{_QUEUED}'
"""

_SERVICE = f"""
SELECT count(*) AS sampled_jobs,
       round(avg(extract(epoch FROM finished_at - started_at) * 1000))::bigint AS mean_run_ms,
       count(DISTINCT worker_id) FILTER (WHERE finished_at > $2) AS workers
FROM (
    SELECT started_at, finished_at, worker_id FROM jobs
    WHERE tier = $1 AND status = '{_COMPLETED}' AND started_at IS NOT NULL
    ORDER BY finished_at DESC LIMIT {SAMPLE_JOBS}
) AS recent
"""


@dataclass(frozen=True)
class ServiceTimes:
    """What the tier's recent completed jobs measured."""

    tier: str
    sampled_jobs: int
    mean_run_ms: int | None  # None: no completed job of the tier to measure yet
    workers: int | None  # None: no worker finished a job within WORKERS_WINDOW


@dataclass(frozen=True)
class QueuePlace:
    """A queued job's place: ``position`` 1 is the next of its tier to be dispatched."""

    position: int
    jobs_ahead: int
    in_service: int  # the tier's jobs dispatched or running now
    start_in_ms: int | None  # None: no measured run time yet
    done_in_ms: int | None
    service: ServiceTimes


def estimate(jobs_ahead: int, in_service: int, service: ServiceTimes) -> tuple[int, int] | None:
    """(start in, done in) milliseconds from now, or None without a measured run time. With
    ``w`` workers, the jobs that must end before this one starts are the ones ahead of it and
    those in service beyond ``w - 1`` (a free worker takes it at once); ``w`` of them end every
    mean run time."""
    assert jobs_ahead >= 0 and in_service >= 0
    if service.mean_run_ms is None:
        return None
    workers = max(1, service.workers or 1)  # unknown: at least one worker serves the tier
    must_end = max(0, jobs_ahead + in_service - workers + 1)
    start_in_ms = -(-must_end * service.mean_run_ms // workers)  # ceiling division
    return start_in_ms, start_in_ms + service.mean_run_ms


async def queue_places(
    conn: asyncpg.Pool | asyncpg.Connection, job_ids: list[UUID], at: datetime
) -> dict[UUID, QueuePlace]:
    """The place of each of ``job_ids`` that is queued now (others are absent)."""
    assert len(job_ids) <= MAX_JOBS_ASKED
    if not job_ids:
        return {}
    rows = await conn.fetch(_PLACES, job_ids, _IN_SERVICE)
    services: dict[str, ServiceTimes] = {}
    places = {}
    for row in rows:
        tier = row["tier"]
        if tier not in services:
            s = await conn.fetchrow(_SERVICE, tier, at - WORKERS_WINDOW)
            assert s is not None  # an aggregate answers one row
            services[tier] = ServiceTimes(
                tier=tier,
                sampled_jobs=s["sampled_jobs"],
                mean_run_ms=s["mean_run_ms"],
                workers=s["workers"] or None,
            )
        service = services[tier]
        times = estimate(row["ahead"], row["in_service"], service)
        places[row["job_id"]] = QueuePlace(
            position=row["ahead"] + 1,
            jobs_ahead=row["ahead"],
            in_service=row["in_service"],
            start_in_ms=None if times is None else times[0],
            done_in_ms=None if times is None else times[1],
            service=service,
        )
    return places
