"""`ledger verify`: trust the ledger without trusting the read models.

One pass over every event in the store, in aggregate order (aggregate id, then version),
rebuilds each aggregate alone (the domain's own replay) and every posting (the domain's own
double entry), checking the invariants after each event. When an aggregate's events end, its
rows are compared with the read models, which are read as server-side cursors sorted the same
way (one snapshot of them all): a merge of two sorted streams per table. Nothing is kept once
compared, so memory is bounded by the largest aggregate and a chunk of accounts, not by the
store. Any difference is reported with the first differing rows.

Invariants:
- the postings of every event, and of all events, sum to zero;
- no lot's remainder and no available balance is ever negative;
- every completed job is settled exactly once, with charged = billed gpu_ms x rate;
- every open hold belongs to a job that is still live;
- a deactivated account places no hold until it is reactivated.

The hold checks join two aggregates (a job's hold, id = the job's id, is on its user's account).
They are made per chunk of accounts against the jobs read model of those users, which this same
run compares with the replayed jobs on every column the join uses (user, status, charge): when
that comparison passes the jobs table *is* the replay, so joining it is joining the replay; when
it fails, verify fails anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from audit.store import StoredDomainEvent
from domain.credits import CreditAccount
from domain.holds import HoldStatus
from domain.job_events import (
    PRODUCED_IMAGE_CATEGORY,
    PRODUCED_IMAGE_ORIGIN,
    UPLOADED_IMAGE_ORIGIN,
)
from domain.job_lifecycle import TERMINAL
from domain.jobs import GenerationJob, JobStatus
from domain.postings import postings_for
from domain.subscription import Subscription
from domain.uploads import Upload, UploadStatus

MAX_SHOWN = 5
# Read-model rows fetched per round trip of each cursor, and accounts per hold-check chunk:
# together with one aggregate, they bound verify's memory.
PREFETCH_ROWS = 5000
CHUNK_ACCOUNTS_MAX = 250
# Sorts after every real aggregate id (a uuid5 never has all bits set): a lot whose user has
# no balances row sorts last and is reported as a row no event explains.
NO_ACCOUNT = UUID(int=2**128 - 1)
COMPLETED = JobStatus.COMPLETED.value
OPEN = HoldStatus.OPEN.value
MISSING = "missing"
TERMINAL_OR_MISSING = TERMINAL | {MISSING}

# Each read model as (key columns..., value columns...) in the order the replay produces them:
# aggregate id first. Text keys sort with COLLATE "C" (byte order = Python's str order).
TABLE_QUERIES: dict[str, tuple[int, str]] = {  # table -> (key column count, query)
    "postings": (
        3,
        "SELECT split_part(event_id, ':', 1)::uuid, split_part(event_id, ':', 2)::bigint, seq, "
        "account, amount_mc, lot_id FROM postings ORDER BY 1, 2, 3",
    ),
    "balances": (
        1,
        "SELECT account_id, user_id, available_mc, held_mc, deactivated FROM balances "
        "ORDER BY account_id",
    ),
    "credit_lots": (
        2,
        f"SELECT coalesce(b.account_id, '{NO_ACCOUNT}'::uuid), l.lot_id, l.user_id, "
        "l.amount_mc, l.remaining_mc, l.held_mc, l.consumed_mc, l.expired_mc, l.debited_mc, "
        "l.refunded_mc, l.expired FROM credit_lots l LEFT JOIN balances b USING (user_id) "
        'ORDER BY 1, l.lot_id COLLATE "C"',
    ),
    "jobs": (
        1,
        "SELECT job_id, user_id, status, charged_mc, attempt, refunded_mc FROM jobs "
        "ORDER BY job_id",
    ),
    # Every image a job produced and every completed upload (by its aggregate: the job or the
    # upload), whether (and when) its owner deleted it, what it is and where it came from, and
    # its owner's flags.
    "images": (
        2,
        "SELECT coalesce(job_id, upload_id), name, user_id, size_bytes, deleted_at, "
        "image_category, image_origin, starred, is_intermediate FROM images "
        'ORDER BY 1, name COLLATE "C"',
    ),
    # With the expiry loop's work lists: when a tester plan reverts, the last contract period.
    "user_subscriptions": (
        1,
        "SELECT subscription_id, user_id, plan, status, tester_until, contract_period_end "
        "FROM user_subscriptions ORDER BY subscription_id",
    ),
}


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
class _Diffs:
    """The differences found in one read model: how many, and the first few."""

    table: str
    count: int = 0
    shown: list[str] = field(default_factory=list)

    def add(self, key: Any, want: Any, got: Any) -> None:
        self.count += 1
        if len(self.shown) < MAX_SHOWN:
            self.shown.append(f"{key}: events say {want}, {self.table} has {got}")

    def report_to(self, report: VerifyReport) -> None:
        if self.count:
            report.fail(f"{self.table} = replay", f"{self.count} differing rows", self.shown)


class _Merge:
    """One read model compared with the replay: both sorted by the same key, merged."""

    def __init__(self, table: str, keys: int, rows: AsyncIterator[asyncpg.Record]) -> None:
        self.diffs = _Diffs(table)
        self.checked = 0
        self._keys = keys
        self._rows = rows
        self._next: tuple[Any, Any] | None = None
        self._started = False
        self._last_expected: Any = None
        self._last_actual: Any = None

    async def _peek(self) -> tuple[Any, Any] | None:
        if not self._started or self._next is None:
            self._started = True
            row = await anext(self._rows, None)
            if row is None:
                self._next = None
                return None
            values = tuple(row.values())
            key = values[0] if self._keys == 1 else values[: self._keys]
            # The merge is only right if PostgreSQL sorts as Python compares.
            assert self._last_actual is None or key > self._last_actual, (self.diffs.table, key)
            self._last_actual = key
            self._next = (key, values[self._keys :])
        return self._next

    async def expect(self, key: Any, want: tuple[Any, ...]) -> None:
        assert self._last_expected is None or key > self._last_expected, (self.diffs.table, key)
        self._last_expected = key
        self.checked += 1
        while (got := await self._peek()) is not None and got[0] < key:
            self.diffs.add(got[0], MISSING, got[1])  # a row no event explains
            self._started = False
        if got is None or got[0] != key:
            self.diffs.add(key, want, MISSING)
            return
        self._started = False
        if got[1] != want:
            self.diffs.add(key, want, got[1])

    async def finish(self) -> None:
        while (got := await self._peek()) is not None:
            self.diffs.add(got[0], MISSING, got[1])
            self._started = False


@dataclass
class _HoldChunk:
    """Accounts replayed since the last hold check: their users, and per hold its status and
    how often it was settled."""

    users: list[str] = field(default_factory=list)
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)  # hold id -> (status, n)


@dataclass
class _Run:
    report: VerifyReport
    conn: asyncpg.Connection  # the read models, in one snapshot
    tables: dict[str, _Merge]
    usage: _Diffs = field(default_factory=lambda: _Diffs("usage_records"))
    chunk: _HoldChunk = field(default_factory=_HoldChunk)
    total_postings: int = 0
    usage_expected: int = 0
    usage_seen: int = 0
    completed_replayed: int = 0
    completed_checked: int = 0


async def verify(
    pool: asyncpg.Pool,
    events: AsyncIterator[StoredDomainEvent],
    *,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """``events``: every event of the store in aggregate order (``audit.store.
    stream_aggregates``, read on a connection of its own)."""
    report = VerifyReport()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        tables = {
            name: _Merge(name, keys, aiter(conn.cursor(sql, prefetch=PREFETCH_ROWS)))
            for name, (keys, sql) in TABLE_QUERIES.items()
        }
        run = _Run(report, conn, tables)
        await _replay(run, events, progress)
        await _check_holds(run)
        await _finish(run)
    return report


async def _replay(
    run: _Run, events: AsyncIterator[StoredDomainEvent], progress: Callable[[int], None] | None
) -> None:
    """Apply each aggregate's events in turn; compare it when its events end."""
    aggregate: Any = None
    settled: dict[str, int] = {}  # of the current account: hold id -> HoldSettled events
    last: tuple[UUID, int] | None = None
    async for stored in events:
        ev = stored.event
        at = (ev.originator_id, ev.originator_version)
        assert last is None or at > last, f"events not in aggregate order: {at} after {last}"
        if last is not None and at[0] != last[0]:
            await _finished(run, aggregate, settled)
            aggregate, settled = None, {}
        last = at
        run.report.events += 1
        _check_account_event(run, aggregate, ev, settled)
        aggregate = ev.mutate(aggregate)
        if isinstance(aggregate, CreditAccount):
            await _account_event_applied(run, aggregate, ev)
        if progress and run.report.events % 5000 == 0:
            progress(run.report.events)
    if aggregate is not None:
        await _finished(run, aggregate, settled)


