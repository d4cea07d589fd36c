"""The settler: worker reports -> exact, idempotent billing commands on the event store.

Each ``Started`` or ``Finished`` report becomes one command (the job and its account change in
one transaction) and the report's Kafka position is recorded in that same transaction, so a
report is applied exactly once even across crashes; Kafka's own offsets are committed after.
On (re)assignment the consumer seeks past the last recorded position of each partition, and
so does a batch read again after an operational error (a database restart, a commit refused
by a rebalance), which the loop retries after a pause instead of dying.
Duplicate, late and stale-attempt reports find the job already settled and change nothing:
exactly one settlement per job.

Billing (README, "Billing"): completed -> settle at the measured gpu_ms; cancelled while
running -> settle the GPU time used; budget exhausted -> settle the budget; failed -> retry if
retryable and attempts remain, otherwise void (platform fault) or bill the time used (user
fault). When the command gives a job up (a retryable failure of its last attempt), its
result carries the dead letter, which the settler publishes as it is: the attempt cap and the
decision are the lifecycle's (domain/job_lifecycle.py), not the settler's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from eventsourcing.persistence import Tracking
from prometheus_client import Counter

from domain.application import SettlementResult
from domain.errors import DomainError
from domain.job_lifecycle import Fault
from infra.errors import OPERATIONAL_ERRORS, Backoff
from infra.kafka import Polled, idempotent_producer, manual_consumer, rewind, stop_bounded
from infra.loops import sleep_or_stop
from infra.messages import DeadLetter, Finished, Outcome, Started, parse_report
from infra.observability.instrument import track_event_store
from infra.settings import Settings
from infra.topics import DLQ_TOPIC, REPORTS_TOPIC
from workflows.metrics import count_settlement, dead_letters
from workflows.tracking import TrackingPinkseaApplication

log = structlog.get_logger("settler")

SETTLED = Counter("pinksea_settler_reports_total", "Reports processed", ["kind", "applied"])
RETRIES = Counter("pinksea_settler_retries_total", "Batches read again after an operational error")
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0


def source_name(topic: str, partition: int) -> str:
    return f"{topic}#{partition}"


class Settler:
    def __init__(self, settings: Settings, app: TrackingPinkseaApplication) -> None:
        self.settings = settings
        self.app = app
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.dead_letters = dead_letters("settler")
        track_event_store(app)

    def apply(self, report: Started | Finished, tracking: Tracking) -> DeadLetter | None:
        """Apply one report as a command (blocking; runs in a worker thread)."""
        with self.app.tracking(tracking):
            if isinstance(report, Started):
                result = self.app.record_start(
                    report.job_id,
                    attempt=report.attempt,
                    worker_id=report.worker_id,
                    gpu=report.gpu,
                    at=report.at,
                )
                SETTLED.labels("started", str(result.changed)).inc()
                return None
            settled = self._finish(report)
        SETTLED.labels(report.outcome.value, str(settled.applied)).inc()
        if settled.applied:
            self._count(report, settled.charged_mc)
        if settled.dead_letter is None:
            return None
        # The command gave the job up (a retryable failure of its last attempt): publish it.
        return DeadLetter(
            job_id=report.job_id,
            attempts=settled.dead_letter.attempts,
            reason=settled.dead_letter.reason,
            at=report.at,
        )

    def _finish(self, report: Finished) -> SettlementResult:
        if report.outcome is Outcome.COMPLETED:
            images = [i.model_dump() for i in report.images]
            r = self.app.complete_job(
                report.job_id,
                gpu_ms=report.gpu_ms,
                cuda_ms=report.cuda_ms,
                images=images,  # type: ignore[arg-type]
                attempt=report.attempt,
                at=report.at,
            )
        elif report.outcome is Outcome.CANCELLED:
            r = self.app.record_cancelled_run(
                report.job_id, gpu_ms=report.gpu_ms, attempt=report.attempt, at=report.at
            )
        elif report.outcome is Outcome.BUDGET_EXHAUSTED:
            r = self.app.fail_job(
                report.job_id,
                reason="stopped at the hold's time budget",
                retryable=False,
                fault=Fault.USER,
                gpu_ms=report.gpu_ms,
                attempt=report.attempt,
                at=report.at,
            )
        else:
            r = self.app.fail_job(
                report.job_id,
                reason=report.error or "failed",
                retryable=report.retryable,
                fault=Fault(report.fault or "platform"),
                gpu_ms=report.gpu_ms,
                attempt=report.attempt,
                at=report.at,
            )
        return r

    def _count(self, report: Finished, charged_mc: int) -> None:
        """Credits and images of an applied settlement: a redelivered report is not applied
        again, so each job counts once (workflows/metrics.py)."""
        images = len(report.images) if report.outcome is Outcome.COMPLETED else 0
        if charged_mc <= 0 and images == 0:
            return  # a retried attempt or a voided job: nothing was consumed
        try:
            tier = self.app.job(report.job_id).tier
        except OPERATIONAL_ERRORS:  # the settlement is recorded; a metric must not undo it
            log.exception("settlement not counted", job_id=str(report.job_id))
            return
        count_settlement(tier, charged_mc, images)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = manual_consumer(self.settings, "pinksea.settler")
        consumer.subscribe([self.settings.topic(REPORTS_TOPIC)], listener=_SeekPastTracked(self))
        self.consumer = consumer
        self.producer = idempotent_producer(self.settings)
        await consumer.start()
        await self.producer.start()
        log.info("settler started")
        backoff = Backoff(first_s=RETRY_FIRST_S, max_s=RETRY_MAX_S)
        unsettled: Polled = {}  # a batch an operational error interrupted, to read again
        try:
            # Runs until stopped. An operational error (the database restarting, a commit the
            # broker refused because the group rebalanced meanwhile) is retried after a pause;
            # anything else ends the process for its supervisor (infra/errors.py).
            while not stop.is_set():
                try:
                    if unsettled:
                        await self._read_again(unsettled)
                        unsettled = {}
                    unsettled = await consumer.getmany(timeout_ms=300, max_records=200)
                    await self._settle(unsettled)
                    unsettled = {}
                    backoff.succeeded()
                except OPERATIONAL_ERRORS as e:
                    pause_s = backoff.failed()
                    RETRIES.inc()
                    log.warning("settler retrying", error=repr(e), backoff_s=pause_s)
                    await sleep_or_stop(stop, pause_s)
        finally:
            async with stop_bounded():
                await consumer.stop()
                await self.producer.stop()
            log.info("settler stopped")

    async def _settle(self, polled: Polled) -> None:
        assert self.consumer is not None
        for tp, messages in polled.items():
            assert messages, tp
            for message in messages:
                await self._handle(tp, message.offset, message.value)
            # A hint for the next reader only: the positions recorded with the settlements
            # are the truth (seek_past_tracked).
            await self.consumer.commit({tp: messages[-1].offset + 1})

    async def _read_again(self, polled: Polled) -> None:
        """Back to the batch's first reports, then past those recorded meanwhile, so each
        report is applied once (a partition another member took meanwhile resumes from its
        committed offset there instead)."""
        assert self.consumer is not None
        rewind(self.consumer, polled)
        assigned = self.consumer.assignment()
        await self.seek_past_tracked(tp for tp in polled if tp in assigned)

    async def _handle(self, tp: TopicPartition, offset: int, raw: bytes) -> None:
        report = parse_report(raw)
        if not isinstance(report, Started | Finished):
            return  # heartbeats are the scheduler's
        # Tracking ids must be positive: record offset + 1, the next offset to read.
        tracking = Tracking(source_name(tp.topic, tp.partition), offset + 1)
        try:
            dead = await asyncio.to_thread(self.apply, report, tracking)
        except DomainError as e:
            # A report the ledger refuses (e.g. of an unknown job) would be refused again:
            # log it and go past it rather than stop settling everyone else's jobs.
            SETTLED.labels(report.kind, "refused").inc()
            log.error("report refused", job_id=str(report.job_id), error=e.detail)
            return
        if dead is not None:
            assert self.producer is not None
            await self.producer.send_and_wait(
                self.settings.topic(DLQ_TOPIC), dead.to_bytes(), key=str(dead.job_id).encode()
            )
            self.dead_letters.inc()
            log.warning("job dead-lettered", job_id=str(dead.job_id), reason=dead.reason)

    async def seek_past_tracked(self, partitions: Iterable[TopicPartition]) -> None:
        assert self.consumer is not None
        for tp in partitions:
            recorded = await asyncio.to_thread(
                self.app.consumed_up_to, source_name(tp.topic, tp.partition)
            )
            if recorded is not None:
                self.consumer.seek(tp, recorded)


class _SeekPastTracked(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, settler: Settler) -> None:
        self.settler = settler

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.settler.seek_past_tracked(assigned)
