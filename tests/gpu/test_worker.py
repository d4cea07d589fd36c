"""The worker end to end on the local stack: dispatches from Kafka, progress and cancel flags
in Redis, images in S3, reports back on Kafka, offsets committed after them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from gpu_consumer.config import GpuWorkerSettings
from gpu_consumer.registry import ModelRegistry
from gpu_consumer.worker import GpuWorker
from infra import redis_keys
from infra.kafka import ensure_topics, idempotent_producer
from infra.messages import Dispatch, Finished, Heartbeat, Outcome, Started, parse_report
from infra.settings import Settings
from infra.topics import REPORTS_TOPIC, dispatch_topic
from tests.gpu.conftest import make_dispatch

Report = Heartbeat | Started | Finished


def new_worker(
    settings: Settings, registry: ModelRegistry, models: Path, worker_id: str
) -> GpuWorker:
    config = GpuWorkerSettings(
        models_dir=None, models_cache_dir=models, heartbeat_interval_s=0.5, stop_grace_s=5
    )
    return GpuWorker(settings, "basic", worker_id, "cpu", config=config, registry=registry)


@contextlib.asynccontextmanager
async def running(worker: GpuWorker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def send(settings: Settings, *dispatches: Dispatch) -> None:
    """In this order, on one partition: the worker sees them in this order."""
    producer = idempotent_producer(settings)
    await producer.start()
    try:
        for d in dispatches:
            topic = settings.topic(dispatch_topic("basic"))
            await producer.send_and_wait(
                topic, d.to_bytes(), key=str(d.job_id).encode(), partition=0
            )
    finally:
        await producer.stop()


async def reports_until(
    settings: Settings, done: Callable[[list[Report]], bool], timeout: float = 60
) -> list[Report]:
    """Every report on the topic (from its start) once ``done`` holds for them."""
    consumer = AIOKafkaConsumer(
        settings.topic(REPORTS_TOPIC),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: list[Report] = []
    try:
        async with asyncio.timeout(timeout):
            while not done(seen):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    seen.extend(parse_report(r.value) for r in records)
    finally:
        await consumer.stop()
    return seen


def finished(reports: list[Report], job_id: uuid.UUID) -> list[Finished]:
    return [r for r in reports if isinstance(r, Finished) and r.job_id == job_id]


def started(reports: list[Report], job_id: uuid.UUID) -> list[Started]:
    return [r for r in reports if isinstance(r, Started) and r.job_id == job_id]


async def committed(settings: Settings, worker_id: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        group = f"{settings.kafka_topic_prefix}pinksea.gpu.worker.{worker_id}"
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    mark = offsets.get(TopicPartition(settings.topic(dispatch_topic("basic")), 0))
    return mark.offset if mark else None


async def test_worker_runs_its_own_dispatch_end_to_end(
    settings: Settings, registry: ModelRegistry, models_cache: Path, s3_client: Any, redis_sync: Any
) -> None:
    await ensure_topics(settings)
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    user_id = f"user-{uuid.uuid4().hex[:6]}"
    other = make_dispatch(worker_id="another-worker", user_id=user_id)
    own = make_dispatch(worker_id=worker_id, user_id=user_id, batch_size=2)
    progress = redis_sync.pubsub()
    progress.subscribe(redis_keys.progress_channel(settings.redis_key_prefix, own.job_id))
    worker = new_worker(settings, registry, models_cache, worker_id)

    async with running(worker):
        await send(settings, other, own)
        reports = await reports_until(settings, lambda rs: bool(finished(rs, own.job_id)))
        # The same dispatch again (a redelivery) is not run twice; a marker behind it shows
        # that the worker has read past it.
        marker = make_dispatch(worker_id=worker_id, user_id=user_id)
        await send(settings, own, marker)
        reports = await reports_until(settings, lambda rs: bool(finished(rs, marker.job_id)))

    [start] = started(reports, own.job_id)
    assert (start.worker_id, start.attempt, start.gpu) == (worker_id, 1, "cpu")
    [done] = finished(reports, own.job_id)
    assert done.outcome is Outcome.COMPLETED and done.fault is None and done.error is None
    assert done.gpu_ms > 0 and done.cuda_ms is None
    assert done.model_load_ms == start.model_load_ms
    assert [i.name for i in done.images] == [f"{own.job_id}-0", f"{own.job_id}-1"]
    for image in done.images:
        assert image.key == f"users/{user_id}/images/{image.name}.png"
        assert image.thumbnail_key == f"users/{user_id}/thumbnails/{image.name}.webp"
        head = s3_client.head_object(Bucket=settings.s3_bucket, Key=image.key)
        assert head["ContentLength"] == image.size_bytes and (image.width, image.height) == (64, 64)
        assert s3_client.head_object(Bucket=settings.s3_bucket, Key=image.thumbnail_key)
    # The dispatch for another worker was skipped.
    assert not started(reports, other.job_id) and not finished(reports, other.job_id)
    # Progress went out live and stays readable.
    messages = [progress.get_message(timeout=1.0) for _ in range(3)]
    steps = [json.loads(m["data"])["step"] for m in messages if m and m["type"] == "message"]
    assert steps and steps == sorted(steps)
    last = redis_sync.get(redis_keys.last_progress(settings.redis_key_prefix, own.job_id))
    assert json.loads(last)["step"] == json.loads(last)["total_steps"] == 4
    # Heartbeats: busy with the job while it ran, then idle with the model loaded.
    beats = [r for r in reports if isinstance(r, Heartbeat) and r.worker_id == worker_id]
    assert any(b.busy_job_id == own.job_id and b.busy_attempt == 1 for b in beats)
    assert any(b.busy_job_id is None and b.models_loaded == ["tiny-sd"] for b in beats)
    # Committed past the last dispatch, after its report: a restart starts behind them.
    assert await committed(settings, worker_id) is not None
    restarted = new_worker(settings, registry, models_cache, worker_id)
    final = make_dispatch(worker_id=worker_id, user_id=user_id)
    async with running(restarted):
        await send(settings, final)
        reports = await reports_until(settings, lambda rs: bool(finished(rs, final.job_id)))
    assert len(finished(reports, own.job_id)) == 1 and len(finished(reports, marker.job_id)) == 1
    history = list(worker.history) + list(restarted.history)
    assert [r.key for r in history] == [own.key, marker.key, final.key]
    assert all(r.total_ms >= r.gpu_ms + r.load_ms for r in history)


async def test_worker_reports_failures_cancels_and_budget_stops(
    settings: Settings, registry: ModelRegistry, models_cache: Path, redis_sync: Any
) -> None:
    await ensure_topics(settings)
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    unknown = make_dispatch(worker_id=worker_id, model="no-such-model")
    invalid = make_dispatch(worker_id=worker_id, width=60)
    cancelled = make_dispatch(worker_id=worker_id)
    redis_sync.set(redis_keys.cancel_flag(settings.redis_key_prefix, cancelled.job_id), "1")
    over_budget = make_dispatch(worker_id=worker_id, steps=30, budget_ms=1)
    jobs = (unknown, invalid, cancelled, over_budget)

    async with running(new_worker(settings, registry, models_cache, worker_id)):
        await send(settings, *jobs)
        reports = await reports_until(
            settings, lambda rs: all(finished(rs, d.job_id) for d in jobs)
        )

    def report(d: Dispatch) -> Finished:
        [one] = finished(reports, d.job_id)
        return one

    for user_error in (report(unknown), report(invalid)):
        assert user_error.outcome is Outcome.FAILED and user_error.gpu_ms == 0
        assert (user_error.fault, user_error.retryable) == ("user", False) and user_error.error
    assert not started(reports, unknown.job_id)  # no model, no start
    assert report(cancelled).outcome is Outcome.CANCELLED and report(cancelled).gpu_ms == 0
    assert not started(reports, cancelled.job_id)  # cancelled before it started: nothing ran
    stopped = report(over_budget)
    assert stopped.outcome is Outcome.BUDGET_EXHAUSTED and stopped.gpu_ms >= 1
    assert stopped.images == [] and started(reports, over_budget.job_id)


async def test_a_stale_dispatch_is_refused_as_a_retryable_platform_failure(
    settings: Settings, registry: ModelRegistry, models_cache: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    await ensure_topics(settings)
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    stale = make_dispatch(worker_id=worker_id, dispatched_at=datetime.now(UTC) - timedelta(hours=2))
    async with running(new_worker(settings, registry, models_cache, worker_id)):
        await send(settings, stale)
        reports = await reports_until(settings, lambda rs: bool(finished(rs, stale.job_id)))
    [report] = finished(reports, stale.job_id)
    assert report.outcome is Outcome.FAILED and report.gpu_ms == 0
    assert (report.fault, report.retryable) == ("platform", True) and "stale" in (
        report.error or ""
    )


async def test_stop_lets_a_job_finish_within_the_grace_then_aborts_it(
    settings: Settings, registry: ModelRegistry, models_cache: Path
) -> None:
    await ensure_topics(settings)
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    worker = new_worker(settings, registry, models_cache, worker_id)
    worker.config.stop_grace_s = 0.3
    # Minutes of CPU if it ran to the end.
    long_job = make_dispatch(
        worker_id=worker_id, steps=150, batch_size=8, width=256, height=256, scheduler="ddim"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), 30)
    await send(settings, long_job)
    await reports_until(settings, lambda rs: bool(started(rs, long_job.job_id)))
    stop.set()
    await asyncio.wait_for(task, 30)  # the grace, then one step
    reports = await reports_until(settings, lambda rs: bool(finished(rs, long_job.job_id)))
    [report] = finished(reports, long_job.job_id)
    assert report.outcome is Outcome.FAILED and (report.fault, report.retryable) == (
        "platform",
        True,
    )
    assert "stopped" in (report.error or "") and report.gpu_ms > 0
    assert await committed(settings, worker_id) is not None  # reported, so not run again


# An idle worker's whole stop: the Kafka close (at most infra.kafka.STOP_S_MAX) and the
# interpreter's exit (a second or two here, longer on a loaded machine), well inside docker's
# --stop-timeout 120 s.
STOP_IDLE_S_MAX = 60


async def exit_log(process: subprocess.Popen[bytes], log: IO[bytes], timeout_s: float) -> str:
    """``process``'s log (its stderr, a file) once it has exited, waiting ``timeout_s`` at
    most; past that, SIGABRT (with PYTHONFAULTHANDLER set, its threads' stacks end the log),
    then SIGKILL."""
    try:
        await asyncio.to_thread(process.wait, timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log.seek(0)
    return log.read().decode(errors="replace")


async def test_the_pinksea_gpu_worker_process_serves_and_stops_on_sigterm(
    settings: Settings, registry: ModelRegistry, models_cache: Path, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    registry.resolve("tiny-sd")  # built already: the process only loads it
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PINKSEA_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PINKSEA_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "PINKSEA_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "PINKSEA_S3_BUCKET": settings.s3_bucket,
        "PINKSEA_MODELS_DIR": str(tmp_path / "no-shared-models"),
        "PINKSEA_MODELS_CACHE_DIR": str(models_cache),
        "OMP_NUM_THREADS": "1",
        "PYTHONFAULTHANDLER": "1",  # SIGABRT dumps every thread's stack (when it hangs)
    }
    command = "from cli.main import app; app()"  # the console script
    arguments = ["--tier", "basic", "--device", "cpu", "--worker-id", worker_id]
    # Its log to a file: a pipe nobody reads while the job runs could fill and block it.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-c", command, "gpu-worker", *arguments, "--metrics-port", "0"],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            job = make_dispatch(worker_id=worker_id)
            await send(settings, job)
            reports = await reports_until(settings, lambda rs: bool(finished(rs, job.job_id)), 120)
            assert finished(reports, job.job_id)[0].outcome is Outcome.COMPLETED
            process.send_signal(signal.SIGTERM)
            errors = await exit_log(process, log, STOP_IDLE_S_MAX)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    tail = errors[-6000:]
    assert process.returncode == 0, f"exit {process.returncode}; stderr ends:\n{tail}"
    assert "worker stopped" in errors
