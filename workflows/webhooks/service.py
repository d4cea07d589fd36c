"""The webhook delivery process: pinksea.jobs.v1 and pinksea.credits.v1 -> signed HTTP POSTs.

Two loops that never wait on each other:

- **Recording** (Kafka): each polled batch, in partition order, in one transaction:
  ``GenerationJob.Submitted`` remembers job -> (user, the submission's own webhook); a job status
  event (accepted, started, completed, failed, cancelled) and ``CreditAccount.LowBalanceReached``
  insert one ``webhook_deliveries`` row per target that wants it (the user's enabled endpoints
  whose events match, and the job's own webhook) ON CONFLICT (target, event_id) DO NOTHING, due
  now. Then the offsets are committed. No HTTP happens here: a dead receiver cannot hold back
  the consumer, and a redelivered message records nothing new (exactly once in the table).
- **Delivering** (the table): claim due rows (a lease: their due time moved past the attempt's
  deadline, so a crash mid-attempt only delays it, and two processes never send one row at
  once), at most ``concurrency`` in flight and ``per_target_max`` per target, so one slow or
  dead receiver occupies only its own few slots; each attempt checks the URL again (SSRF, after
  DNS resolution), signs the body (Standard Webhooks), POSTs it with a total deadline, and
  records the outcome: 2xx delivered; anything else (an error status, a timeout, a refused
  connection, an unsafe address) scheduled again after ``schedule[attempts]``, or failed when
  the schedule is used up. At-least-once on the wire: a crash after the send and before the
  record sends it again, under the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import structlog
from aiokafka import TopicPartition
from prometheus_client import Counter as MetricCounter
from pydantic import ValidationError

from domain.ids import PINKSEA_NAMESPACE
from eventstore.envelope import Envelope
from infra.errors import OPERATIONAL_ERRORS
from infra.kafka import consume_committed, manual_consumer, stop_bounded
from infra.loops import sleep_or_stop
from infra.settings import Settings
from infra.topics import CREDITS_TOPIC, JOBS_TOPIC
from read_models.webhooks import default_secret
from workflows.webhooks import urls
from workflows.webhooks.events import (
    LOW_BALANCE_REACHED,
    SUBMITTED,
    WebhookEvent,
    job_event,
    low_balance_event,
)
from workflows.webhooks.signing import signed_headers

log = structlog.get_logger("webhooks")

GROUP = "pinksea.webhooks"
JOB_TARGET = "job"  # a delivery's target when it goes to the submission's own webhook

# Delay before each attempt, from the event (the first is immediate): Standard Webhooks'
# suggested schedule, 8 attempts over 27.6 hours.
RETRY_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
ATTEMPT_TIMEOUT_S = 10.0  # the whole attempt: connect, send, the answer's status line
CONCURRENCY_MAX = 64  # attempts in flight
PER_TARGET_MAX = 4  # attempts in flight to one target: a slow receiver uses its own slots only
LEASE_MARGIN_S = 30.0  # a claimed row is due again this long after the attempt's deadline
TICK_S = 1.0  # how often due rows are looked for when nothing woke the deliverer
BATCH_MAX = 100
POLL_TIMEOUT_MS = 500
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
ERROR_CHARS_MAX = 300

RECORDED = MetricCounter(
    "pinksea_webhooks_recorded_total", "Deliveries recorded from events, by event type", ["type"]
)
ATTEMPTS = MetricCounter(
    "pinksea_webhooks_attempts_total",
    "Delivery attempts, by outcome (delivered, retry, failed)",
    ["outcome"],
)
UNDECODABLE = MetricCounter(
    "pinksea_webhooks_undecodable_total", "Messages on the consumed topics that are no envelope"
)
RETRIES = MetricCounter("pinksea_webhooks_batch_retries_total", "Batches retried after a failure")

_JOB_TARGETS = """
SELECT endpoint_id, url FROM webhook_endpoints
WHERE user_id = $1 AND NOT disabled AND enabled_events && ARRAY[$2, '*']
"""
_ACCOUNT_TARGETS = """
SELECT endpoint_id, url, user_id FROM webhook_endpoints
WHERE account_id = $1 AND NOT disabled AND enabled_events && ARRAY[$2, '*']
"""
_INSERT = """
INSERT INTO webhook_deliveries (delivery_id, target, endpoint_id, user_id, event_id, event_type,
                                url, body, status, next_attempt_at, occurred_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $9)
