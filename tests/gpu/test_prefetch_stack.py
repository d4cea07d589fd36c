"""Prefetch through the whole path (relay, projections, scheduler, settler, one CPU worker): the
scheduler sends a busy worker the next job, the worker holds it queued and starts it when its
running job ends; cancelled while it waits, it is voided at once and never runs or bills."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import redis
from eventsourcing.domain import Aggregate

from domain.application import PinkseaApplication
from domain.credits import CreditAccount
from gpu_consumer.worker import GpuWorker
from infra.messages import Heartbeat
from infra.redis_keys import cancel_flag
from infra.settings import Settings
from tests.e2e.test_generation_flow import LONG, REPO, TINY, Platform, platform, stack, submit
from tests.gpu.test_worker import reports_until
from tests.integration.streaming_kit import wait_until

__all__ = ["platform", "stack"]  # the fixtures, from the end-to-end tests
WORKER_ARGS = ("--tier", "basic", "--device", "cpu", "--metrics-port", "0")


def room_for(app: PinkseaApplication, user: str, concurrent_jobs: int) -> None:
    now = datetime.now(UTC)
    app.register_user(user, now)
    app.change_plan(
        user,
        to_plan="enterprise",
        actor="test",
        reason="room for a prefetch",
        at=now,
        custom_terms={
            "credits_per_month": 1,
            "tier": "basic",
            "concurrent_jobs": concurrent_jobs,
            "storage_gb": 1,
        },
    )
    app.adjust_credits(user, adjustment_id="t", amount_mc=10**9, reason="t", actor="t", at=now)


async def running_with_one_queued(
    platform: Platform, worker: GpuWorker, user: str
) -> tuple[uuid.UUID, ...]:
    """A long job running on ``worker`` and a small one the scheduler prefetched behind it."""
    app = platform.app
    long_job = submit(app, user, "long", LONG)

    async def long_runs() -> bool:
        return (await asyncio.to_thread(app.job, long_job.job_id)).status == "running"

    await wait_until(long_runs, timeout=60, interval=0.05)
    queued = submit(app, user, "queued", TINY)

    async def held_by_the_worker() -> bool:
        return worker.heartbeat().queued_job_id == queued.job_id

    await wait_until(held_by_the_worker, timeout=30, interval=0.05)
    assert long_job.job_id is not None and queued.job_id is not None
    return long_job.job_id, queued.job_id


def kinds(app: PinkseaApplication, job_id: uuid.UUID) -> list[tuple[str, datetime]]:
    events = [cast(Aggregate.Event, e) for e in app.events.get(job_id)]
    return [(type(e).__name__, e.timestamp) for e in events]


async def test_the_scheduler_prefetches_to_a_busy_worker_which_starts_it_when_its_job_ends(
    platform: Platform,
) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    user = f"pf-{uuid.uuid4().hex[:8]}"  # job ids (and their cancel flags) of its own
    room_for(app, user, concurrent_jobs=2)
    long_id, queued_id = await running_with_one_queued(platform, platform.workers["w0"], user)
    # Held, not started: still dispatched, to the busy worker; nothing billed or started.
    held = app.job(queued_id)
    assert (held.status, held.worker_id, held.attempt) == ("dispatched", "w0", 1)
    r = redis.Redis.from_url(settings.redis_url)
    app.cancel_job(long_id, datetime.now(UTC))
    r.set(cancel_flag(settings.redis_key_prefix, long_id), "1", ex=3600)
    await platform.until_terminal(long_id, queued_id)

    done = app.job(queued_id)
    assert (done.status, done.attempt, done.worker_id) == ("completed", 1, "w0")
    assert done.charged_mc > 0
    events = dict(kinds(app, queued_id))
    long_ended = dict(kinds(app, long_id))["Cancelled"]
    # Dispatched while the long job ran; started after it ended, by the worker on its own.
    assert events["Dispatched"] < long_ended <= events["Started"]
    assert app.account(user).held_mc == 0


async def test_a_job_cancelled_while_prefetched_is_voided_at_once_and_never_runs(
    platform: Platform,
) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    user = f"pf-{uuid.uuid4().hex[:8]}"  # job ids (and their cancel flags) of its own
    room_for(app, user, concurrent_jobs=2)
    worker = platform.workers["w0"]
    long_id, queued_id = await running_with_one_queued(platform, worker, user)
    r = redis.Redis.from_url(settings.redis_url)
    # As the API cancels a dispatched job: the command, then the flag the worker reads.
    app.cancel_job(queued_id, datetime.now(UTC))
    r.set(cancel_flag(settings.redis_key_prefix, queued_id), "1", ex=3600)
    voided = app.job(queued_id)
    assert (voided.status, voided.charged_mc) == ("cancelled", 0)
    account = app.account(user)
    assert account.held_mc == app.job(long_id).hold_mc  # only the running job's hold is left
    app.cancel_job(long_id, datetime.now(UTC))
    r.set(cancel_flag(settings.redis_key_prefix, long_id), "1", ex=3600)
    await platform.until_terminal(long_id)
    after = submit(app, user, "after", TINY)  # the worker went on serving
    assert after.job_id is not None
    await platform.until_terminal(after.job_id)

    assert "Started" not in dict(kinds(app, queued_id))
    [record] = [h for h in worker.history if h.key == f"{queued_id}:1"]
    assert record.gpu_ms == 0 and record.load_ms == 0  # refused before it started
    account = app.account(user)
    settled = [e for e in app.events.get(account.id) if isinstance(e, CreditAccount.HoldSettled)]
    assert str(queued_id) not in {e.hold_id for e in settled}
    assert app.job(queued_id).charged_mc == 0 and account.held_mc == 0
    assert app.job(after.job_id).status == "completed"


async def test_a_worker_killed_with_a_prefetched_job_loses_both_to_new_attempts(
    platform: Platform,
) -> None:
    await platform.start(workers=0, lease_s=3.0)
    app, settings = platform.app, platform.settings
    user = f"pf-{uuid.uuid4().hex[:8]}"
    room_for(app, user, concurrent_jobs=2)
    doomed = subprocess.Popen(
        [sys.executable, "-m", "cli", "gpu-worker", *WORKER_ARGS, "--worker-id", "doomed"],
        cwd=REPO,
        env=worker_env(settings, platform.models_cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        long_job = submit(app, user, "long", LONG)

        async def running_on_doomed() -> bool:
            j = await asyncio.to_thread(app.job, long_job.job_id)
            return j.status == "running" and j.worker_id == "doomed"

        await wait_until(running_on_doomed, timeout=90, interval=0.1)
        queued = submit(app, user, "queued", TINY)
        assert long_job.job_id is not None and queued.job_id is not None
        held = (long_job.job_id, queued.job_id)
        await reports_until(
            settings,
            lambda rs: any(
                isinstance(r, Heartbeat)
                and r.worker_id == "doomed"
                and (r.busy_job_id, r.queued_job_id) == held
                for r in rs
            ),
        )
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        await platform.start_worker("rescuer")

        async def long_redispatched() -> bool:
            return (await asyncio.to_thread(app.job, long_job.job_id)).attempt == 2

        # Whichever of the two the rescuer takes first, the rest of the long one is not needed.
        await wait_until(long_redispatched, timeout=90, interval=0.1)
        app.cancel_job(long_job.job_id, datetime.now(UTC))
        redis.Redis.from_url(settings.redis_url).set(
            cancel_flag(settings.redis_key_prefix, long_job.job_id), "1", ex=3600
        )
        await platform.until_terminal(queued.job_id, timeout=120)
        await platform.until_terminal(long_job.job_id, timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            doomed.kill()
    done = app.job(queued.job_id)
    # The lost prefetch is a lost dispatch: a new attempt (the cap counts dispatches), and the
    # job never started on the killed worker.
    assert (done.status, done.attempt, done.worker_id) == ("completed", 2, "rescuer")
    events = [cast(Aggregate.Event, e) for e in app.events.get(queued.job_id)]
    starts = [e for e in events if type(e).__name__ == "Started"]
    assert [getattr(e, "worker_id", None) for e in starts] == ["rescuer"]
    account = app.account(user)
    settled = [e for e in app.events.get(account.id) if isinstance(e, CreditAccount.HoldSettled)]
    assert [e.charged_mc for e in settled if e.hold_id == str(queued.job_id)] == [done.charged_mc]
    assert app.job(long_job.job_id).status == "cancelled" and account.held_mc == 0


def worker_env(settings: Settings, models_cache: Path) -> dict[str, str]:
    """A worker process on this test's stack, as tests/e2e start one."""
    return {
        **os.environ,
        "PINKSEA_DATABASE_URL": settings.database_url,
        "PINKSEA_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "PINKSEA_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "PINKSEA_S3_BUCKET": settings.s3_bucket,
        "PINKSEA_MODELS_DIR": "",
        "PINKSEA_MODELS_CACHE_DIR": str(models_cache),
        "PINKSEA_HEARTBEAT_INTERVAL_S": "0.5",
    }
