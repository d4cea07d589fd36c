"""The GPU worker process: dispatches in, reports out, one job at a time.

- Every worker reads its tier's whole dispatch topic in a consumer group of its own (so no
  rebalance ever pauses a running job) and runs the dispatches addressed to it; the others
  are committed past.
- A job runs in a thread. Meanwhile the event loop keeps polling (the consumer stays in its
  group however long the job takes) and keeps heartbeating.
- Prefetch: a dispatch addressed to this worker that arrives while a job runs is held queued
  (not started; its heartbeats name it, so its lease covers it) and starts as soon as the
  running job's ``Finished`` is acknowledged, with no round trip through the scheduler. Its
  cancel flag is read before it starts, as any dispatch's: a cancelled one never runs. The
  worker offers ``PREFETCH_SLOTS`` in its heartbeats; the scheduler fills them.
- Reports: ``Started`` once the model is ready, ``Finished`` at the end, whatever happened:
  every exception of a job becomes a failed report with its fault and retryability, never a
  crash. The dispatch's offset is committed only after Kafka acknowledged its ``Finished``,
  so a crash in between runs the job again (reports are deduplicated downstream), and a
  dispatch this worker already finished is not run twice.
- Stop (an asyncio.Event): an idle worker leaves at once; a running job gets
  ``stop_grace_s`` to finish, then is aborted and reported as a retryable platform failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from gpu_consumer import metrics as gpu_metrics
from gpu_consumer.config import GpuWorkerSettings
from gpu_consumer.inputs import RunInputs, read_inputs
from gpu_consumer.loras import LoraStore
from gpu_consumer.model_cache import Lease, ModelCache
from gpu_consumer.outputs import ImageStore, s3_client
from gpu_consumer.registry import LoadedPipeline, ModelRegistry
from gpu_consumer.run import (
    Failure,
    InvalidJob,
    JobChannel,
    RedisJobChannel,
    RunResult,
    classify,
    run_dispatch,
    validate,
)
from gpu_consumer.upscalers import Upscaler, run_upscale
from infra.kafka import idempotent_producer, manual_consumer, stop_bounded
from infra.messages import Dispatch, Finished, FinishedImage, Heartbeat, Outcome, Started
from infra.settings import Settings
from infra.topics import REPORTS_TOPIC, dispatch_topic

log = structlog.get_logger("gpu_worker")

JOBS = Counter("pinksea_gpu_jobs_total", "Jobs finished by this worker", ["outcome", "fault"])
BILLED_MS = Counter("pinksea_gpu_billed_ms_total", "Metered GPU-ms reported (billed figure)")
BUSY = Gauge("pinksea_gpu_worker_busy", "1 while a job runs")
LOAD_MS = Histogram(
    "pinksea_gpu_model_load_ms",
    "Time to make a model ready (not billed)",
    buckets=(1, 10, 100, 1000, 5000, 15000, 60000),
)
OVERHEAD_MS = Histogram(
    "pinksea_gpu_worker_overhead_ms",
    "Dispatch receipt to Finished acknowledged, minus pipeline and model load time",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 1000),
)

_RECENTLY_FINISHED = 4096  # (job, attempt) keys remembered; older ones sit behind the offset
PREFETCH_SLOTS = 1  # dispatches held queued behind the running job (offered in heartbeats)
_READ_AHEAD_S = 0.1  # while a job runs, how often records read ahead are taken in
_PENDING_MAX = 1000  # records read ahead while a job runs; past this the partitions pause
Pending = tuple[ConsumerRecord, Dispatch | None]  # a record read, and its dispatch if ours


@dataclass(frozen=True)
class JobRecord:
    """What one dispatch cost this worker, for logs, metrics and benchmarks."""

    key: str
    outcome: Outcome
    gpu_ms: int
    cuda_ms: int | None
    load_ms: int
    upload_ms: int
    total_ms: int  # dispatch received -> Finished acknowledged by Kafka
    input_ms: int = 0  # reading the init image and mask from S3 (not billed, like loading)

    @property
    def overhead_ms(self) -> int:
        return self.total_ms - self.gpu_ms - self.load_ms


class GpuWorker:
    def __init__(
        self,
        settings: Settings,
        tier: str,
        worker_id: str,
        device: str | torch.device = "cpu",
        *,
        config: GpuWorkerSettings | None = None,
        registry: ModelRegistry | None = None,
        redis_client: redis.Redis | None = None,
        on_job_done: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.tier = tier
        self.worker_id = worker_id
        self.device = torch.device(device)
        self.config = config or GpuWorkerSettings()
        self.registry = registry or self._registry()
        self.cache = ModelCache(
            self.registry,
            self.device,
            device_budget_bytes=self.config.device_budget_bytes(self.device),
            host_budget_bytes=self.config.host_budget_bytes(),
        )
        self.images = ImageStore(
            self._s3_client(),
            settings.s3_bucket,
            deadline_s=self.config.upload_deadline_s,
            backoff_s=self.config.upload_backoff_s,
            backoff_max_s=self.config.upload_backoff_max_s,
            thumbnail_max_px=self.config.thumbnail_max_px,
        )
        self.loras = LoraStore(self.images.client, settings.s3_bucket)
        # Timeouts: the step callback talks to Redis, and a hung connection must not hang a job.
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.on_job_done = on_job_done
        self.gpu_name = (
            torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        )
        self.reports_topic = settings.topic(REPORTS_TOPIC)
        self.ready = asyncio.Event()  # set once the consumer has its partitions
        self.history: deque[JobRecord] = deque(maxlen=256)
        self._busy: Dispatch | None = None
        # Own dispatches received and not yet started (prefetched), with when they arrived.
        self._queued: OrderedDict[str, tuple[Dispatch, datetime]] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._to_commit: dict[TopicPartition, int] = {}
        self._committing = asyncio.Lock()  # one offset commit at a time, in the order asked
        self._commits: set[asyncio.Task[None]] = set()  # commits running in the background
        self._abort = threading.Event()  # asks the running job to stop (shutdown)
        self._beat_now = asyncio.Event()
        self._stop = asyncio.Event()
        self._log = log.bind(worker_id=worker_id, tier=tier)

    def _registry(self) -> ModelRegistry:
        bucket = self.config.models_s3_bucket
        return ModelRegistry(
            models_dir=self.config.models_dir,
            cache_dir=self.config.models_cache_dir,
            s3_client=self._s3_client() if bucket else None,
            s3_bucket=bucket,
            s3_prefix=self.config.models_s3_prefix,
        )

    def _s3_client(self) -> Any:
        # Short timeouts and a few jittered botocore retries per request: an S3 outage shows
        # within seconds. Past them, the upload retries until its deadline; a model download
        # fails the attempt (storage_unavailable), which the scheduler retries.
        return s3_client(
            self.settings,
            max_attempts=self.config.s3_max_attempts,
            connect_timeout_s=self.config.s3_connect_timeout_s,
            read_timeout_s=self.config.s3_read_timeout_s,
        )

    # -------------------------------------------------------------------------- main loop

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        gpu_metrics.GPUS.watch(self.device, self.tier, self.worker_id, self.gpu_name)
        group = f"pinksea.gpu.worker.{self.worker_id}"
        consumer = manual_consumer(self.settings, group, dispatch_topic(self.tier))
        producer = idempotent_producer(self.settings)
        await producer.start()
        heartbeats: asyncio.Task[None] | None = None
        try:
            await consumer.start()
            await asyncio.to_thread(self._warm_up)
            heartbeats = asyncio.create_task(self._heartbeats(producer))
            self._log.info("worker started", device=str(self.device), gpu=self.gpu_name)
            await self._consume(consumer, producer)
        finally:
            gpu_metrics.GPUS.unwatch(self.worker_id)
            if heartbeats is not None:
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats
            await self._close(consumer, producer)
            self._log.info("worker stopped")

    async def _close(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        """Commit what is due, leave the group, flush the producer, in bounded time: the
        worker's stop (docker --stop-timeout 120 s) is stop_grace_s, the last report, this.
        A dispatch whose offset is left uncommitted runs again at most after a restart, and
        its reports are deduplicated downstream."""
        async with stop_bounded():
            await asyncio.gather(*self._commits, return_exceptions=True)
            with contextlib.suppress(KafkaError):
                await self._commit(consumer)
            await consumer.stop()
            await producer.stop()

    def _warm_up(self) -> None:
        """Connect to S3 and Redis before the first job needs them (a first S3 call also loads
        botocore's service model: about a second of one job's overhead otherwise)."""
        try:
            self.images.client.head_bucket(Bucket=self.images.bucket)
            self.redis.ping()
        except Exception as e:  # the jobs will report it if it lasts
            self._log.warning("warm-up failed", error=str(e))

    async def _consume(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        pending: deque[Pending] = deque()
        while not self._stop.is_set():
            if not pending:
                await self._commit(consumer)
                batch = await consumer.getmany(timeout_ms=200)
                if consumer.assignment():
                    self.ready.set()
                for records in batch.values():
                    self._receive(records, pending)
                continue
            record, dispatch = pending.popleft()
            await self._handle(record, dispatch, consumer, producer, pending)

    def _receive(self, records: list[ConsumerRecord], pending: deque[Pending]) -> None:
        """Read records into ``pending``, each parsed once; own unfinished dispatches are
        noted as queued (with their arrival time) until they start."""
        now = datetime.now(UTC)
        for record in records:
            try:
                dispatch: Dispatch | None = Dispatch.model_validate_json(record.value)
            except ValidationError as e:
                self._log.error("unreadable dispatch skipped", offset=record.offset, error=str(e))
                dispatch = None
            if dispatch is not None and dispatch.worker_id != self.worker_id:
                dispatch = None  # another worker's: only its offset matters here
            if dispatch is not None and dispatch.key not in self._finished:
                if self._busy is not None and not self._queued:
                    self._beat_now.set()  # the scheduler learns at once that it arrived
                self._queued.setdefault(dispatch.key, (dispatch, now))
            pending.append((record, dispatch))

    async def _handle(
        self,
        record: ConsumerRecord,
        dispatch: Dispatch | None,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pending: deque[Pending],
    ) -> None:
        partition = TopicPartition(record.topic, record.partition)
        if dispatch is not None:  # addressed to this worker
            if dispatch.key in self._finished:
                self._log.info("dispatch already finished here", job=dispatch.key)
            else:
                # In the background, so a queued dispatch starts without waiting on the broker.
                self._commit_soon(consumer)  # what was skipped before it
                await self._run(dispatch, consumer, producer, pending)
                self._to_commit[partition] = record.offset + 1
                self._commit_soon(consumer)  # its Finished is acknowledged: never run again
                return
        self._to_commit[partition] = record.offset + 1

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        async with self._committing:  # after the commits asked for before (offsets only grow)
            if not self._to_commit:
                return
            offsets, self._to_commit = self._to_commit, {}
            try:
                await consumer.commit(offsets)
            except KafkaError as e:  # at-least-once: the worst case is a re-read, then a skip
                self._log.warning("commit failed", error=str(e))

    def _commit_soon(self, consumer: AIOKafkaConsumer) -> None:
        """Commit what is due without waiting for it (an awaited ``_commit`` waits for it)."""
        if not self._to_commit:
            return
        task = asyncio.create_task(self._commit(consumer))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    # -------------------------------------------------------------------------- one job

    async def _run(
        self,
        dispatch: Dispatch,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pending: deque[Pending],
    ) -> None:
        received = time.perf_counter_ns()
        _, arrived_at = self._queued.pop(dispatch.key, (dispatch, datetime.now(UTC)))
        self._busy = dispatch
        self._beat_now.set()
        BUSY.set(1)
        job_log = self._log.bind(job_id=str(dispatch.job_id), attempt=dispatch.attempt)
        params = dispatch.parameters
        job_log.info("job received", model=params.model, steps=params.steps)
        try:
            job = asyncio.create_task(self._execute(dispatch, arrived_at, producer, job_log))
            await self._keep_polling(job, consumer, pending)
            finished, upload_ms, input_ms = job.result()
            await self._publish(producer, finished, str(dispatch.job_id))
        finally:
            consumer.resume(*consumer.paused())
            self._busy = None
            self._abort.clear()
            self._beat_now.set()
            BUSY.set(0)
        self._remember(dispatch.key)
        total_ms = (time.perf_counter_ns() - received) // 1_000_000
        record = JobRecord(
            dispatch.key,
            finished.outcome,
            finished.gpu_ms,
            finished.cuda_ms,
            finished.model_load_ms,
            upload_ms,
            total_ms,
            input_ms,
        )
        self._record(record, finished, job_log)
        gpu_metrics.observe_job(self.tier, dispatch.parameters.model, finished.gpu_ms)

    async def _keep_polling(
        self, job: asyncio.Task[Any], consumer: AIOKafkaConsumer, pending: deque[Pending]
    ) -> None:
        """Wait for the job while polling the consumer, which keeps it in its group and reads
        ahead (a prefetched dispatch is queued, ready when the job ends; past _PENDING_MAX
        records read ahead the partitions pause). On stop, give the job ``stop_grace_s``,
        then ask it to abort."""
        abort_at: float | None = None
        loop = asyncio.get_running_loop()
        stopping = asyncio.create_task(self._stop.wait())
        try:
            while not job.done():
                timeout = 1.0 if abort_at is None else max(0.0, abort_at - loop.time())
                # Wake as soon as the job ends (or a stop arrives, once), not at the timeout.
                waiters = {job} if stopping.done() else {job, stopping}
                await asyncio.wait(
                    waiters,
                    timeout=min(timeout, _READ_AHEAD_S),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for records in (await consumer.getmany(timeout_ms=0)).values():
                    self._receive(records, pending)
                if len(pending) >= _PENDING_MAX:
                    consumer.pause(*consumer.assignment())  # resumed when the job is reported
                if stopping.done() and abort_at is None:
                    abort_at = loop.time() + self.config.stop_grace_s
                if abort_at is not None and loop.time() >= abort_at:
                    self._abort.set()
        finally:
            stopping.cancel()

    async def _execute(
        self, dispatch: Dispatch, arrived_at: datetime, producer: AIOKafkaProducer, job_log: Any
    ) -> tuple[Finished, int, int]:
        """Everything a dispatch needs, as its ``Finished`` report (and the upload and input
        read times in ms). Never raises."""
        inputs = RunInputs()
        try:
            channel = RedisJobChannel(
                self.redis, self.settings.redis_key_prefix, dispatch.job_id, dispatch.attempt
            )
            refusal = await self._refusal(dispatch, arrived_at, channel)
            if refusal is not None:
                return refusal, 0, 0
            try:
                # Before the model: a job whose input is gone fails without a load. Not billed.
                inputs = await asyncio.to_thread(
                    read_inputs, self.images.client, self.images.bucket, _input_view(dispatch)
                )
                lease = await asyncio.to_thread(self.cache.acquire, dispatch.parameters.model)
            except Exception as e:
                return self._failed(dispatch, classify(e, "load")), 0, inputs.read_ms
            try:
                lora_ms = await asyncio.to_thread(self.loras.apply, lease.model, dispatch)
            except Exception as e:
                await self._release(dispatch, lease)
                return self._failed(dispatch, classify(e, "load")), 0, inputs.read_ms
            load_ms = lease.load_ms + lora_ms  # making the model ready: never billed
            started = Started(
                job_id=dispatch.job_id,
                attempt=dispatch.attempt,
                worker_id=self.worker_id,
                gpu=self.gpu_name,
                model_load_ms=load_ms,
                at=datetime.now(UTC),
            )
            # Acknowledged while the pipeline runs, not before: the GPU does not wait on Kafka.
            # Finished waits for it, so the settler always sees Started first.
            start_reported = asyncio.create_task(
                self._publish(producer, started, str(dispatch.job_id))
            )
            try:
                run = _upscale if lease.model.upscale else run_dispatch
                result = await asyncio.to_thread(
                    run, lease.model, dispatch, self.device, channel, self._abort, inputs
                )
            finally:
                await self._release(dispatch, lease)
                await start_reported
            if result.failure is not None and result.failure.out_of_memory:
                evicted = self.cache.evict_idle()
                job_log.warning("out of memory: idle models dropped", evicted=evicted)
            if result.outcome is not Outcome.COMPLETED:
                return self._report(dispatch, result, load_ms), 0, inputs.read_ms
            return (*await self._upload(dispatch, result, load_ms), inputs.read_ms)
        except Exception as e:  # a bug or an unforeseen failure: report it, keep serving
            job_log.exception("job crashed")
            failure = Failure("platform", True, f"worker error: {e!r}")
            return self._failed(dispatch, failure), 0, inputs.read_ms

    async def _release(self, dispatch: Dispatch, lease: Lease) -> None:
        """Unpin the job's model, its LoRAs removed first so the next job runs on the clean
        base; a pipeline they could not be removed from is dropped from the cache."""
        key = dispatch.parameters.model
        clean = True
        if dispatch.parameters.loras:
            clean = await asyncio.to_thread(self.loras.remove, lease.model)
        self.cache.release(key)
        if not clean:
            self.cache.discard(key)

    async def _refusal(
        self, dispatch: Dispatch, arrived_at: datetime, channel: RedisJobChannel
    ) -> Finished | None:
        """A report for a dispatch that must not run, decided before a model is loaded (a
        prefetched one included: a cancel while it was queued is seen here)."""
        age_s = (arrived_at - dispatch.dispatched_at).total_seconds()
        if age_s > self.config.max_dispatch_age_s:
            # It reached this worker long after it was sent (a backlog read after a restart):
            # its lease has long expired, the job was re-dispatched or will be. A prefetched
            # one's age stops at its arrival: queued here, this worker's heartbeats held it.
            reason = f"stale dispatch: sent {age_s:.0f} s ago"
            return self._failed(dispatch, Failure("platform", True, reason))
        try:
            validate(dispatch, self.registry.family(dispatch.parameters.model))
        except Exception as e:
            return self._failed(dispatch, classify(e, "run"))
        if await asyncio.to_thread(channel.cancelled):
            return self._report(dispatch, RunResult(Outcome.CANCELLED))  # nothing ran or billed
        return None

    async def _upload(
        self, dispatch: Dispatch, result: RunResult, load_ms: int
    ) -> tuple[Finished, int]:
        started = time.perf_counter_ns()
        try:
            images = await asyncio.to_thread(
                self.images.save, dispatch.user_id, dispatch.job_id, result.images
            )
        except Exception as e:  # the run is not billed: the platform lost its output
            failed = RunResult(
                Outcome.FAILED, result.gpu_ms, result.cuda_ms, failure=classify(e, "upload")
            )
            return self._report(dispatch, failed, load_ms), 0
        upload_ms = (time.perf_counter_ns() - started) // 1_000_000
        return self._report(dispatch, result, load_ms, images), upload_ms

    def _report(
        self,
        dispatch: Dispatch,
        result: RunResult,
        load_ms: int = 0,
        images: list[FinishedImage] | None = None,
    ) -> Finished:
        failure = result.failure
        return Finished(
            job_id=dispatch.job_id,
            attempt=dispatch.attempt,
            worker_id=self.worker_id,
            outcome=result.outcome,
            gpu_ms=result.gpu_ms,
            cuda_ms=result.cuda_ms,
            model_load_ms=load_ms,
            images=images or [],
            error=failure.reason if failure else None,
            retryable=failure.retryable if failure else False,
            fault=failure.fault if failure else None,
            at=datetime.now(UTC),
        )

    def _failed(self, dispatch: Dispatch, failure: Failure) -> Finished:
        return self._report(dispatch, RunResult(Outcome.FAILED, failure=failure))

    def _remember(self, key: str) -> None:
        self._finished[key] = None
        while len(self._finished) > _RECENTLY_FINISHED:
            self._finished.popitem(last=False)

    def _record(self, record: JobRecord, finished: Finished, job_log: Any) -> None:
        JOBS.labels(finished.outcome.value, finished.fault or "").inc()
        BILLED_MS.inc(finished.gpu_ms)
        LOAD_MS.observe(finished.model_load_ms)
        OVERHEAD_MS.observe(record.overhead_ms)
        self.history.append(record)
        job_log.info(
            "job finished",
            outcome=finished.outcome.value,
            gpu_ms=finished.gpu_ms,
            cuda_ms=finished.cuda_ms,
            load_ms=record.load_ms,
            upload_ms=record.upload_ms,
            input_ms=record.input_ms,
            total_ms=record.total_ms,
            fault=finished.fault,
            error=finished.error,
        )
        if self.on_job_done is not None:
            self.on_job_done(record)

    # -------------------------------------------------------------------------- reports

    async def _publish(
        self, producer: AIOKafkaProducer, message: Started | Finished, key: str
    ) -> None:
        """Send and wait for Kafka's acknowledgement, retrying while Kafka is unreachable.
        Past ``stop_grace_s`` of failures after a stop, give up: the dispatch stays
        uncommitted and runs again after a restart."""
        delay, give_up_at = 0.5, None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await producer.send_and_wait(
                    self.reports_topic, message.to_bytes(), key=key.encode()
                )
                return
            except KafkaError as e:
                self._log.warning("report not acknowledged", kind=message.kind, error=str(e))
                if self._stop.is_set():
                    give_up_at = give_up_at or loop.time() + self.config.stop_grace_s
                    if loop.time() >= give_up_at:
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def heartbeat(self) -> Heartbeat:
        busy = self._busy
        queued = next((d for d, _ in self._queued.values()), None)
        return Heartbeat(
            worker_id=self.worker_id,
            tier=self.tier,
            busy_job_id=busy.job_id if busy else None,
            busy_attempt=busy.attempt if busy else None,
            models_loaded=self.cache.loaded(),
            at=datetime.now(UTC),
            prefetch_slots=PREFETCH_SLOTS,
            queued_job_id=queued.job_id if queued else None,
            queued_attempt=queued.attempt if queued else None,
        )

    async def _heartbeats(self, producer: AIOKafkaProducer) -> None:
        """Every ``heartbeat_interval_s``, and at once when the worker turns busy or idle;
        from the moment the consumer has its partitions until the worker stops."""
        await self.ready.wait()
        while True:
            self._beat_now.clear()
            try:
                # Not awaited to delivery: a late heartbeat is superseded by the next one.
                delivery = await producer.send(
                    self.reports_topic, self.heartbeat().to_bytes(), key=self.worker_id.encode()
                )
                delivery.add_done_callback(self._heartbeat_delivered)
            except KafkaError as e:
                self._log.warning("heartbeat not sent", error=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.config.heartbeat_interval_s)

    def _heartbeat_delivered(self, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is not None:
            self._log.warning("heartbeat not delivered", error=str(delivery.exception()))


# ------------------------------------------------------------------------------ upscaling


def _input_view(dispatch: Dispatch) -> Dispatch:
    """The dispatch as its input is read: an upscale job's width and height are its output's,
    so its init image is read (and resized) at width/scale x height/scale."""
    params = dispatch.parameters
    if params.scale is None:
        return dispatch
    assert params.width % params.scale == 0 and params.height % params.scale == 0
    size = {"width": params.width // params.scale, "height": params.height // params.scale}
    return dispatch.model_copy(update={"parameters": params.model_copy(update=size)})


def _upscale(
    model: LoadedPipeline,
    dispatch: Dispatch,
    device: torch.device,
    channel: JobChannel,
    abort: threading.Event | None,
    inputs: RunInputs,
) -> RunResult:
    """``run_dispatch``'s counterpart for an upscaler: one metered pass, the same result (the
    abort signal cannot stop one pass; the worker's grace covers it). Never raises."""
    assert isinstance(model.pipeline, Upscaler)
    try:
        outcome, gpu_ms, cuda_ms, images, problem = run_upscale(
            model.pipeline, dispatch, device, channel.cancelled(), inputs.image
        )
    except Exception as e:
        return RunResult(Outcome.FAILED, failure=classify(e, "run"))
    if problem is not None:
        return RunResult(Outcome.FAILED, failure=classify(InvalidJob(problem), "run"))
    return RunResult(outcome, gpu_ms, cuda_ms, images, 1 if images else 0)
