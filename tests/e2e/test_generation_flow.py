"""The whole billing path on the real stack, with real GPU workers on the tiny pipeline (CPU):

commands -> event store -> relay -> Kafka -> scheduler -> dispatch -> GPU worker -> S3 + report
-> settler -> event store -> projections -> read models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import asyncpg
import pytest
import redis
from aiokafka import AIOKafkaConsumer
from eventsourcing.domain import Aggregate

from domain.application import PinkseaApplication
from domain.credits import CreditAccount
from domain.jobs import JobParameters
from eventstore.decoding import newest_position
from eventstore.persistence import event_store_env
from eventstore.relay import Relay
from gpu_consumer.config import GpuWorkerSettings
from gpu_consumer.registry import ModelRegistry
from gpu_consumer.worker import GpuWorker
from infra.db import create_pool
from infra.kafka import idempotent_producer
from infra.messages import DeadLetter, Finished
from infra.redis_keys import cancel_flag
from infra.settings import Settings
from infra.topics import DLQ_TOPIC, REPORTS_TOPIC
from projections.consistency import first_behind
from projections.registry import ALL_PROJECTIONS
from projections.runner import LiveProjectionRunner
from tests.integration.streaming_kit import fresh_database, prepare_stack, wait_until
from workflows.scheduler.service import Scheduler
from workflows.settler import Settler
from workflows.tracking import TrackingPinkseaApplication

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TINY = JobParameters(model="tiny-sd", prompt="a pink sea at dawn", steps=4, width=64, height=64)
LONG = JobParameters(model="tiny-sd", prompt="a long one", steps=150, width=256, height=256)


@pytest.fixture
def stack(settings: Settings) -> Iterator[Settings]:
    """The session's Redis prefix and bucket; a database and topics of this test's own."""
    with fresh_database(settings.database_url) as url:
        yield settings.model_copy(
            update={
                "database_url": url,
                "kafka_topic_prefix": f"{settings.kafka_topic_prefix}e{uuid.uuid4().hex[:8]}.",
            }
        )


@pytest.fixture(scope="module")
def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


class Platform:
    """Every process of the backend, in this event loop (workers run the pipeline in threads)."""

    def __init__(self, settings: Settings, models_cache: Path) -> None:
        self.settings = settings
        self.models_cache = models_cache
        self.app = PinkseaApplication(env=event_store_env(settings.database_url, pool_size=8))
        self.settler_app = TrackingPinkseaApplication(
            env=event_store_env(settings.database_url, pool_size=4)
        )
        self.tasks: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self.workers: dict[str, GpuWorker] = {}
        self.pool: asyncpg.Pool | None = None
        self.scheduler: Scheduler | None = None

    async def start(self, workers: int = 1, lease_s: float = 10.0) -> None:
        await prepare_stack(self.settings)
        self.pool = await create_pool(self.settings, max_size=10)
        self._spawn("relay", Relay(self.settings, self.pool).run)
        for p in ALL_PROJECTIONS:
            self._spawn(f"project-{p.name}", LiveProjectionRunner(self.settings, self.pool, p).run)
        self.start_scheduler(lease_s)
        self._spawn("settler", Settler(self.settings, self.settler_app).run)
        for i in range(workers):
            await self.start_worker(f"w{i}")

    def start_scheduler(self, lease_s: float = 10.0) -> None:
        assert self.pool is not None
        self.scheduler = Scheduler(self.settings, self.pool, self.app, lease_s=lease_s)
        self._spawn("scheduler", self.scheduler.run)

    async def start_worker(self, worker_id: str) -> GpuWorker:
        config = GpuWorkerSettings(
            models_dir=None,
            models_cache_dir=self.models_cache,
            heartbeat_interval_s=0.5,
            stop_grace_s=5,
        )
        registry = ModelRegistry(models_dir=None, cache_dir=self.models_cache)
        worker = GpuWorker(
            self.settings, "basic", worker_id, "cpu", config=config, registry=registry
        )
        self.workers[worker_id] = worker
        self._spawn(worker_id, worker.run)
        await asyncio.wait_for(worker.ready.wait(), 60)
        return worker

    def _spawn(self, name: str, run) -> None:
        stop = asyncio.Event()
        self.tasks[name] = (stop, asyncio.create_task(run(stop), name=name))

    async def stop(self, name: str) -> None:
        stop, task = self.tasks.pop(name)
        stop.set()
        await asyncio.wait_for(task, 60)

    async def close(self) -> None:
        for name in list(self.tasks):
            await self.stop(name)
        if self.pool is not None:
            await self.pool.close()
        self.app.close()
        self.settler_app.close()

    async def until_terminal(self, *job_ids: uuid.UUID, timeout: float = 90) -> None:
        async def done() -> bool:
            jobs = [await asyncio.to_thread(self.app.job, j) for j in job_ids]
            return all(j.is_terminal for j in jobs)

        await wait_until(done, timeout=timeout, interval=0.2)

    async def until_projected(self, timeout_s: float = 60) -> None:
        """Until every projection has applied every event stored so far: what an audit of
        the read models (ledger verify) must wait for, the settler's last event included."""
        assert self.pool is not None
        head = await newest_position(self.pool)
        names = tuple(p.name for p in ALL_PROJECTIONS)
        behind = await first_behind(self.pool, self.settings, names, head, timeout_s=timeout_s)
        assert behind is None, f"projection {behind} did not reach position {head} in {timeout_s} s"


