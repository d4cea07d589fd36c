"""bench.consumer_overhead: what a GPU worker costs around the pipeline, on the tiny model (CPU).

One real ``GpuWorker`` (Kafka consumer and producer, Redis progress and cancel flag, S3 upload
of the PNG and its WebP thumbnail) is sent ``Dispatch`` messages one at a time on its tier's
topic. For each job its ``JobRecord`` gives the time from dispatch receipt to the ``Finished``
report acknowledged by Kafka (``total_ms``) and the metered pipeline time (``gpu_ms``, the
billed figure); the model load (first job only) is excluded:

    overhead_ms = total_ms - gpu_ms - load_ms,    overhead ratio = overhead_ms / gpu_ms

Three job sizes are run, and the smallest again with a LoRA (the tiny peft LoRA of
gpu_consumer/tiny_lora.py, read from S3, checked, applied before the run and removed after it:
its apply time is in ``load_ms``, not billed; its removal is in the overhead) and as
image-to-image (8 steps at strength 0.5: the same 4 denoising steps, from an upload read from S3
before the run: its read is in the overhead, not billed). The summary line
is the smallest plain job, the demo's job (64 px, 4 steps), where the ratio is highest:
value = median overhead ms, baseline = median pipeline ms of the same jobs, ratio = overhead /
pipeline (target <= 1.0: the worker's own work costs no more than the pipeline it wraps).

    python -m bench.consumer_overhead [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import Image
from rich.console import Console
from rich.table import Table

from bench.projection_lag import drop_topics, quiet_logs
from bench.support import percentile, scratch_database, summary
from domain.parameters import LoraRef, RunParameters
from domain.user_models import user_model_key
from gpu_consumer.config import GpuWorkerSettings
from gpu_consumer.outputs import s3_client
from gpu_consumer.registry import ModelRegistry
from gpu_consumer.tiny_lora import build_tiny_lora
from gpu_consumer.worker import GpuWorker, JobRecord
from infra.health import ensure_bucket
from infra.kafka import ensure_topics, idempotent_producer
from infra.messages import Dispatch, Outcome
from infra.settings import Settings
from infra.topics import dispatch_topic

TARGET_RATIO = 1.0
# (steps, side in px); the first is the headline (the demo's and the tests' job).
SIZES = ((4, 64), (10, 128), (20, 256))
LORA_SIZE = SIZES[0]  # the headline job again, with one LoRA
IMG2IMG_STEPS, IMG2IMG_STRENGTH = 8, 0.5  # int(8 x 0.5) = 4 steps, as the headline job
BENCH_USER = "bench-user"
PLAIN, LORA, IMG2IMG = "plain", "lora", "img2img"  # the variants of a job


@contextlib.asynccontextmanager
async def gpu_stack(prefix: str) -> AsyncIterator[Settings]:
    """Scratch database and topic prefix (bench.support), plus a Redis key prefix and an S3
    bucket of this run's own; the bucket, keys and topics are removed afterwards."""
    run_id = uuid.uuid4().hex[:8]
    with scratch_database(prefix) as base:
        settings = base.model_copy(
            update={
                "redis_key_prefix": f"bench{run_id}:",
                "s3_bucket": f"pinksea-bench-{run_id}",
            }
        )
        s3 = s3_client(settings)
        ensure_bucket(s3, settings.s3_bucket, settings.s3_region)
        try:
            yield settings
        finally:
            _drop_bucket(s3, settings.s3_bucket)
            _drop_redis_keys(settings)
            await drop_topics(settings)


def _drop_bucket(s3: object, bucket: str) -> None:
    with contextlib.suppress(Exception):
        paginator = s3.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})  # type: ignore[attr-defined]
        s3.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]


