"""The notifier: pinksea.credits.v1 -> one e-mail per low-balance crossing, recorded.

What is a crossing is the domain's decision, not ours: CreditAccount.LowBalanceReached is
raised once each time available credit falls below a tenth of the plan's monthly credits, and
re-armed by LowBalanceCleared (domain/credits.py). The notifier adds no threshold of its own,
so the e-mail, ``GET /v1/me``'s ``low_balance`` and the event log always agree.

Each polled batch, in partition order:

- ``CreditAccount.Opened``: remember account -> user (the envelope of a crossing names only the
  account). An account's events share a partition, so its Opened is always read first.
- ``CreditAccount.Deactivated`` / ``Reactivated``: remember the account's status, in the
  account's own order (a crossing after a deactivation is never mailed: the operator stopped
  the account, and its credit is no longer the user's to spend).
- ``CreditAccount.LowBalanceReached``: in one transaction, decide (stale, unknown account,
  deactivated, unsubscribed, no address: skipped), INSERT the event's ``notifications`` row
  ON CONFLICT DO NOTHING (no row back: handled before, so nothing is sent), send, COMMIT.
- anything else: not ours.

Kafka offsets are committed only after every record of the batch is committed.

Delivery: a crash after the SMTP/SES send and before the COMMIT leaves no row and no committed
offset, so the redelivered event is sent again: at-least-once on the wire (both copies carry
the same Message-ID), exactly once in the ``notifications`` table. A transient send failure
rolls the row back and retries the batch after a backoff (the partition waits; nothing is
lost); a permanent one (address refused) is recorded as ``failed`` and the notifier moves on.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from aiokafka import TopicPartition
from prometheus_client import Counter as MetricCounter
from pydantic import ValidationError

from eventstore.envelope import Envelope
from infra.errors import OPERATIONAL_ERRORS
from infra.kafka import consume_committed, manual_consumer, stop_bounded
from infra.settings import Settings
from infra.topics import CREDITS_TOPIC
from workflows.notifier.messages import LowBalance, low_balance_email
from workflows.notifier.preferences import DEFAULT, get_preferences
from workflows.notifier.transports import PermanentSendError, TransientSendError, Transport

log = structlog.get_logger("notifier")

GROUP = "pinksea.notifier"
OPENED = "CreditAccount.Opened"
REACHED = "CreditAccount.LowBalanceReached"
STATUS = {"CreditAccount.Deactivated": True, "CreditAccount.Reactivated": False}
KIND = "low_balance"

BATCH_MAX = 100  # events per poll: bounds the time a batch's offsets stay uncommitted
POLL_TIMEOUT_MS = 500  # how long a poll waits for events (and how soon a stop is seen)
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0  # a mail server or database that stays down is retried this often

# Errors after which the batch is retried from its first offset (recorded events are skipped):
# the operational ones (infra/errors.py) and a mail server's temporary refusal. Anything else
# (a bug) ends the process; its supervisor restarts it at the last committed offsets.
RETRYABLE: tuple[type[BaseException], ...] = (TransientSendError, *OPERATIONAL_ERRORS)

EMAILS = MetricCounter(
    "pinksea_notifier_notifications_total",
    "Low-balance crossings handled, by outcome (sent, skipped, failed)",
    ["outcome"],
)
DUPLICATES = MetricCounter(
    "pinksea_notifier_duplicates_total", "Redelivered crossings that were recorded already"
)
RETRIES = MetricCounter("pinksea_notifier_retries_total", "Batches retried after a failure")
UNDECODABLE = MetricCounter(
    "pinksea_notifier_undecodable_total", "Messages on the credits topic that are no envelope"
)

_INSERT = """
INSERT INTO notifications (event_id, user_id, kind, outcome, reason, address, threshold_mc,
                           available_mc, occurred_at, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _retrying(error: BaseException, backoff_s: float) -> None:
    RETRIES.inc()
    log.warning("notifier retrying", error=repr(error), backoff_s=backoff_s)


class Notifier:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        transport: Transport,
        *,
        batch: int = BATCH_MAX,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        assert 0 < batch <= BATCH_MAX
        self.settings = settings
        self.pool = pool
        self.transport = transport
        self.batch = batch
        self.clock = clock
        self.max_age = timedelta(seconds=settings.low_balance_email_max_age_s)
        # What this instance did, by outcome ("sent", "skipped: no address", "duplicate", ...):
        # for its logs and for tests that wait on it.
        self.counts: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = manual_consumer(self.settings, GROUP, CREDITS_TOPIC)
        await consumer.start()
        log.info("notifier started", transport=self.transport.name)
        try:
            await consume_committed(
                consumer,
                stop,
                self.process,
                max_records=self.batch,
                retryable=RETRYABLE,
                on_retry=_retrying,
                poll_timeout_ms=POLL_TIMEOUT_MS,
                backoff_min_s=BACKOFF_MIN_S,
                backoff_max_s=BACKOFF_MAX_S,
            )
        finally:
            async with stop_bounded():
                await consumer.stop()
            log.info("notifier stopped", **dict(self.counts))

    async def process(self, polled: dict[TopicPartition, list[Any]]) -> None:
        envelopes = []
        for messages in polled.values():
            for message in messages:
                try:
                    envelopes.append(Envelope.from_bytes(message.value))
                except ValidationError:
                    # Only the relay writes this topic; one unreadable message must not stop
                    # every user's e-mails behind it.
                    UNDECODABLE.inc()
                    log.error("not an envelope", partition=message.partition, offset=message.offset)
        opened = [(e.aggregate_id, str(e.data["user_id"])) for e in envelopes if e.type == OPENED]
        if opened:
            await self.pool.executemany(
                "INSERT INTO notifier_accounts (account_id, user_id) VALUES ($1, $2) "
                "ON CONFLICT (account_id) DO NOTHING",
                opened,
            )
        for envelope in envelopes:  # partition order: an account's events in their order
            if envelope.type in STATUS:
                await self._remember_status(envelope)
            elif envelope.type == REACHED:
                await self.handle(envelope)

    async def _remember_status(self, envelope: Envelope) -> None:
        # Versioned, so a redelivered older status never overwrites a newer one.
        await self.pool.execute(
            "UPDATE notifier_accounts SET deactivated = $2, status_version = $3 "
            "WHERE account_id = $1 AND (status_version IS NULL OR status_version < $3)",
            envelope.aggregate_id,
            STATUS[envelope.type],
            envelope.version,
        )

    async def handle(self, envelope: Envelope) -> str:
        """Record one crossing and e-mail it when it should be; returns the outcome."""
        crossing = LowBalance(
            event_id=envelope.id,
            aggregate_id=envelope.aggregate_id,
            version=envelope.version,
            threshold_mc=int(envelope.data["threshold_mc"]),
            available_mc=int(envelope.data["available_mc"]),
            occurred_at=envelope.occurred_at,
        )
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            user, deactivated = await _owner(conn, crossing.aggregate_id)
            prefs = await get_preferences(conn, user) if user is not None else DEFAULT
            reason = self._skip_reason(
                crossing, user, deactivated, prefs.email, prefs.low_balance_emails, now
            )
            outcome = "sent" if reason is None else "skipped"
            address = prefs.email if reason is None else None
            # The claim: a concurrent notifier's INSERT of the same event waits for this
            # transaction, then finds the row.
            claimed = await conn.fetchval(
                _INSERT,
                crossing.event_id,
                user,
                KIND,
                outcome,
                reason,
                address,
                crossing.threshold_mc,
                crossing.available_mc,
                crossing.occurred_at,
                now,
            )
            if claimed is None:
                DUPLICATES.inc()
                return self._counted("duplicate", crossing, user)
            if reason is not None:
                return self._counted(f"skipped: {reason}", crossing, user)
            assert address is not None
            message = low_balance_email(
                crossing,
                sender=self.settings.email_sender,
                to=address,
                billing_url=self.settings.checkout_cancel_url,
                now=now,
            )
            try:
                # A TransientSendError leaves this block: the row is rolled back.
                transport_id = await self.transport.send(message)
            except PermanentSendError as e:
                await conn.execute(
                    "UPDATE notifications SET outcome = 'failed', reason = $2, address = NULL "
                    "WHERE event_id = $1",
                    crossing.event_id,
                    str(e)[:500],
                )
                return self._counted("failed", crossing, user, error=str(e))
            await conn.execute(
                "UPDATE notifications SET transport_id = $2 WHERE event_id = $1",
                crossing.event_id,
                transport_id,
            )
        return self._counted("sent", crossing, user)

    def _skip_reason(
        self,
        crossing: LowBalance,
        user: str | None,
        deactivated: bool,
        address: str | None,
        wanted: bool,
        now: datetime,
    ) -> str | None:
        if now - crossing.occurred_at > self.max_age:
            return "stale"  # e.g. a new notifier reading the whole history: old news
        if user is None:
            return "unknown account"
        if deactivated:
            return "deactivated"
        if not wanted:
            return "unsubscribed"
        if address is None:
            return "no address"
        return None

    def _counted(self, outcome: str, crossing: LowBalance, user: str | None, **extra: Any) -> str:
        self.counts[outcome] += 1
        if outcome != "duplicate":
            EMAILS.labels(outcome.partition(":")[0]).inc()
        log.info("low balance", outcome=outcome, event_id=crossing.event_id, user_id=user, **extra)
        return outcome


async def _owner(conn: asyncpg.Connection, account_id: UUID) -> tuple[str | None, bool]:
    """The account's user and whether the account is deactivated (None: no such account)."""
    row = await conn.fetchrow(
        "SELECT user_id, deactivated FROM notifier_accounts WHERE account_id = $1", account_id
    )
    if row is None:
        # Our Opened came before this group's first offset (e.g. an operator moved it on):
        # the ledger projection knows the owner and the status too.
        row = await conn.fetchrow(
            "SELECT user_id, deactivated FROM balances WHERE account_id = $1", account_id
        )
    return (row["user_id"], row["deactivated"]) if row is not None else (None, False)
