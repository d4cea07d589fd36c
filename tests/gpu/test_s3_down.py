"""S3 down: the GPU worker retries the image upload, then fails the attempt as
``storage_unavailable``; the job is retried up to its attempt cap with the hold kept, then the
settler voids the hold (nothing billed, README "Billing policy") and the job is dead-lettered.
The same worker, still running, completes and bills the next job once S3 is back.

Real parts only: a private moto S3 server process that only this test's worker stores images
in, killed with SIGKILL and started again; the local stack's PostgreSQL, Kafka and Redis; the
relay, projections, scheduler and settler of tests/e2e. The tiny model is built locally, so only
the image upload depends on the private S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from PIL import Image

from audit.store import stream_aggregates
from audit.verify import VerifyReport, verify
from gpu_consumer import outputs
from gpu_consumer.config import GpuWorkerSettings
from gpu_consumer.outputs import STORAGE_UNAVAILABLE, ImageStore, UploadFailed
from gpu_consumer.registry import ModelRegistry
from gpu_consumer.run import classify
from gpu_consumer.worker import GpuWorker
from infra.messages import Outcome
from infra.settings import Settings
from tests.e2e.test_generation_flow import (  # the e2e harness and its fixtures
    Platform,
    dead_letters,
    platform,  # noqa: F401
    stack,  # noqa: F401
    submit,
)
from tests.integration.streaming_kit import wait_until

pytestmark = pytest.mark.integration

# Short on purpose (the defaults are a minute): three attempts must fail within the test.
OUTAGE_CONFIG = {
    "upload_deadline_s": 1.5,
    "upload_backoff_s": 0.1,
    "upload_backoff_max_s": 0.4,
    "s3_max_attempts": 2,
    "s3_connect_timeout_s": 1.0,
    "s3_read_timeout_s": 5.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateS3:
    """A moto S3 server process of this test's own (infra/local/s3.sh runs the shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self._answers():  # a real ListBuckets, as s3.sh checks
            assert self.process.poll() is None, "the private moto server exited"
            assert time.monotonic() < deadline, "the private moto server did not answer"
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=1) as response:
                return b"ListAllMyBucketsResult" in response.read()
        except OSError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no goodbye, connections just die
        self.process.wait()


@pytest.fixture
def private_s3() -> Iterator[PrivateS3]:
    server = PrivateS3()
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


def create_bucket(settings: Settings) -> None:
    outputs.s3_client(settings).create_bucket(
        Bucket=settings.s3_bucket,
        CreateBucketConfiguration={"LocationConstraint": settings.s3_region},
    )


async def start_worker(p: Platform, settings: Settings, models: Path) -> GpuWorker:
    config = GpuWorkerSettings(
        models_dir=None,
        models_cache_dir=models,
        heartbeat_interval_s=0.5,
        stop_grace_s=5,
        **OUTAGE_CONFIG,  # type: ignore[arg-type]
    )
    registry = ModelRegistry(models_dir=None, cache_dir=models)
    worker = GpuWorker(settings, "basic", "w-s3", "cpu", config=config, registry=registry)
    p.workers["w-s3"] = worker
    p._spawn("w-s3", worker.run)
    await asyncio.wait_for(worker.ready.wait(), 60)
    return worker