def _check_account_event(run: _Run, before: Any, ev: Any, settled: dict[str, int]) -> None:
    """Before the event is applied: its account as it was."""
    if isinstance(ev, CreditAccount.CreditsReserved) and before is not None and before.deactivated:
        run.report.fail(
            "no holds while deactivated",
            f"hold {ev.hold_id} placed on deactivated account {before.user_id}",
        )
    if isinstance(ev, CreditAccount.HoldSettled):
        settled[ev.hold_id] = settled.get(ev.hold_id, 0) + 1


async def _account_event_applied(run: _Run, account: CreditAccount, ev: Any) -> None:
    event_id = f"{ev.originator_id}:{ev.originator_version}"
    postings = postings_for(account.user_id, ev)
    total = sum(p.amount_mc for p in postings)
    if total:
        run.report.fail("postings balance", f"event {event_id} posts {total} mc, not 0")
    run.total_postings += total
    table = run.tables["postings"]
    for seq, p in enumerate(postings, start=1):  # as the ledger projection numbers them
        key = (ev.originator_id, ev.originator_version, seq)
        await table.expect(key, (p.account, p.amount_mc, p.lot_id))
    negative = [lot.lot_id for lot in account.lots.values() if lot.remaining_mc < 0]
    if negative:
        run.report.fail("never negative", f"lots {negative} below zero after {event_id}")