@pytest.fixture
async def platform(stack: Settings, models_cache: Path) -> AsyncIterator[Platform]:
    p = Platform(stack, models_cache)
    try:
        yield p
    finally:
        await p.close()


def submit(app: PinkseaApplication, user: str, key: str, params: JobParameters = TINY):
    return app.submit_job(user, idempotency_key=key, params=params, at=datetime.now(UTC))


async def finished_reports(settings: Settings) -> list[Finished]:
    from audit.reconcile import worker_reports

    return list((await worker_reports(settings)).values())


async def test_submit_runs_uploads_settles_exactly_and_reconciles(platform: Platform) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    app.register_user("ann", datetime.now(UTC))
    before = app.account("ann").available_mc(datetime.now(UTC))
    job = submit(app, "ann", "first")
    assert job.status == "accepted"
    await platform.until_terminal(job.job_id)

    done = app.job(job.job_id)
    assert done.status == "completed" and done.gpu_ms > 0
    [report] = [r for r in await finished_reports(settings) if r.job_id == job.job_id]
    assert report.gpu_ms == done.gpu_ms and done.charged_mc == min(report.gpu_ms, job.budget_ms)
    account = app.account("ann")
    now = datetime.now(UTC)
    assert account.held_mc == 0
    assert account.available_mc(now) == before - done.charged_mc  # billed exactly, once
    # The image and its thumbnail are in S3 at their deterministic keys.
    from gpu_consumer.outputs import s3_client

    s3 = s3_client(settings)
    for image in done.images:
        assert image["key"] == f"users/ann/images/{job.job_id}-0.png"
        png = s3.get_object(Bucket=settings.s3_bucket, Key=image["key"])["Body"].read()
        assert len(png) == image["size_bytes"]
        assert image["sha256"] == hashlib.sha256(png).hexdigest()  # what a receipt names
        s3.head_object(Bucket=settings.s3_bucket, Key=image["thumbnail_key"])
    assert platform.pool is not None

    async def projected() -> bool:
        # usage_records and balances are written by different projections: wait for both, or
        # the audit below can run while the ledger projection still shows the hold.
        row = await platform.pool.fetchrow(  # type: ignore[union-attr]
            "SELECT u.charged_mc, b.available_mc, b.held_mc FROM usage_records u "
            "JOIN balances b USING (user_id) WHERE u.job_id = $1",
            job.job_id,
        )
        return (
            row is not None
            and row["charged_mc"] == done.charged_mc
            and (row["available_mc"], row["held_mc"]) == (account.available_mc(now), 0)
        )

    await wait_until(projected, timeout=30)
    # The auditors' tools agree with all of it.
    env = {**os.environ, "PINKSEA_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix}
    for tool in ("verify", "reconcile"):
        result = subprocess.run(
            [sys.executable, "-m", "cli", "ledger", tool, "--database-url", settings.database_url],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr


async def test_cancel_before_start_bills_nothing_and_during_run_bills_the_time_used(
    platform: Platform,
) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    app.register_user("bo", datetime.now(UTC))
    long_job = submit(app, "bo", "long", LONG)
    r = redis.Redis.from_url(settings.redis_url)

    async def started() -> bool:
        return (await asyncio.to_thread(app.job, long_job.job_id)).status == "running"

    await wait_until(started, timeout=60, interval=0.05)
    # Submitted once the long job runs: the trial runs one job at a time, so this one waits.
    queued = submit(app, "bo", "queued")
    await asyncio.sleep(0.3)
    for job in (queued, long_job):
        app.cancel_job(job.job_id, datetime.now(UTC))
        r.set(cancel_flag(settings.redis_key_prefix, job.job_id), "1", ex=3600)
    await platform.until_terminal(queued.job_id, long_job.job_id)
    cancelled_early, cancelled_running = app.job(queued.job_id), app.job(long_job.job_id)
    assert cancelled_early.status == "cancelled" and cancelled_early.charged_mc == 0
    assert cancelled_running.status == "cancelled"
    assert 0 < cancelled_running.charged_mc == cancelled_running.gpu_ms < long_job.budget_ms
    assert app.account("bo").held_mc == 0


async def test_a_killed_worker_loses_its_job_to_another_and_it_is_billed_once(
    platform: Platform,
) -> None:
    await platform.start(workers=0, lease_s=3.0)
    app, settings = platform.app, platform.settings
    env = {
        **os.environ,
        "PINKSEA_DATABASE_URL": settings.database_url,
        "PINKSEA_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "PINKSEA_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "PINKSEA_S3_BUCKET": settings.s3_bucket,
        "PINKSEA_MODELS_DIR": "",
        "PINKSEA_MODELS_CACHE_DIR": str(platform.models_cache),
        "PINKSEA_HEARTBEAT_INTERVAL_S": "0.5",
    }
    doomed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "gpu-worker",
            "--tier",
            "basic",
            "--device",
            "cpu",
            "--worker-id",
            "doomed",
            "--metrics-port",
            "0",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        app.register_user("cy", datetime.now(UTC))
        job = submit(app, "cy", "survivor", LONG)

        async def running_on_doomed() -> bool:
            j = await asyncio.to_thread(app.job, job.job_id)
            return j.status == "running" and j.worker_id == "doomed"

        await wait_until(running_on_doomed, timeout=90, interval=0.1)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        await platform.start_worker("rescuer")
        await platform.until_terminal(job.job_id, timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            doomed.kill()
    done = app.job(job.job_id)
    assert done.status == "completed" and done.attempt == 2 and done.worker_id == "rescuer"
    account = app.account("cy")
    settlements = [
        e for e in app.events.get(account.id) if isinstance(e, CreditAccount.HoldSettled)
    ]
    assert len(settlements) == 1 and settlements[0].charged_mc == done.charged_mc
    assert account.held_mc == 0


async def test_duplicate_and_late_reports_change_nothing_and_poison_jobs_dead_letter(
    platform: Platform,
) -> None:
    await platform.start(workers=1)
    app, settings = platform.app, platform.settings
    app.register_user("di", datetime.now(UTC))
    job = submit(app, "di", "once")
    # No weights for this model on the worker: every attempt fails on the platform's side.
    poison = submit(
        app,
        "di",
        "poison",
        JobParameters(model="sdxl-base-1.0", prompt="x", steps=4, width=1024, height=1024),
    )
    await platform.until_terminal(job.job_id, poison.job_id, timeout=120)
    charged = app.job(job.job_id).charged_mc
    available = app.account("di").available_mc(datetime.now(UTC))
    [report] = [r for r in await finished_reports(settings) if r.job_id == job.job_id]
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        for late in (report, report.model_copy(update={"gpu_ms": report.gpu_ms + 500})):
            await producer.send_and_wait(
                settings.topic(REPORTS_TOPIC), late.to_bytes(), key=str(job.job_id).encode()
            )
    finally:
        await producer.stop()
    await asyncio.sleep(2)
    assert app.job(job.job_id).charged_mc == charged
    assert app.account("di").available_mc(datetime.now(UTC)) == available
    dead = app.job(poison.job_id)
    assert dead.status == "failed" and dead.charged_mc == 0 and dead.attempt == 3
    assert app.account("di").held_mc == 0
    letter = await dead_letters(settings, poison.job_id)
    assert letter.job_id == poison.job_id


async def dead_letters(settings: Settings, job_id: uuid.UUID, timeout: float = 20) -> DeadLetter:
    consumer = AIOKafkaConsumer(
        settings.topic(DLQ_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    for r in records:
                        letter = DeadLetter.model_validate_json(r.value)
                        if letter.job_id == job_id:
                            return letter
    finally:
        await consumer.stop()


async def test_two_users_share_two_workers_fairly_within_their_limits_across_a_scheduler_restart(
    platform: Platform,
) -> None:
    await platform.start(workers=2)
    app = platform.app
    for user in ("greedy", "modest"):
        app.register_user(user, datetime.now(UTC))
    greedy = [submit(app, "greedy", f"g{i}") for i in range(8)]
    modest = [submit(app, "modest", f"m{i}") for i in range(3)]
    await asyncio.sleep(1.0)
    await platform.stop("scheduler")  # restarted mid-stream
    platform.start_scheduler()
    ids = [j.job_id for j in greedy + modest]
    await platform.until_terminal(*ids, timeout=180)
    jobs = [app.job(i) for i in ids]
    assert all(j.status == "completed" for j in jobs)
    assert all(j.attempt == 1 for j in jobs), "a job was dispatched twice"
    # Per-user limit (trial: 1 at a time): a user's runs never overlap.
    for user in ("greedy", "modest"):
        spans = sorted(_span(app, j.id) for j in jobs if j.user_id == user)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), f"{user} overlapped"
    # Fair: the modest user's jobs did not wait behind all of the greedy user's.
    first_greedy_done = sorted(_span(app, j.id)[1] for j in jobs if j.user_id == "greedy")
    last_modest_start = max(_span(app, j.id)[0] for j in jobs if j.user_id == "modest")
    assert last_modest_start < first_greedy_done[-1]


def _span(app: PinkseaApplication, job_id: uuid.UUID) -> tuple[datetime, datetime]:
    events = [cast(Aggregate.Event, e) for e in app.events.get(job_id)]
    started = next(e.timestamp for e in events if type(e).__name__ == "Started")
    ended = events[-1].timestamp
    return started, ended