async def ledger_verify(settings: Settings) -> VerifyReport:
    """What `pinksea ledger verify` checks, once the projections have caught up."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=3, max_size=3)
    report = VerifyReport()
    try:

        async def clean() -> bool:
            nonlocal report
            async with pool.acquire() as conn:
                report = await verify(pool, stream_aggregates(conn))
            return report.ok

        with contextlib.suppress(TimeoutError):
            await wait_until(clean, timeout=20, interval=0.5)
    finally:
        await pool.close()
    return report


def test_the_upload_retries_until_its_deadline_but_not_what_no_retry_can_fix(
    settings: Settings, s3_client: Any
) -> None:
    nothing_there = settings.model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    client = outputs.s3_client(nothing_there, max_attempts=2, connect_timeout_s=1)
    store = ImageStore(client, "b", deadline_s=1.0, backoff_s=0.05, backoff_max_s=0.2)
    began = time.monotonic()
    with pytest.raises(UploadFailed, match="Could not connect") as refused:
        store.save("u", uuid.uuid4(), [Image.new("RGB", (8, 8))] * 2)
    spent = time.monotonic() - began
    # Jittered retries for the whole deadline, none started past it (one call is ~ms here).
    assert 0.6 < spent < 1.5, spent
    assert store.stats.failed_calls > 2 and store.stats.requests == 2 * store.stats.failed_calls
    failure = classify(refused.value, "upload")
    assert (failure.fault, failure.retryable) == ("platform", True)
    assert failure.reason.startswith(f"{STORAGE_UNAVAILABLE}: s3://b/users/u/")
    # An unknown bucket will not appear on a retry: one call, then the failure.
    store = ImageStore(s3_client, f"no-such-bucket-{uuid.uuid4().hex[:8]}", deadline_s=30)
    with pytest.raises(UploadFailed, match="NoSuchBucket"):
        store.save("u", uuid.uuid4(), [Image.new("RGB", (8, 8))])
    assert store.stats.calls == 1


def account_events(p: Platform, user: str, kind: str, hold_id: str) -> list[Any]:
    events = p.app.events.get(p.app.account(user).id)
    return [e for e in events if type(e).__name__ == kind and getattr(e, "hold_id", "") == hold_id]


async def test_s3_down_fails_the_job_unbilled_and_the_worker_serves_the_next_one(
    platform: Platform,  # noqa: F811
    private_s3: PrivateS3,
    models_cache: Path,
) -> None:
    app, settings = platform.app, platform.settings
    # Only the worker's images go to the private S3; everything else is the session's stack.
    images_s3 = settings.model_copy(
        update={"s3_endpoint_url": private_s3.url, "s3_bucket": f"outage-{uuid.uuid4().hex[:8]}"}
    )
    create_bucket(images_s3)
    await platform.start(workers=0)
    worker = await start_worker(platform, images_s3, models_cache)  # warmed up on a live S3
    app.register_user("sam", datetime.now(UTC))
    before = app.account("sam").available_mc(datetime.now(UTC))

    private_s3.kill()
    began = time.monotonic()
    lost = submit(app, "sam", "lost")
    await platform.until_terminal(lost.job_id, timeout=45)
    outage_s = time.monotonic() - began

    job = app.job(lost.job_id)
    assert job.status == "failed" and job.attempt == 3, (job.status, job.attempt, job.failure)
    assert (job.failure or "").startswith(f"{STORAGE_UNAVAILABLE}: s3://{images_s3.s3_bucket}/")
    assert job.charged_mc == 0
    # Every attempt ran on this worker, retried its upload, and was reported as a platform
    # failure; botocore retried the requests under those calls too.
    assert [r.outcome for r in worker.history] == [Outcome.FAILED] * 3
    stats = worker.images.stats
    assert stats.calls == stats.failed_calls > 3, stats
    assert stats.failed_calls < stats.requests <= 2 * stats.failed_calls, stats
    measured = f"3 attempts failed in {outage_s:.1f} s: {stats.failed_calls} PUT calls, "
    measured += f"{stats.requests} HTTP requests"
    # The hold was kept across the attempts, then voided: nothing billed.
    assert not account_events(platform, "sam", "HoldSettled", job.hold_id)
    assert len(account_events(platform, "sam", "HoldReleased", job.hold_id)) == 1
    account = app.account("sam")
    assert account.held_mc == 0 and account.available_mc(datetime.now(UTC)) == before
    letter = await dead_letters(settings, lost.job_id)
    assert letter.attempts == 3 and letter.reason.startswith(STORAGE_UNAVAILABLE)

    # S3 back (moto keeps objects in memory: a new process has no bucket); the same worker,
    # never restarted, stores the next job's images and it is billed once.
    assert not platform.tasks["w-s3"][1].done()
    private_s3.start()
    create_bucket(images_s3)
    calls_before = stats.calls
    stored = submit(app, "sam", "stored")
    await platform.until_terminal(stored.job_id, timeout=30)
    done = app.job(stored.job_id)
    assert done.status == "completed" and (done.attempt, done.worker_id) == (1, "w-s3")
    assert done.charged_mc > 0 and stats.calls - calls_before == 2  # image + thumbnail
    for image in done.images:
        outputs.s3_client(images_s3).head_object(Bucket=images_s3.s3_bucket, Key=image["key"])
    [settled] = account_events(platform, "sam", "HoldSettled", done.hold_id)
    assert settled.charged_mc == done.charged_mc
    assert app.account("sam").available_mc(datetime.now(UTC)) == before - done.charged_mc

    report = await ledger_verify(settings)
    assert report.ok, [(f.check, f.detail, f.rows) for f in report.findings]
    print(f"S3 down: {measured}")  # shown with -s