async def _finished(run: _Run, aggregate: Any, settled: dict[str, int]) -> None:
    """An aggregate's last event was applied: compare its rows, then let it go."""
    if isinstance(aggregate, CreditAccount):
        await _account_finished(run, aggregate, settled)
    elif isinstance(aggregate, GenerationJob):
        await _job_finished(run, aggregate)
    elif isinstance(aggregate, Upload):
        await _upload_finished(run, aggregate)
    elif isinstance(aggregate, Subscription):
        s = aggregate
        await run.tables["user_subscriptions"].expect(
            s.id, (s.user_id, s.plan_slug, s.status, s.tester_until, s.contract_period_end)
        )


async def _account_finished(run: _Run, a: CreditAccount, settled: dict[str, int]) -> None:
    available = sum(lot.remaining_mc for lot in a.lots.values())
    await run.tables["balances"].expect(a.id, (a.user_id, available, a.held_mc, a.deactivated))
    lots = run.tables["credit_lots"]
    for lot in sorted(a.lots.values(), key=lambda lot: lot.lot_id):
        await lots.expect(
            (a.id, lot.lot_id),
            (
                a.user_id,
                lot.amount_mc,
                lot.remaining_mc,
                lot.held_mc,
                lot.consumed_mc,
                lot.expired_mc,
                lot.debited_mc,
                lot.refunded_mc,
                lot.expired,
            ),
        )
    run.chunk.users.append(a.user_id)
    for hold in a.holds.values():
        run.chunk.holds[hold.hold_id] = (hold.status, settled.get(hold.hold_id, 0))
    for hold_id, n in settled.items():  # a settlement of a hold the account does not hold
        run.chunk.holds.setdefault(hold_id, ("unknown", n))
    if len(run.chunk.users) >= CHUNK_ACCOUNTS_MAX:
        await _check_holds(run)