def _drop_redis_keys(settings: Settings) -> None:
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(f"{settings.redis_key_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()


def new_worker(
    settings: Settings, worker_id: str, on_job_done: object = None, tier: str = "basic"
) -> GpuWorker:
    """A CPU worker on the tiny model, configured as tests/e2e configure theirs. The tiny
    model is built once into the default models cache and reused by later runs."""
    config = GpuWorkerSettings(models_dir=None, heartbeat_interval_s=0.5, stop_grace_s=5)
    registry = ModelRegistry(models_dir=None, cache_dir=config.models_cache_dir)
    return GpuWorker(
        settings,
        tier,
        worker_id,
        "cpu",
        config=config,
        registry=registry,
        on_job_done=on_job_done,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running(name: str, run: object) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``run(stop)`` as a task; stop it and wait for it on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop), name=name)  # type: ignore[operator]
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def dispatch_for(
    worker_id: str,
    steps: int,
    side: int,
    index: int,
    lora: LoraRef | None = None,
    init_image: str | None = None,
) -> Dispatch:
    return Dispatch(
        job_id=uuid.uuid4(),
        attempt=1,
        worker_id=worker_id,
        user_id=BENCH_USER,
        tier="basic",
        parameters=RunParameters(
            model="tiny-sd",
            prompt=f"a pink sea at dawn, take {index}",
            steps=steps,
            width=side,
            height=side,
            seed=index,
            loras=None if lora is None else (lora,),
            init_image=init_image,
            strength=None if init_image is None else IMG2IMG_STRENGTH,
        ),
        budget_ms=600_000,
        dispatched_at=datetime.now(UTC),
    )


@dataclass
class Case:
    steps: int
    side: int
    records: list[JobRecord]
    delivery_ms: list[float]  # Dispatch acknowledged by Kafka -> received by the worker
    variant: str = PLAIN

    @property
    def label(self) -> str:
        size = f"{self.side}px, {self.steps} steps"
        if self.variant == IMG2IMG:
            return f"{size} img2img x{IMG2IMG_STRENGTH}"
        return size + (" + LoRA" if self.variant == LORA else "")

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.records)

    @property
    def other_ms(self) -> float:
        return statistics.median(r.overhead_ms - r.upload_ms - r.input_ms for r in self.records)

    @property
    def ratio(self) -> float:
        return self.median("overhead_ms") / self.median("gpu_ms")


async def measure(settings: Settings, jobs_per_size: int) -> list[Case]:
    await ensure_topics(settings)
    done: asyncio.Queue[tuple[JobRecord, int]] = asyncio.Queue()
    worker = new_worker(settings, "bench-w", lambda r: done.put_nowait((r, time.perf_counter_ns())))
    producer = idempotent_producer(settings)
    await producer.start()
    topic = settings.topic(dispatch_topic("basic"))
    cases: list[Case] = []
    try:
        async with running("worker", worker.run):
            await asyncio.wait_for(worker.ready.wait(), 120)
            lora = await asyncio.to_thread(_stored_lora, settings, worker)
            upload = await asyncio.to_thread(_stored_upload, settings, LORA_SIZE[1])
            index = 0

            async def one(steps: int, side: int, variant: str) -> tuple[JobRecord, float]:
                nonlocal index
                index += 1
                d = dispatch_for(
                    worker.worker_id,
                    steps,
                    side,
                    index,
                    lora if variant == LORA else None,
                    upload if variant == IMG2IMG else None,
                )
                await producer.send_and_wait(topic, d.to_bytes(), key=str(d.job_id).encode())
                sent = time.perf_counter_ns()
                record, ended = await asyncio.wait_for(done.get(), 300)
                if record.outcome is not Outcome.COMPLETED:
                    raise RuntimeError(f"job {record.key} ended {record.outcome.value}")
                received = ended - record.total_ms * 1_000_000
                return record, (received - sent) / 1e6

            runs = [(steps, side, PLAIN) for steps, side in SIZES]
            runs += [(*LORA_SIZE, LORA), (IMG2IMG_STEPS, LORA_SIZE[1], IMG2IMG)]
            for steps, side, variant in runs:  # warm-up: the model load, first-call costs
                await one(steps, side, variant)
            for steps, side, variant in runs:
                case = Case(steps, side, [], [], variant)
                for _ in range(jobs_per_size):
                    record, delivery = await one(steps, side, variant)
                    case.records.append(record)
                    case.delivery_ms.append(delivery)
                cases.append(case)
    finally:
        await producer.stop()
    return cases