ON CONFLICT (target, event_id) DO NOTHING
"""
# Due rows, oldest first, at most $5 - (in flight) per target; the UPDATE re-checks each row
# under its lock, so a row another process claimed meanwhile is skipped.
_CLAIM = """
WITH due AS (
    SELECT ranked.delivery_id FROM (
        SELECT d.delivery_id, d.target, d.next_attempt_at,
               row_number() OVER (PARTITION BY d.target
                                  ORDER BY d.next_attempt_at, d.delivery_id) AS rank
        FROM webhook_deliveries d LEFT JOIN webhook_endpoints e USING (endpoint_id)
        WHERE d.status = 'pending' AND d.next_attempt_at <= $1
          AND (d.target = 'job' OR NOT e.disabled)
    ) ranked
    LEFT JOIN unnest($3::text[], $4::int[]) AS busy(target, n) USING (target)
    WHERE ranked.rank <= $5 - coalesce(busy.n, 0)
    ORDER BY ranked.next_attempt_at
    LIMIT $2
)
UPDATE webhook_deliveries w SET next_attempt_at = $6
FROM due
WHERE w.delivery_id = due.delivery_id AND w.status = 'pending' AND w.next_attempt_at <= $1
RETURNING w.delivery_id, w.target, w.endpoint_id, w.user_id, w.event_id, w.url, w.body,
          w.attempts
"""
_OUTCOME = """
UPDATE webhook_deliveries
SET attempts = $2, last_attempt_at = $3, last_status_code = $4, last_error = $5, status = $6,
    next_attempt_at = $7, delivered_at = CASE WHEN $6 = 'delivered' THEN $3 ELSE delivered_at END