async def _job_finished(run: _Run, j: GenerationJob) -> None:
    if j.status == COMPLETED:
        run.completed_replayed += 1
        billed = min(j.gpu_ms, j.budget_ms)
        if j.charged_mc != billed:  # every tier's rate is 1 mc per GPU-ms
            run.report.fail("charge = gpu_ms x rate", f"job {j.id}: {j.charged_mc} != {billed}")
    await run.tables["jobs"].expect(
        j.id, (j.user_id, j.status, j.charged_mc, j.attempt, j.refunded_mc)
    )
    images = run.tables["images"]
    for i in sorted(j.images, key=lambda i: str(i["name"])):
        name = i["name"]
        await images.expect(
            (j.id, name),
            (
                j.user_id,
                i["size_bytes"],
                j.deleted_images.get(name),
                PRODUCED_IMAGE_CATEGORY.value,
                PRODUCED_IMAGE_ORIGIN.value,
                name in j.starred_images,
                name in j.intermediate_images,
            ),
        )


async def _upload_finished(run: _Run, u: Upload) -> None:
    """A completed upload is one of its user's images, named by its id (projections/jobs.py)."""
    if u.status != UploadStatus.COMPLETED.value:
        return  # pending or rejected: never in the gallery
    # Nothing follows an upload's deletion (it is then unknown to every command), so its
    # deletion is its last event and the aggregate's modification time is when it happened.
    deleted_at = u.modified_on if u.deleted else None
    await run.tables["images"].expect(
        (u.id, str(u.id)),
        (
            u.user_id,
            u.size_bytes,
            deleted_at,
            u.category.value,
            UPLOADED_IMAGE_ORIGIN.value,
            u.starred,
            u.is_intermediate,
        ),
    )


async def _check_holds(run: _Run) -> None:
    """The hold checks and the usage records of the chunk's users (see the module's doc)."""
    chunk, run.chunk = run.chunk, _HoldChunk()
    if not chunk.users:
        return
    jobs = await run.conn.fetch(
        "SELECT job_id, status, charged_mc, refunded_mc FROM jobs WHERE user_id = ANY($1)",
        chunk.users,
    )
    status_of = {str(r["job_id"]): r["status"] for r in jobs}
    # A usage record for every job whose hold was settled: it ran and was billed.
    expected_usage: dict[UUID, tuple[int, int]] = {}
    for r in jobs:
        _, settled = chunk.holds.get(str(r["job_id"]), (MISSING, 0))
        if r["status"] == COMPLETED:
            run.completed_checked += 1
            if settled != 1:
                run.report.fail(
                    "settled once", f"completed job {r['job_id']} settled {settled} times"
                )
        if settled:
            expected_usage[r["job_id"]] = (r["charged_mc"], r["refunded_mc"])
    for hold_id, (status, _) in chunk.holds.items():
        if status == OPEN and status_of.get(hold_id, MISSING) in TERMINAL_OR_MISSING:
            run.report.fail(
                "open hold has a live job",
                f"hold {hold_id} is open but its job is {status_of.get(hold_id, MISSING)}",
            )
    actual_usage = {
        r["job_id"]: (r["charged_mc"], r["refunded_mc"])
        for r in await run.conn.fetch(
            "SELECT job_id, charged_mc, refunded_mc FROM usage_records WHERE user_id = ANY($1)",
            chunk.users,
        )
    }
    run.usage_expected += len(expected_usage)
    run.usage_seen += len(actual_usage)
    for key in sorted(expected_usage.keys() | actual_usage.keys()):
        want, got = expected_usage.get(key, MISSING), actual_usage.get(key, MISSING)
        if want != got:
            run.usage.add(key, want, got)


async def _finish(run: _Run) -> None:
    report = run.report
    for merge in run.tables.values():
        await merge.finish()
    unseen_completed = run.completed_replayed - run.completed_checked
    if unseen_completed > 0:  # completed jobs of users without an account: never settled
        report.fail("settled once", f"{unseen_completed} completed jobs have no account")
    usage_rows = await run.conn.fetchval("SELECT count(*) FROM usage_records")
    if usage_rows > run.usage_seen:  # rows of users no account's events name
        run.usage.count += usage_rows - run.usage_seen
        run.usage.shown.append(f"{usage_rows - run.usage_seen} rows of users with no account")
    for name, merge in run.tables.items():
        report.checked[name] = merge.checked
        merge.diffs.report_to(report)
    report.checked["usage_records"] = run.usage_expected
    run.usage.report_to(report)
    if run.total_postings:
        report.fail("postings balance", f"all postings sum to {run.total_postings} mc, not 0")
