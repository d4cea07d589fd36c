"""`ledger reconcile`: four independent records of the same facts must agree.

- ledger debits: the HoldSettled events in the store (what was charged, for how many GPU-ms);
- usage records: the read model users and analysts see;
- worker reports: the ``Finished`` messages the GPU workers sent (Kafka, 7 days retained);
- Stripe payments: the payments table, against the subscription credit each paid invoice
  granted (one lot per invoice).

Every disagreement is listed; none means the window reconciles.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from audit.store import StoredDomainEvent
from domain.credits import CreditAccount, LotSource
from domain.jobs import GenerationJob
from infra.kafka import connection_kwargs
from infra.messages import Finished, parse_report
from infra.settings import Settings
from infra.topics import REPORTS_TOPIC


@dataclass(frozen=True)
class Discrepancy:
    subject: str  # job or invoice id
    check: str
    detail: str


@dataclass
class Reconciliation:
    jobs: int = 0
    invoices: int = 0
    reports: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)


@dataclass
class _Settled:
    charged_mc: int
    billed_gpu_ms: int
    measured_gpu_ms: int | None = None
    attempt: int | None = None


def _in(t: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or t >= start) and (end is None or t < end)


async def ledger_debits(
    events: AsyncIterable[StoredDomainEvent], start: datetime | None, end: datetime | None
) -> tuple[dict[UUID, _Settled], dict[str, int]]:
    """Settlements per job (with the run's measured GPU-ms and attempt from the job's own
    terminal event) and subscription grants per invoice, in the window."""
    settled: dict[UUID, _Settled] = {}
    grants: dict[str, int] = {}
    async for stored in events:
        ev = stored.event
        if not _in(ev.timestamp, start, end):
            continue
        if isinstance(ev, CreditAccount.HoldSettled):
            settled[UUID(ev.job_id)] = _Settled(ev.charged_mc, ev.gpu_ms)
        elif isinstance(
            ev, GenerationJob.Completed | GenerationJob.Failed | GenerationJob.Cancelled
        ):
            s = settled.get(ev.originator_id)
            if s is not None:
                s.measured_gpu_ms, s.attempt = ev.gpu_ms, getattr(ev, "attempt", None)
        elif isinstance(ev, CreditAccount.CreditsGranted) and ev.source == LotSource.SUBSCRIPTION:
            grants[ev.reference] = grants.get(ev.reference, 0) + 1
    return settled, grants


async def worker_reports(
    settings: Settings, timeout_s: float = 10.0
) -> dict[tuple[UUID, int], Finished]:
    """Every Finished report still retained on the reports topic, by (job, attempt)."""
    consumer = AIOKafkaConsumer(
        **connection_kwargs(settings), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    found: dict[tuple[UUID, int], Finished] = {}
    try:
        topic = settings.topic(REPORTS_TOPIC)
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("could not read the whole reports topic in time")
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    report = parse_report(m.value)
                    if isinstance(report, Finished):
                        found.setdefault((report.job_id, report.attempt), report)
    finally:
        await consumer.stop()
    return found


async def reconcile(
    conn: asyncpg.Connection,
    events: AsyncIterable[StoredDomainEvent],
    reports: dict[tuple[UUID, int], Finished] | None,
    start: datetime | None,
    end: datetime | None,
) -> Reconciliation:
    result = Reconciliation()
    out = result.discrepancies
    settled, grants = await ledger_debits(events, start, end)
    result.jobs = len(settled)
    usage = {
        r["job_id"]: r
        for r in await conn.fetch(
            "SELECT job_id, charged_mc, gpu_ms FROM usage_records "
            "WHERE ($1::timestamptz IS NULL OR occurred_at >= $1) "
            "AND ($2::timestamptz IS NULL OR occurred_at < $2)",
            start,
            end,
        )
    }
    for job_id, s in settled.items():
        row = usage.get(job_id)
        if row is None:
            out.append(
                Discrepancy(str(job_id), "usage record", "settled in the ledger, no usage record")
            )
        elif row["charged_mc"] != s.charged_mc:
            out.append(
                Discrepancy(
                    str(job_id),
                    "usage record",
                    f"ledger charged {s.charged_mc} mc, usage says {row['charged_mc']}",
                )
            )
        elif s.measured_gpu_ms is not None and row["gpu_ms"] != s.measured_gpu_ms:
            out.append(
                Discrepancy(
                    str(job_id),
                    "usage record",
                    f"job measured {s.measured_gpu_ms} ms, usage says {row['gpu_ms']}",
                )
            )
        if reports is not None and s.attempt is not None:
            report = reports.get((job_id, s.attempt))
            if report is None:
                out.append(
                    Discrepancy(
                        str(job_id),
                        "worker report",
                        f"no report of attempt {s.attempt} is retained",
                    )
                )
            elif report.gpu_ms != s.measured_gpu_ms:
                out.append(
                    Discrepancy(
                        str(job_id),
                        "worker report",
                        f"worker reported {report.gpu_ms} ms, the job recorded {s.measured_gpu_ms}",
                    )
                )
    for job_id in set(usage) - set(settled):
        out.append(Discrepancy(str(job_id), "usage record", "usage record without a ledger debit"))
    result.reports = len(reports or {})
    payments = await conn.fetch(
        "SELECT stripe_invoice_id, status FROM payments WHERE kind = 'subscription' "
        "AND stripe_invoice_id IS NOT NULL "
        "AND ($1::timestamptz IS NULL OR created_at >= $1) "
        "AND ($2::timestamptz IS NULL OR created_at < $2)",
        start,
        end,
    )
    paid = {r["stripe_invoice_id"] for r in payments if r["status"] in ("paid", "refunded")}
    result.invoices = len(paid | set(grants))
    for invoice in sorted(paid - set(grants)):
        out.append(Discrepancy(invoice, "Stripe payment", "paid in Stripe, no credit granted"))
    for invoice in sorted(set(grants) - paid):
        out.append(Discrepancy(invoice, "Stripe payment", "credit granted, no payment recorded"))
    for invoice, n in grants.items():
        if n > 1:
            out.append(Discrepancy(invoice, "Stripe payment", f"granted {n} times"))
    return result
