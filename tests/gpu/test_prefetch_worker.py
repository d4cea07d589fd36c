"""Prefetch on the worker, on the local stack (no scheduler): a dispatch that arrives while a job
runs is held queued (named in the heartbeats, not started), starts once the running job has
been reported, and is never run when it is cancelled while it waits."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from gpu_consumer.registry import ModelRegistry
from gpu_consumer.worker import PREFETCH_SLOTS
from infra import redis_keys
from infra.kafka import ensure_topics
from infra.messages import Dispatch, Heartbeat, Outcome
from infra.settings import Settings
from tests.gpu.conftest import make_dispatch
from tests.gpu.test_worker import (
    Report,
    finished,
    new_worker,
    reports_until,
    running,
    send,
    started,
)

# Minutes of CPU if it ran to the end: it runs until the test cancels it.
LONG = {"steps": 150, "batch_size": 8, "width": 256, "height": 256, "scheduler": "ddim"}


def queued_behind(reports: list[Report], busy: Dispatch, queued: Dispatch) -> bool:
    return any(
        isinstance(r, Heartbeat)
        and r.busy_job_id == busy.job_id
        and (r.queued_job_id, r.queued_attempt) == (queued.job_id, queued.attempt)
        for r in reports
    )


async def test_a_dispatch_received_while_a_job_runs_is_held_and_starts_when_it_ends(
    settings: Settings, registry: ModelRegistry, models_cache: Path, redis_sync: Any
) -> None:
    await ensure_topics(settings)
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    first = make_dispatch(worker_id=worker_id, **LONG)
    second = make_dispatch(worker_id=worker_id)
    async with running(new_worker(settings, registry, models_cache, worker_id)):
        await send(settings, first)
        await reports_until(settings, lambda rs: bool(started(rs, first.job_id)))
        await send(settings, second)
        # Held while the first runs: the heartbeats name it (the lease covers it); not started.
        reports = await reports_until(settings, lambda rs: queued_behind(rs, first, second))
        assert not started(reports, second.job_id)
        redis_sync.set(redis_keys.cancel_flag(settings.redis_key_prefix, first.job_id), "1")
        reports = await reports_until(settings, lambda rs: bool(finished(rs, second.job_id)))

    beats = [r for r in reports if isinstance(r, Heartbeat) and r.worker_id == worker_id]
    assert beats and all(b.prefetch_slots == PREFETCH_SLOTS == 1 for b in beats)
    [stopped] = finished(reports, first.job_id)
    assert stopped.outcome is Outcome.CANCELLED
    # Nothing told the worker to start it (there is no scheduler here): it started once the
    # first one's report was made (worker-reported times, one clock), and ran to the end.
    [then] = started(reports, second.job_id)
    assert stopped.at <= then.at
    [done] = finished(reports, second.job_id)
    assert done.outcome is Outcome.COMPLETED and done.gpu_ms > 0 and len(done.images) == 1


async def test_a_prefetched_dispatch_cancelled_while_it_waits_never_runs(
    settings: Settings, registry: ModelRegistry, models_cache: Path, redis_sync: Any
) -> None:
    await ensure_topics(settings)
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    first = make_dispatch(worker_id=worker_id, **LONG)
    second = make_dispatch(worker_id=worker_id)
    after = make_dispatch(worker_id=worker_id)  # shows that the worker went on serving
    worker = new_worker(settings, registry, models_cache, worker_id)
    async with running(worker):
        await send(settings, first)
        await reports_until(settings, lambda rs: bool(started(rs, first.job_id)))
        await send(settings, second)
        await reports_until(settings, lambda rs: queued_behind(rs, first, second))
        for d in (second, first):  # the user cancels the queued job, then the running one
            redis_sync.set(redis_keys.cancel_flag(settings.redis_key_prefix, d.job_id), "1")
        await send(settings, after)
        reports = await reports_until(settings, lambda rs: bool(finished(rs, after.job_id)))

    [voided] = finished(reports, second.job_id)
    assert voided.outcome is Outcome.CANCELLED and voided.gpu_ms == 0 and voided.images == []
    assert not started(reports, second.job_id)  # read before it started: nothing ran
    [record] = [r for r in worker.history if r.key == second.key]
    assert record.gpu_ms == 0 and record.load_ms == 0
    [served] = finished(reports, after.job_id)
    assert served.outcome is Outcome.COMPLETED
