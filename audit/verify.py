"""`ledger verify`: trust the ledger without trusting the read models.

One pass over every event in the store rebuilds, in memory, each aggregate (the domain's own
replay) and every posting (the domain's own double entry), checking the invariants after each
event. The read models are then compared with what the events say, table by table, key column
by key column; postings and statement lines are compared as streams in commit order, so memory
does not grow with them. Any difference is reported with the first differing rows.

Invariants:
- the postings of every event, and of all events, sum to zero;
- no lot's remainder and no available balance is ever negative;
- every completed job is settled exactly once, with charged = billed gpu_ms x rate;
- every open hold belongs to a job that is still live;
- a deactivated account places no hold until it is reactivated.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from audit.store import StoredDomainEvent
from domain.credits import CreditAccount, HoldStatus
from domain.jobs import GenerationJob
from domain.postings import postings_for
from domain.subscription import Subscription

MAX_SHOWN = 5
# The replay keeps every aggregate alive to the end: a growing heap of long-lived objects that
# the cyclic GC rescans at every full collection, a cost that grew with the store (0.33x the raw
# decode at 50k events, 0.27x at 1M). Freezing what exists every so often takes it out of the
# collector's reach; garbage made between freezes is still collected.
FREEZE_EVERY = 20_000


@dataclass
class Finding:
    check: str
    detail: str
    rows: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    events: int = 0
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def fail(self, check: str, detail: str, rows: list[str] | None = None) -> None:
        self.findings.append(Finding(check, detail, rows or []))


@dataclass
class _Replay:
    accounts: dict[UUID, CreditAccount] = field(default_factory=dict)
    jobs: dict[UUID, GenerationJob] = field(default_factory=dict)
    subscriptions: dict[UUID, Subscription] = field(default_factory=dict)
    settlements: dict[str, int] = field(default_factory=dict)  # hold id -> settle count
    total_postings: int = 0


async def verify(
    pool: asyncpg.Pool,
    events: AsyncIterator[StoredDomainEvent],
    *,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """``events``: every event of the store in order (read on a connection of its own)."""
    report = VerifyReport()
    replay = _Replay()
    expected_postings: list[tuple[Any, ...]] = []
    try:
        async with pool.acquire() as stream_conn, pool.acquire() as conn:
            db_postings = _stream(
                stream_conn,
                "SELECT event_id, seq, account, amount_mc, lot_id FROM postings "
                "ORDER BY position, event_id, seq",
            )
            await _replay_and_stream(
                report, replay, events, expected_postings, db_postings, progress
            )
            _check_jobs(report, replay)
            await _compare_tables(conn, report, replay)
    finally:
        gc.unfreeze()
    return report


async def _replay_and_stream(
    report: VerifyReport,
    replay: _Replay,
    events: AsyncIterator[StoredDomainEvent],
    expected_postings: list[tuple[Any, ...]],
    db_postings: AsyncIterator[tuple[Any, ...]],
    progress: Callable[[int], None] | None,
) -> None:
    postings_checked = 0
    async for stored in events:
        ev = stored.event
        report.events += 1
        if isinstance(ev, CreditAccount.CreditsReserved):
            before = replay.accounts.get(ev.originator_id)
            if before is not None and before.deactivated:
                report.fail(
                    "no holds while deactivated",
                    f"hold {ev.hold_id} placed on deactivated account {before.user_id}",
                )
        aggregate = _apply(replay, ev)
        if isinstance(aggregate, CreditAccount):
            event_id = f"{ev.originator_id}:{ev.originator_version}"
            postings = postings_for(aggregate.user_id, ev)
            total = sum(p.amount_mc for p in postings)
            if total:
                report.fail("postings balance", f"event {event_id} posts {total} mc, not 0")
            replay.total_postings += total
            for seq, p in enumerate(postings, start=1):  # as the ledger projection numbers them
                expected_postings.append((event_id, seq, p.account, p.amount_mc, p.lot_id))
            negative = [lot.lot_id for lot in aggregate.lots.values() if lot.remaining_mc < 0]
            if negative:
                report.fail("never negative", f"lots {negative} below zero after {event_id}")
            if isinstance(ev, CreditAccount.HoldSettled):
                replay.settlements[ev.hold_id] = replay.settlements.get(ev.hold_id, 0) + 1
        if len(expected_postings) >= 5000:
            postings_checked += await _compare_stream(
                report, "postings", expected_postings, db_postings
            )
        if report.events % FREEZE_EVERY == 0:
            gc.freeze()
        if progress and report.events % 5000 == 0:
            progress(report.events)
    postings_checked += await _compare_stream(
        report, "postings", expected_postings, db_postings, final=True
    )
    report.checked["postings"] = postings_checked
    if replay.total_postings:
        report.fail("postings balance", f"all postings sum to {replay.total_postings} mc, not 0")


def _apply(replay: _Replay, ev: Any) -> Any:
    stores: dict[type, dict[UUID, Any]] = {
        CreditAccount: replay.accounts,
        GenerationJob: replay.jobs,
        Subscription: replay.subscriptions,
    }
    for cls, store in stores.items():
        if type(ev).__qualname__.startswith(cls.__name__ + "."):
            store[ev.originator_id] = ev.mutate(store.get(ev.originator_id))
            return store[ev.originator_id]
    return None


def _check_jobs(report: VerifyReport, replay: _Replay) -> None:
    jobs_by_hold = {job.hold_id: job for job in replay.jobs.values()}
    for job in replay.jobs.values():
        if job.status == "completed":
            settled = replay.settlements.get(job.hold_id, 0)
            if settled != 1:
                report.fail("settled once", f"completed job {job.id} settled {settled} times")
            billed = min(job.gpu_ms, job.budget_ms)
            if job.charged_mc != billed:  # every tier's rate is 1 mc per GPU-ms
                report.fail("charge = gpu_ms x rate", f"job {job.id}: {job.charged_mc} != {billed}")
    for account in replay.accounts.values():
        for hold in account.holds.values():
            if hold.status != HoldStatus.OPEN.value:
                continue
            holder = jobs_by_hold.get(hold.hold_id)
            if holder is None or holder.is_terminal:
                report.fail(
                    "open hold has a live job",
                    f"hold {hold.hold_id} of {account.user_id} "
                    f"is open but its job is {holder.status if holder else 'missing'}",
                )


async def _compare_tables(conn: asyncpg.Connection, report: VerifyReport, replay: _Replay) -> None:
    expected_balances = {
        a.user_id: (sum(lot.remaining_mc for lot in a.lots.values()), a.held_mc, a.deactivated)
        for a in replay.accounts.values()
    }
    await _compare(
        conn,
        report,
        "balances",
        "SELECT user_id, available_mc, held_mc, deactivated FROM balances",
        lambda r: (r[0], tuple(r[1:])),
        expected_balances,
    )
    expected_lots = {
        (a.user_id, lot.lot_id): (
            lot.amount_mc,
            lot.remaining_mc,
            lot.held_mc,
            lot.consumed_mc,
            lot.expired_mc,
            lot.debited_mc,
            lot.refunded_mc,
            lot.expired,
        )
        for a in replay.accounts.values()
        for lot in a.lots.values()
    }
    await _compare(
        conn,
        report,
        "credit_lots",
        "SELECT user_id, lot_id, amount_mc, remaining_mc, held_mc, consumed_mc, "
        "expired_mc, debited_mc, refunded_mc, expired FROM credit_lots",
        lambda r: ((r[0], r[1]), tuple(r[2:])),
        expected_lots,
    )
    expected_jobs = {
        j.id: (j.status, j.charged_mc, j.attempt, j.refunded_mc) for j in replay.jobs.values()
    }
    await _compare(
        conn,
        report,
        "jobs",
        "SELECT job_id, status, charged_mc, attempt, refunded_mc FROM jobs",
        lambda r: (r[0], tuple(r[1:])),
        expected_jobs,
    )
    # Every image a job produced, and whether (and when) its owner deleted it.
    expected_images = {
        (j.user_id, i["name"]): (j.id, i["size_bytes"], j.deleted_images.get(i["name"]))
        for j in replay.jobs.values()
        for i in j.images
    }
    await _compare(
        conn,
        report,
        "images",
        "SELECT user_id, name, job_id, size_bytes, deleted_at FROM images",
        lambda r: ((r[0], r[1]), tuple(r[2:])),
        expected_images,
    )
    # A usage record for every job whose hold was settled: it ran and was billed.
    expected_usage = {
        j.id: (j.charged_mc, j.refunded_mc)
        for j in replay.jobs.values()
        if j.hold_id in replay.settlements
    }
    await _compare(
        conn,
        report,
        "usage_records",
        "SELECT job_id, charged_mc, refunded_mc FROM usage_records",
        lambda r: (r[0], (r[1], r[2])),
        expected_usage,
    )
    # With the expiry loop's work lists: when a tester plan reverts, the last contract period.
    expected_subs = {
        s.user_id: (s.plan_slug, s.status, s.tester_until, s.contract_period_end)
        for s in replay.subscriptions.values()
    }
    await _compare(
        conn,
        report,
        "user_subscriptions",
        "SELECT user_id, plan, status, tester_until, contract_period_end FROM user_subscriptions",
        lambda r: (r[0], tuple(r[1:])),
        expected_subs,
    )


async def _compare(
    conn: asyncpg.Connection,
    report: VerifyReport,
    table: str,
    sql: str,
    key_value: Callable[[asyncpg.Record], tuple[Any, Any]],
    expected: dict[Any, Any],
) -> None:
    actual = dict(key_value(r) for r in await conn.fetch(sql))
    report.checked[table] = len(expected)
    diffs = []
    for key in sorted(set(expected) | set(actual), key=repr):
        want, got = expected.get(key, "missing"), actual.get(key, "missing")
        if want != got:
            diffs.append(f"{key}: events say {want}, {table} has {got}")
    if diffs:
        report.fail(f"{table} = replay", f"{len(diffs)} differing rows", diffs[:MAX_SHOWN])


async def _stream(conn: asyncpg.Connection, sql: str) -> AsyncIterator[tuple[Any, ...]]:
    async with conn.transaction(readonly=True):
        async for row in conn.cursor(sql, prefetch=5000):
            yield tuple(row.values())


async def _compare_stream(
    report: VerifyReport,
    table: str,
    expected: list[tuple[Any, ...]],
    actual: AsyncIterator[tuple[Any, ...]],
    *,
    final: bool = False,
) -> int:
    """Compare the buffered expected rows with the next rows of the table, in order. After
    the first difference the streams are out of step: stop comparing."""
    if any(f.check == f"{table} = replay" for f in report.findings):
        expected.clear()
        return 0
    compared = 0
    for want in expected:
        got = await anext(actual, None)
        compared += 1
        if got != want:
            report.fail(
                f"{table} = replay",
                f"first difference at row {compared}",
                [f"events say {want}", f"{table} has {got}"],
            )
            expected.clear()
            return compared
    expected.clear()
    if final and (extra := await anext(actual, None)) is not None:
        report.fail(f"{table} = replay", "the table has rows no event explains", [str(extra)])
    return compared