WHERE delivery_id = $1
"""


def _batch_retrying(error: BaseException, backoff_s: float) -> None:
    RETRIES.inc()
    log.warning("webhooks retrying a batch", error=repr(error), backoff_s=backoff_s)


def _now() -> datetime:
    return datetime.now(UTC)


def delivery_id(target: str, event_id: str) -> str:
    return "whd_" + uuid.uuid5(PINKSEA_NAMESPACE, f"webhook\x1f{target}\x1f{event_id}").hex


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    target: str
    endpoint_id: str | None
    user_id: str
    event_id: str
    url: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


class WebhookService:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        *,
        schedule_s: Sequence[float] = RETRY_SCHEDULE_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        concurrency: int = CONCURRENCY_MAX,
        per_target_max: int = PER_TARGET_MAX,
        tick_s: float = TICK_S,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        assert len(schedule_s) >= 1 and all(s >= 0 for s in schedule_s)
        assert 0 < per_target_max <= concurrency <= CONCURRENCY_MAX
        assert attempt_timeout_s > 0 and tick_s > 0
        self.settings = settings
        self.pool = pool
        self.schedule_s = tuple(schedule_s)
        self.attempt_timeout_s = attempt_timeout_s
        self.concurrency = concurrency
        self.per_target_max = per_target_max
        self.tick_s = tick_s
        self.clock = clock
        self.allow_loopback = settings.webhooks_allow_loopback
        self.counts: Counter[str] = Counter()  # what this instance did: logs and tests
        self.in_flight: Counter[str] = Counter()  # target -> attempts running
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        # No redirects (a 3xx could point inside), no proxy from the environment, our CAs.
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(attempt_timeout_s),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=16),
        )

    async def run(self, stop: asyncio.Event) -> None:
        log.info("webhooks started", allow_loopback=self.allow_loopback)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.consume(stop))
                group.create_task(self.deliver(stop))
        finally:
            await self.close()
            log.info("webhooks stopped", **dict(self.counts))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    # ------------------------------------------------------------------------- recording

    async def consume(self, stop: asyncio.Event) -> None:
        consumer = manual_consumer(self.settings, GROUP, JOBS_TOPIC, CREDITS_TOPIC)
        await consumer.start()
        try:
            await consume_committed(
                consumer,
                stop,
                self.record,
                max_records=BATCH_MAX,
                retryable=OPERATIONAL_ERRORS,
                on_retry=_batch_retrying,
                poll_timeout_ms=POLL_TIMEOUT_MS,
                backoff_min_s=BACKOFF_MIN_S,
                backoff_max_s=BACKOFF_MAX_S,
            )
        finally:
            async with stop_bounded():
                await consumer.stop()

    async def record(self, polled: dict[TopicPartition, list[Any]]) -> int:
        """Record the batch's deliveries in one transaction; how many rows are new."""
        envelopes = []
        for messages in polled.values():
            for message in messages:
                try:
                    envelopes.append(Envelope.from_bytes(message.value))
                except ValidationError:
                    UNDECODABLE.inc()
                    log.error("not an envelope", partition=message.partition, offset=message.offset)
        new = 0
        async with self.pool.acquire() as conn, conn.transaction():
            for envelope in envelopes:  # partition order: a job's Submitted comes first
                new += await self._record_one(conn, envelope)
        if new:
            self._wake.set()
        return new

    async def _record_one(self, conn: asyncpg.Connection, envelope: Envelope) -> int:
        if envelope.type == SUBMITTED:
            hook = envelope.data.get("webhook")
            await conn.execute(
                "INSERT INTO webhook_jobs (job_id, user_id, url, events) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (job_id) DO NOTHING",
                envelope.aggregate_id,
                envelope.data["user_id"],
                None if hook is None else hook["url"],
                None if hook is None else hook["events"],
            )
            return 0
        if envelope.type == LOW_BALANCE_REACHED:
            event = low_balance_event(envelope)
            rows = await conn.fetch(_ACCOUNT_TARGETS, envelope.aggregate_id, event.type)
            targets = [(r["endpoint_id"], r["endpoint_id"], r["url"], r["user_id"]) for r in rows]
            return await self._insert(conn, event, targets)
        job = job_event(envelope)
        if job is None:
            return 0
        owner = await _job_owner(conn, envelope.aggregate_id)
        if owner is None:
            self.counts["unknown job"] += 1
            log.warning("event of an unknown job", event_id=envelope.id)
            return 0
        user, hook_url, hook_events = owner
        rows = await conn.fetch(_JOB_TARGETS, user, job.type)
        targets = [(r["endpoint_id"], r["endpoint_id"], r["url"], user) for r in rows]
        if hook_url is not None and job.type in (hook_events or ()):
            targets.append((JOB_TARGET, None, hook_url, user))
        return await self._insert(conn, job, targets)

    async def _insert(
        self,
        conn: asyncpg.Connection,
        event: WebhookEvent,
        targets: list[tuple[str, str | None, str, str]],
    ) -> int:
        now = self.clock()
        body = event.body()
        new = 0
        for target, endpoint_id, url, user in targets:
            status = await conn.execute(
                _INSERT,
                delivery_id(target, event.id),
                target,
                endpoint_id,
                user,
                event.id,
                event.type,
                url,
                body,
                now,
                event.occurred_at,
            )
            if status.endswith(" 1"):
                new += 1
                RECORDED.labels(event.type).inc()
            else:
                self.counts["duplicate"] += 1
        self.counts["recorded"] += new
        return new

    # ------------------------------------------------------------------------ delivering

    async def deliver(self, stop: asyncio.Event) -> None:
        backoff = BACKOFF_MIN_S
        while not stop.is_set():
            try:
                claimed = await self.claim()
                backoff = BACKOFF_MIN_S
            except OPERATIONAL_ERRORS as e:
                log.warning("webhooks cannot claim deliveries", error=repr(e), backoff_s=backoff)
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            for row in claimed:
                self._start(row)
            if claimed and len(self._tasks) < self.concurrency:
                continue  # more may be due right now
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)

    async def claim(self) -> list[Claimed]:
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return []
        now = self.clock()
        lease = now + timedelta(seconds=self.attempt_timeout_s + LEASE_MARGIN_S)
        busy = [t for t, n in self.in_flight.items() if n > 0]
        rows = await self.pool.fetch(
            _CLAIM,
            now,
            free,
            busy,
            [self.in_flight[t] for t in busy],
            self.per_target_max,
            lease,
        )
        return [Claimed(**dict(r)) for r in rows]

    def _start(self, row: Claimed) -> None:
        self.in_flight[row.target] += 1
        task = asyncio.create_task(self._attempt_and_record(row))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self.in_flight[row.target] -= 1
            if self.in_flight[row.target] <= 0:
                del self.in_flight[row.target]
            self._wake.set()  # a slot is free
            if not t.cancelled() and t.exception() is not None:
                # The row stays leased and is tried again after the lease.
                log.error("webhook attempt crashed", error=repr(t.exception()))

        task.add_done_callback(done)

    async def _attempt_and_record(self, row: Claimed) -> None:
        outcome = await self.attempt(row)
        at = self.clock()
        attempts = row.attempts + 1
        next_at: datetime | None = None
        if outcome.delivered:
            status = "delivered"
        elif attempts < len(self.schedule_s):
            status = "pending"
            next_at = at + timedelta(seconds=self.schedule_s[attempts])
        else:
            status = "failed"
        await self.pool.execute(
            _OUTCOME,
            row.delivery_id,
            attempts,
            at,
            outcome.status_code,
            outcome.error,
            status,
            next_at,
        )
        outcome_name = "retry" if status == "pending" else status
        ATTEMPTS.labels(outcome_name).inc()
        self.counts[outcome_name] += 1
        log.info(
            "webhook attempt",
            delivery_id=row.delivery_id,
            event_id=row.event_id,
            target=row.target,
            attempt=attempts,
            outcome=outcome_name,
            status_code=outcome.status_code,
            error=outcome.error,
        )

    async def attempt(self, row: Claimed) -> Outcome:
        """One POST of the row's body to its target; never raises for the receiver's faults."""
        destination = await self._destination(row)
        if destination is None:
            return Outcome(None, "the endpoint is gone")
        url, secrets = destination
        try:
            target = await urls.resolve(url, allow_loopback=self.allow_loopback)
        except urls.UnsafeWebhookUrl as e:
            return Outcome(None, f"refused: {e}"[:ERROR_CHARS_MAX])
        headers = signed_headers(secrets, row.event_id, self.clock(), row.body)
        headers["host"] = target.host_header
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with (
                asyncio.timeout(self.attempt_timeout_s),
                self.client.stream(
                    "POST",
                    target.request_url,
                    content=row.body.encode(),
                    headers=headers,
                    extensions=extensions,
                ) as response,
            ):
                code = response.status_code  # the body is never read: it is not ours to keep
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(None, f"no answer within {self.attempt_timeout_s:g} s")
        except httpx.HTTPError as e:
            return Outcome(None, f"{type(e).__name__}: {e}"[:ERROR_CHARS_MAX])
        if 200 <= code < 300:
            return Outcome(code, None)
        return Outcome(code, f"the receiver answered {code}")

    async def _destination(self, row: Claimed) -> tuple[str, list[str]] | None:
        """The URL and secrets the attempt uses now (an endpoint's may have changed): the
        current one, and the one a rotation replaced until it expires."""
        if row.endpoint_id is None:
            return row.url, [await default_secret(self.pool, row.user_id, self.clock())]
        found = await self.pool.fetchrow(
            "SELECT url, secret, CASE WHEN previous_secret_expires_at > $2"
            " THEN previous_secret END AS previous_secret"
            " FROM webhook_endpoints WHERE endpoint_id = $1",
            row.endpoint_id,
            self.clock(),
        )
        if found is None:
            return None
        previous = found["previous_secret"]
        return found["url"], [found["secret"], *([previous] if previous else [])]


async def _job_owner(
    conn: asyncpg.Connection, job_id: UUID
) -> tuple[str, str | None, list[str] | None] | None:
    """The job's user and its own webhook (None: no such job known)."""
    row = await conn.fetchrow(
        "SELECT user_id, url, events FROM webhook_jobs WHERE job_id = $1", job_id
    )
    if row is not None:
        return row["user_id"], row["url"], row["events"]
    # Its Submitted came before this group's first offset: the jobs read model knows the user
    # (not the webhook, which only the event carries).
    user = await conn.fetchval("SELECT user_id FROM jobs WHERE job_id = $1", job_id)
    return None if user is None else (user, None, None)