def _stored_lora(settings: Settings, worker: GpuWorker) -> LoraRef:
    """The tiny LoRA built from the worker's own tiny-sd and stored as the bench user's model."""
    model = worker.registry.load("tiny-sd", worker.device)
    with tempfile.TemporaryDirectory() as directory:
        data = build_tiny_lora(model.pipeline, f"{directory}/lora.safetensors").read_bytes()
    model_id = uuid.uuid4()
    key = user_model_key(BENCH_USER, model_id)
    s3_client(settings).put_object(Bucket=settings.s3_bucket, Key=key, Body=data)
    return LoraRef(id=model_id, weight=0.8, sha256=hashlib.sha256(data).hexdigest())


def _stored_upload(settings: Settings, side: int) -> str:
    """A PNG stored as the bench user's upload (as POST /v1/uploads leaves one); its id."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (230, 120, 160)).save(buffer, format="PNG")
    upload_id = str(uuid.uuid4())
    key = f"users/{BENCH_USER}/uploads/{upload_id}.png"
    s3_client(settings).put_object(Bucket=settings.s3_bucket, Key=key, Body=buffer.getvalue())
    return upload_id


def report(cases: list[Case], jobs_per_size: int) -> None:
    table = Table(
        title=f"bench.consumer_overhead: one CPU worker, tiny-sd, {jobs_per_size} jobs per size"
    )
    table.add_column("median per job")
    for c in cases:
        table.add_column(c.label, justify="right")
    rows = (
        ("pipeline (gpu_ms) ms", lambda c: f"{c.median('gpu_ms'):.0f}"),
        ("LoRA read + apply (load_ms, not billed) ms", lambda c: f"{c.median('load_ms'):.0f}"),
        ("receipt -> Finished acked ms", lambda c: f"{c.median('total_ms'):.0f}"),
        ("overhead ms", lambda c: f"{c.median('overhead_ms'):.0f}"),
        ("  of which S3 upload ms", lambda c: f"{c.median('upload_ms'):.0f}"),
        ("  of which input read ms (not billed)", lambda c: f"{c.median('input_ms'):.0f}"),
        ("  other ms", lambda c: f"{c.other_ms:.0f}"),
        ("overhead p90 ms", lambda c: f"{percentile([r.overhead_ms for r in c.records], 0.9):.0f}"),
        ("overhead / pipeline", lambda c: f"{c.ratio:.2f}"),
        (
            "dispatch delivery ms (not in overhead)",
            lambda c: f"{statistics.median(c.delivery_ms):.1f}",
        ),
    )
    for label, cell in rows:
        table.add_row(label, *(cell(c) for c in cases))
    Console().print(table)
    print(
        "overhead = dispatch receipt -> Finished acknowledged, minus pipeline and model load; "
        "'other' = Redis checks, Started/Finished acks, PNG encoding, thread hand-offs, polling. "
        "Delivery = Dispatch acked by Kafka -> received by the worker. "
        "Target: overhead / pipeline <= 1.0 on the smallest job (the summary line)."
    )


async def run(quick: bool) -> None:
    quiet_logs()
    jobs_per_size = 6 if quick else 40
    async with gpu_stack("bench_overhead") as settings:
        cases = await measure(settings, jobs_per_size)
    report(cases, jobs_per_size)
    head = cases[0]
    summary(
        "consumer_overhead",
        "ms",
        head.median("overhead_ms"),
        head.median("gpu_ms"),
        TARGET_RATIO,
        higher_is_better=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the GPU worker's own overhead.")
    parser.add_argument("--quick", action="store_true", help="fewer jobs (< 60 s)")
    asyncio.run(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
