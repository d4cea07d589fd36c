"""The scheduler process: queue per GPU tier, dispatch to idle workers, leases.

Its queue is the ``scheduler`` projection (table scheduler_jobs, exactly-once from the jobs
topic); its view of the workers comes from their heartbeats and reports. For each assignment
the policy makes, it records the dispatch on the event store first (attempt n, idempotent and
ordered by the job aggregate), then publishes the ``Dispatch`` message. A restart loses
nothing: the queue is in PostgreSQL, and an attempt recorded but never delivered is recovered
by its lease. A worker that stops heartbeating loses its job to a new attempt; the old
attempt's reports are stale and never billed; on the job's last attempt the job is abandoned
instead (a command). The scheduler decides no job's fate: it sends a Dispatch when the
dispatch command says ``send`` and publishes the dead letter a command returns, nothing else
(the lifecycle is domain/job_lifecycle.py's). One scheduler is active at a time (an advisory
lock); a second one waits as a standby.

Prefetch (issue 18): a worker whose heartbeats offer a prefetch slot is sent one more dispatch
while it runs a job, once no idle worker of its tier is left (busy workers soonest-free first,
by their running job's expected time). It holds that dispatch queued: not started, not billed,
the job still ``dispatched``; a cancel voids the hold at once and the worker, which reads the
cancel flag before it starts anything, never runs it. It starts it as soon as its running job's
``Finished`` is acknowledged, with no round trip through the scheduler. The worker's lease
covers both: a worker that goes silent loses each to a new attempt, as any dispatched job. That
new attempt counts against the cap even though the lost one never started: attempts number
dispatches (a report names its attempt, so a lost one can never be billed), and the cap is what
bounds a job that kills its worker before it starts (during its model load, before
``Started``). A user's limit counts a prefetched job as a running one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import Counter, Gauge, Histogram

from domain import personal_data
from domain.application import PinkseaApplication
from domain.estimation import HOLD_FACTOR_DEN, HOLD_FACTOR_NUM, HOLD_MARGIN_MS
from domain.job_lifecycle import DeadLetterDecision, has_attempts_left
from domain.parameters import RunParameters
from infra.errors import OPERATIONAL_ERRORS, Backoff
from infra.kafka import connection_kwargs, idempotent_producer, stop_bounded
from infra.messages import DeadLetter, Dispatch, Finished, Heartbeat, Started, parse_report
from infra.observability.instrument import track_event_store
from infra.personal_keys import PersonalKeys, parse_kek
from infra.settings import Settings
from infra.topics import DLQ_TOPIC, REPORTS_TOPIC, dispatch_topic
from projections.runner import LiveProjectionRunner
from projections.scheduler_queue import QueueStatus, SchedulerQueue
from workflows.metrics import dead_letters
from workflows.scheduler.policy import IdleWorker, PrefetchSlot, QueuedJob, Turns, assign

log = structlog.get_logger("scheduler")

HEARTBEAT_STALE_S = 10.0  # a worker silent this long has lost its job (lease expired)
DELIVERY_TIMEOUT_S = 30.0  # a dispatched attempt no worker reports within this is re-sent
LOCK_KEY = "pinksea.scheduler"
LEASE_CHECK_INTERVAL_S = 1.0  # how often leases are checked (a lease lasts HEARTBEAT_STALE_S)
ROUND_WAIT_S = 0.25  # longest wait between rounds when nothing wakes the loop
RETRY_FIRST_S = 0.5  # first pause after an operational error (doubles)
RETRY_MAX_S = 5.0  # longest pause: a database or broker that stays down is retried this often

DISPATCHED = Counter("pinksea_scheduler_dispatched_total", "Attempts dispatched", ["tier"])
REDISPATCHED = Counter(
    "pinksea_scheduler_lease_expired_total", "Attempts replaced after a lost lease"
)
QUEUE_DEPTH = Gauge("pinksea_queue_depth", "Jobs waiting for a worker", ["tier"])
IDLE_WORKERS = Gauge("pinksea_idle_workers", "Live idle workers", ["tier"])
PREFETCHED = Counter(
    "pinksea_scheduler_prefetched_total", "Attempts sent to a busy worker's prefetch slot", ["tier"]
)
WAIT_SECONDS = Histogram(
    "pinksea_dispatch_wait_seconds",
    "Accepted to dispatched",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)


@dataclass
class WorkerState:
    tier: str
    seen: float  # monotonic time of the last heartbeat or report
    busy_job: UUID | None = None
    models: frozenset[str] = frozenset()
    queued_job: UUID | None = None  # prefetched: held by the worker behind busy_job
    prefetch_slots: int = 0  # 0: a worker of the release before (sent work only when idle)
    busy_since: float = 0.0  # monotonic time busy_job was first seen

    def promote(self, now: float) -> None:
        """The running job ended: the queued one (if any) runs now."""
        self.busy_job, self.queued_job, self.busy_since = self.queued_job, None, now


@dataclass
class Scheduler:
    settings: Settings
    pool: asyncpg.Pool
    app: PinkseaApplication
    workers: dict[str, WorkerState] = field(default_factory=dict)
    # Attempts dispatched but not yet visible in scheduler_jobs: job -> (worker, attempt).
    in_flight: dict[UUID, tuple[str, int]] = field(default_factory=dict)
    # Attempts a worker reported finished, until scheduler_jobs has moved past them: the
    # worker is free and the job no longer counts as running for its user.
    finished: dict[UUID, int] = field(default_factory=dict)
    turns: Turns = field(default_factory=Turns)
    lease_s: float = HEARTBEAT_STALE_S
    delivery_timeout_s: float = DELIVERY_TIMEOUT_S
    prefetch: bool = True  # fill busy workers' prefetch slots (off: the baseline of bench.dispatch)
    started_at: float = field(default_factory=time.monotonic)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _limits: dict[str, tuple[float, int]] = field(default_factory=dict)
    producer: AIOKafkaProducer | None = None
    # The users' data keys, which open the prompts a dispatch carries (infra/personal_keys.py).
    personal_keys: PersonalKeys = field(init=False)

    def __post_init__(self) -> None:
        kek = parse_kek(self.settings.personal_data_kek.get_secret_value())
        self.personal_keys = PersonalKeys(self.pool, kek)

    # --------------------------------------------------------------------------- running

    async def run(self, stop: asyncio.Event) -> None:
        dead_letters("scheduler")  # exported at 0 from the start
        track_event_store(self.app)
        async with self.pool.acquire() as leader:
            log.info("waiting to become the active scheduler")
            while not await leader.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", LOCK_KEY):
                if stop.is_set():
                    return
                await asyncio.sleep(1)
            log.info("active scheduler")
            self.producer = idempotent_producer(self.settings)
            await self.producer.start()
            queue = LiveProjectionRunner(
                self.settings, self.pool, SchedulerQueue(), on_batch=self.wake
            )
            try:
                await asyncio.gather(queue.run(stop), self._follow_reports(stop), self._loop(stop))
            finally:
                async with stop_bounded():
                    await self.producer.stop()
                await leader.execute("SELECT pg_advisory_unlock(hashtext($1))", LOCK_KEY)

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self, stop: asyncio.Event) -> None:
        last_lease_check_s = 0.0  # monotonic
        backoff = Backoff(first_s=RETRY_FIRST_S, max_s=RETRY_MAX_S)
        # Runs until stopped (a server loop). A round that fails for an operational reason
        # (PostgreSQL or Kafka down) is retried after a backoff; anything else is a bug and
        # ends the scheduler (its supervisor restarts it; the queue is in PostgreSQL).
        while not stop.is_set():
            self._wake.clear()
            try:
                if time.monotonic() - last_lease_check_s > LEASE_CHECK_INTERVAL_S:
                    await self.expire_leases()
                    last_lease_check_s = time.monotonic()
                await self.dispatch_round()
                backoff.succeeded()
            except OPERATIONAL_ERRORS as e:
                pause_s = backoff.failed()
                log.warning("dispatch round failed, retrying", error=repr(e), backoff_s=pause_s)
                await asyncio.sleep(pause_s)
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=ROUND_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    async def _follow_reports(self, stop: asyncio.Event) -> None:
        """Heartbeats and reports, from now on (a restarted scheduler relearns in seconds)."""
        consumer = AIOKafkaConsumer(
            self.settings.topic(REPORTS_TOPIC),
            **connection_kwargs(self.settings),
            group_id=None,
            auto_offset_reset="latest",
        )
        await consumer.start()
        try:
            while not stop.is_set():
                polled = await consumer.getmany(timeout_ms=200)
                for messages in polled.values():
                    for m in messages:
                        self.observe(parse_report(m.value))
        finally:
            await consumer.stop()

    def observe(self, report: Heartbeat | Started | Finished) -> None:
        now = time.monotonic()
        worker = self.workers.get(report.worker_id)
        if isinstance(report, Heartbeat):
            same_job = worker is not None and worker.busy_job == report.busy_job_id
            self.workers[report.worker_id] = WorkerState(
                tier=report.tier,
                seen=now,
                busy_job=report.busy_job_id,
                models=frozenset(report.models_loaded),
                queued_job=report.queued_job_id,
                prefetch_slots=report.prefetch_slots,
                busy_since=worker.busy_since if worker is not None and same_job else now,
            )
        elif worker is not None:
            worker.seen = now
            if isinstance(report, Started):
                if worker.busy_job != report.job_id:
                    worker.busy_since = now
                if worker.queued_job == report.job_id:
                    worker.queued_job = None
                worker.busy_job = report.job_id
                if self.prefetch and worker.prefetch_slots:
                    self.wake()  # it runs a job: its prefetch slot can be filled
            else:
                if worker.queued_job == report.job_id:  # refused before it started
                    worker.queued_job = None
                else:
                    worker.promote(now)  # a prefetched job starts at once on the worker
                self.finished[report.job_id] = report.attempt
                self.wake()  # a worker or a prefetch slot just became free: work-conserving

    # -------------------------------------------------------------------------- dispatch

    async def dispatch_round(self) -> None:
        rows = await self.pool.fetch(
            "SELECT job_id, user_id, tier, model, status, attempt, worker_id, queue_position, "
            "parameters, seed, budget_ms, queued_at FROM scheduler_jobs "
            f"WHERE status <> '{QueueStatus.DONE}'"
        )
        by_id = {r["job_id"]: r for r in rows}
        for job_id, attempt in list(self.finished.items()):
            row = by_id.get(job_id)
            if row is None or row["status"] == QueueStatus.QUEUED or row["attempt"] > attempt:
                del self.finished[job_id]  # the table has caught up with that report
        for job_id, (_, attempt) in list(self.in_flight.items()):
            row = by_id.get(job_id)
            if row is None or row["attempt"] >= attempt:
                del self.in_flight[job_id]
        queue: list[QueuedJob] = []
        # Per user, every job dispatched, running or prefetched: all count against the limit.
        running: dict[str, int] = {}
        for r in rows:
            if r["job_id"] in self.finished:
                continue
            if r["job_id"] in self.in_flight or r["status"] in (
                QueueStatus.DISPATCHED,
                QueueStatus.RUNNING,
            ):
                running[r["user_id"]] = running.get(r["user_id"], 0) + 1
            elif r["status"] == QueueStatus.QUEUED:
                queue.append(
                    QueuedJob(r["job_id"], r["user_id"], r["tier"], r["model"], r["queue_position"])
                )
        idle, slots = self.free_workers(rows)
        for tier in {q.tier for q in queue} | {w.tier for w in idle}:
            QUEUE_DEPTH.labels(tier).set(sum(q.tier == tier for q in queue))
            IDLE_WORKERS.labels(tier).set(sum(w.tier == tier for w in idle))
        if not queue or not (idle or slots):
            return
        limits = {u: await self.concurrency_limit(u) for u in {q.user_id for q in queue}}
        assignments = assign(queue, idle, running, limits, self.turns, slots)
        # Together: the commands of one round share a commit (the event store's group commit),
        # so a round's last dispatch does not wait for all the others' writes one by one.
        sent = await asyncio.gather(
            *(self.dispatch(by_id[a.job.job_id], a.worker_id) for a in assignments),
            return_exceptions=True,
        )
        for failure in (r for r in sent if isinstance(r, BaseException)):
            raise failure  # every other dispatch of the round has finished, sent or not

    def worker_load(self, rows: Sequence[asyncpg.Record]) -> dict[str, set[UUID]]:
        """The unfinished jobs each worker holds (running or queued there), as far as the
        scheduler knows: its attempts in flight, the table's dispatched and running rows, and
        the worker's own reports."""
        load: dict[str, set[UUID]] = defaultdict(set)
        for job_id, (worker_id, _) in self.in_flight.items():
            load[worker_id].add(job_id)
        for r in rows:
            job_id = r["job_id"]
            if job_id in self.finished or job_id in self.in_flight or r["worker_id"] is None:
                continue
            if r["status"] in (QueueStatus.DISPATCHED, QueueStatus.RUNNING):
                load[r["worker_id"]].add(job_id)
        for worker_id, w in self.workers.items():
            for held in (w.busy_job, w.queued_job):
                if held is not None and held not in self.finished:
                    load[worker_id].add(held)
        return load

    def free_workers(
        self, rows: Sequence[asyncpg.Record]
    ) -> tuple[list[IdleWorker], list[PrefetchSlot]]:
        """Live workers holding no job, and live busy workers with a prefetch slot free."""
        now = time.monotonic()
        load = self.worker_load(rows)
        budgets = {r["job_id"]: r["budget_ms"] or 0 for r in rows}
        idle: list[IdleWorker] = []
        slots: list[PrefetchSlot] = []
        for worker_id, w in self.workers.items():
            if now - w.seen >= self.lease_s:
                continue
            held = load.get(worker_id, set())
            if not held:
                idle.append(IdleWorker(worker_id, w.tier, w.models))
            elif self.prefetch and len(held) <= w.prefetch_slots:
                running = w.busy_job if w.busy_job in held else next(iter(held))
                since = w.busy_since if running == w.busy_job else now
                ends_at = since + expected_ms(budgets.get(running, 0)) / 1000
                frees_in_ms = max(0, round((ends_at - now) * 1000))
                slots.append(PrefetchSlot(worker_id, w.tier, w.models, frees_in_ms))
        return idle, slots

    async def dispatch(self, row: asyncpg.Record, worker_id: str) -> None:
        job_id, attempt = row["job_id"], row["attempt"] + 1
        now = datetime.now(UTC)
        result = await asyncio.to_thread(
            self.app.record_dispatch, job_id, attempt=attempt, worker_id=worker_id, at=now
        )
        if result.dead_letter is not None:  # past the attempt cap: the job was given up
            await self._dead_letter(job_id, result.dead_letter)
            self.finished[job_id] = attempt
            return
        if not result.send:
            return  # another dispatch of this job won, or it is finished; nothing to send
        # As submitted, the seed resolved (the requested one, or the one the job id gives),
        # the prompts opened: the worker runs the plaintext, which the dispatch topic keeps
        # only for its short retention (infra/kafka.py), never the event store.
        opener = await self.personal_keys.opener(row["user_id"])
        submitted = personal_data.opened(json.loads(row["parameters"]), opener)
        params = RunParameters.model_validate({**submitted, "seed": row["seed"]})
        message = Dispatch(
            job_id=job_id,
            attempt=attempt,
            worker_id=worker_id,
            user_id=row["user_id"],
            tier=row["tier"],
            parameters=params,
            budget_ms=row["budget_ms"],
            dispatched_at=now,
        )
        assert self.producer is not None
        await self.producer.send_and_wait(
            self.settings.topic(dispatch_topic(row["tier"])),
            message.to_bytes(),
            key=str(job_id).encode(),
        )
        self.in_flight[job_id] = (worker_id, attempt)
        worker = self.workers.get(worker_id)
        if worker is not None:  # until its next heartbeat says otherwise
            if worker.busy_job is None or worker.busy_job in self.finished:
                worker.busy_job, worker.busy_since = job_id, time.monotonic()
            else:  # a busy worker's prefetch slot
                worker.queued_job = job_id
                PREFETCHED.labels(row["tier"]).inc()
        DISPATCHED.labels(row["tier"]).inc()
        WAIT_SECONDS.observe(max(0.0, (now - row["queued_at"]).total_seconds()))

    async def concurrency_limit(self, user_id: str) -> int:
        cached = self._limits.get(user_id)
        if cached and time.monotonic() - cached[0] < 30:
            return cached[1]
        sub = await asyncio.to_thread(self.app.subscription, user_id)
        limit = sub.plan.concurrent_jobs
        self._limits[user_id] = (time.monotonic(), limit)
        return limit

    # ---------------------------------------------------------------------------- leases

    async def expire_leases(self) -> None:
        """Re-dispatch attempts whose worker went silent, or that no worker picked up."""
        if time.monotonic() - self.started_at < self.lease_s:
            return  # just started: give the workers time to say they are alive
        rows = await self.pool.fetch(
            "SELECT job_id, user_id, tier, model, status, attempt, worker_id, queue_position, "
            "parameters, seed, budget_ms, queued_at, dispatched_at FROM scheduler_jobs "
            f"WHERE status IN ('{QueueStatus.DISPATCHED}', '{QueueStatus.RUNNING}')"
        )
        now = time.monotonic()
        for r in rows:
            if r["job_id"] in self.finished or r["job_id"] in self.in_flight:
                continue
            worker = self.workers.get(r["worker_id"])
            silent = worker is None or now - worker.seen > self.lease_s
            undelivered = (
                r["status"] == QueueStatus.DISPATCHED
                and worker is not None
                and r["job_id"] not in (worker.busy_job, worker.queued_job)
                and (datetime.now(UTC) - r["dispatched_at"]).total_seconds()
                > self.delivery_timeout_s
            )
            if not (silent or undelivered):
                continue
            REDISPATCHED.inc()
            log.warning(
                "lease expired",
                job_id=str(r["job_id"]),
                attempt=r["attempt"],
                worker=r["worker_id"],
            )
            if not has_attempts_left(r["attempt"]):  # lost on its last attempt: give it up
                given_up = await asyncio.to_thread(
                    self.app.abandon_job, r["job_id"], attempt=r["attempt"], at=datetime.now(UTC)
                )
                if given_up.dead_letter is not None:
                    await self._dead_letter(r["job_id"], given_up.dead_letter)
                self.finished[r["job_id"]] = r["attempt"]  # until the table has caught up
                continue
            # To an idle worker, else to a prefetch slot (a lost job need not wait for the
            # queue to drain); the worker load is recomputed after each re-dispatch.
            idle, slots = self.free_workers(rows)
            for candidates in (
                [w for w in idle if w.tier == r["tier"]],
                sorted((s for s in slots if s.tier == r["tier"]), key=lambda s: s.frees_in_ms),
            ):
                if candidates:
                    target = next((w for w in candidates if r["model"] in w.models), candidates[0])
                    await self.dispatch(r, target.worker_id)
                    break

    async def _dead_letter(self, job_id: UUID, decision: DeadLetterDecision) -> None:
        """Publish the dead letter a command decided on (the scheduler decides none)."""
        assert self.producer is not None
        letter = DeadLetter(
            job_id=job_id,
            attempts=decision.attempts,
            reason=decision.reason,
            at=datetime.now(UTC),
        )
        await self.producer.send_and_wait(
            self.settings.topic(DLQ_TOPIC), letter.to_bytes(), key=str(job_id).encode()
        )
        dead_letters("scheduler").inc()


def expected_ms(budget_ms: int) -> int:
    """A job's expected GPU time from its hold's time budget (the inverse of the hold's
    sizing in domain/estimation.py): how the prefetch slots are ordered."""
    return max(0, budget_ms - HOLD_MARGIN_MS) * HOLD_FACTOR_DEN // HOLD_FACTOR_NUM
