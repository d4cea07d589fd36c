"""After the storm: wait until the system is quiet, then judge it.

Quiet means: the relay has sent every stored event, every projection has applied every message,
and no job the store knows is still waiting or running. Then the same code as
``pinksea ledger verify`` and ``pinksea ledger reconcile`` runs, plus the checks only the chaos
run can make, because only it knows what the service answered: every job it accepted exists and
ended, every credit grant and plan purchase it acknowledged is in the ledger.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import asyncpg

from audit.reconcile import reconcile, worker_reports
from audit.store import (
    ACCOUNT_EVENTS,
    JOB_EVENTS,
    VERIFIED_EVENTS,
    stream_aggregates,
    stream_events,
)
from audit.verify import verify
from chaos.load import LoadResult
from infra.settings import Settings
from projections.status import status_report

LIVE_STATUSES = ("submitted", "accepted", "dispatched", "running")
QUIET_POLLS = 3  # consecutive quiet observations, a second apart


@dataclass
class Quiescence:
    reached: bool
    waited_s: float
    last: str  # what was still moving at the end


@dataclass
class Judgement:
    events: int = 0
    verify_findings: list[str] = field(default_factory=list)
    reconcile_discrepancies: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # acknowledged, not in the ledger
    unfinished: list[str] = field(default_factory=list)  # accepted, never ended
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    settled_jobs: int = 0

    @property
    def discrepancies(self) -> int:
        return (
            len(self.verify_findings)
            + len(self.reconcile_discrepancies)
            + len(self.lost)
            + len(self.unfinished)
        )


async def wait_for_quiescence(
    settings: Settings, pool: asyncpg.Pool, timeout_s: float
) -> Quiescence:
    started = time.monotonic()
    quiet, last = 0, "nothing observed yet"
    while time.monotonic() - started < timeout_s:
        try:
            report = await status_report(settings)
            live = await pool.fetchval(
                "SELECT count(*) FROM jobs WHERE status = ANY($1::text[])", list(LIVE_STATUSES)
            )
        except (OSError, asyncpg.PostgresError) as exc:  # a dependency still coming back
            quiet, last = 0, f"status unavailable: {exc}"
            await asyncio.sleep(1)
            continue
        lagging = {
            n: p["lag_messages"] for n, p in report["projections"].items() if p["lag_messages"]
        }
        relay_lag = report["relay"]["lag_events"]
        if relay_lag == 0 and not lagging and live == 0:
            quiet += 1
            if quiet >= QUIET_POLLS:
                return Quiescence(True, time.monotonic() - started, "quiet")
        else:
            quiet = 0
            last = f"relay {relay_lag} behind, projections lagging {lagging}, {live} live jobs"
        await asyncio.sleep(1)
    return Quiescence(False, time.monotonic() - started, last)


async def judge(settings: Settings, pool: asyncpg.Pool, load: LoadResult) -> Judgement:
    out = Judgement()
    # ledger verify: replay everything, compare every read model, check the invariants.
    async with pool.acquire() as conn:
        report = await verify(pool, stream_aggregates(conn, topics=VERIFIED_EVENTS))
    out.events = report.events
    out.verify_findings = [f"{f.check}: {f.detail} {f.rows[:2]}" for f in report.findings]
    # ledger reconcile: usage records vs ledger debits vs the workers' reports on Kafka.
    reports = await worker_reports(settings)
    async with pool.acquire() as conn, pool.acquire() as events_conn:
        rec = await reconcile(
            conn,
            stream_events(events_conn, topics=(ACCOUNT_EVENTS, JOB_EVENTS)),
            reports,
            None,
            None,
        )
    out.settled_jobs = rec.jobs
    out.reconcile_discrepancies = [f"{d.subject} {d.check}: {d.detail}" for d in rec.discrepancies]
    # What the service acknowledged must be in the ledger, and must have ended.
    accepted = [uuid.UUID(j) for j in load.accepted]
    stored = {
        r["originator_id"]
        for r in await pool.fetch(
            "SELECT DISTINCT originator_id FROM pinksea_events "
            "WHERE originator_id = ANY($1::uuid[])",
            accepted,
        )
    }
    out.lost = [f"job {j} was accepted (202) but has no event" for j in accepted if j not in stored]
    rows = await pool.fetch(
        "SELECT job_id, status, failure_reason FROM jobs WHERE job_id = ANY($1::uuid[])", accepted
    )
    for r in rows:
        key = f"{r['status']}: {r['failure_reason']}" if r["failure_reason"] else r["status"]
        out.jobs_by_status[key] = out.jobs_by_status.get(key, 0) + 1
        if r["status"] in LIVE_STATUSES:
            out.unfinished.append(f"job {r['job_id']} is still {r['status']}")
    # Every hold resolved once: at quiescence nothing may still be held.
    held = await pool.fetchval("SELECT coalesce(sum(held_mc), 0) FROM credit_lots")
    if held:
        out.unfinished.append(f"{held} mc still held with every job ended")
    lots = {
        r["reference"]
        for r in await pool.fetch("SELECT reference FROM credit_lots WHERE source = 'admin'")
    }
    out.lost += [
        f"grant {g} was acknowledged (201) but has no lot" for g in load.granted if g not in lots
    ]
    pro = {
        r["user_id"]
        for r in await pool.fetch(
            "SELECT user_id FROM user_subscriptions WHERE plan = 'pro' AND status = 'active'"
        )
    }
    out.lost += [
        f"{u}'s paid plan was acknowledged but is not active" for u in load.subscribed - pro
    ]
    return out
