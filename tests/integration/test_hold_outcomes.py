"""Projection "hold_outcomes" on a real PostgreSQL: what was held and billed per job, the learned
rate that admission passes the estimator, hold tightness per tier, and the ledger report's
figures from the event store agreeing with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg

from audit.report import HoldReport, daily_report
from domain.application import PinkseaApplication
from domain.calibration import LEARNED_SAMPLES_MIN, gpu_ns_per_pixel_step
from domain.job_lifecycle import Fault
from domain.lots import LotSource
from domain.parameters import JobParameters
from domain.plans import GpuTier
from eventstore.contract import topic_for
from eventstore.decoding import StoredDomainEvent, decode
from eventstore.envelope import Envelope
from projections.hold_outcomes import HoldOutcomesProjection
from read_models.gpu_rates import hold_tightness, learned_rates
from tests.integration.test_read_models import (  # the shared fixtures and helpers
    db,  # noqa: F401  (a fixture)
    envelopes,
    images_for,
    new_app,
    project,
    run_to_start,
)

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
JOB = JobParameters(model="tiny-sd", prompt="a pink sea", steps=4, width=64, height=64)


def _app_with_user(user: str) -> PinkseaApplication:
    app = new_app()
    app.register_user(user, T0)
    app.grant_credits(
        user,
        grant_id="lots",
        source=LotSource.PURCHASE,
        amount_mc=10**9,
        valid_from=T0 - timedelta(days=1),
        valid_until=T0 + timedelta(days=365),
        actor="test",
        reason="room for every job",
        at=T0,
    )
    return app


async def test_settled_jobs_teach_the_rate_and_show_the_tightness(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    app = _app_with_user("u1")
    billed = []
    for i in range(LEARNED_SAMPLES_MIN + 2):
        job = app.submit_job("u1", idempotency_key=f"k{i}", params=JOB, at=T0).job_id
        assert job is not None
        run_to_start(app, job, T0)
        gpu_ms = 100 + 10 * i
        app.complete_job(
            job, attempt=1, gpu_ms=gpu_ms, cuda_ms=None, images=images_for(job, 1), at=T0
        )
        billed.append(gpu_ms)
    over = app.submit_job("u1", idempotency_key="over", params=JOB, at=T0).job_id
    assert over is not None
    run_to_start(app, over, T0)
    budget_ms = app.job(over).budget_ms
    app.fail_job(
        over,
        reason="stopped at the hold's time budget",
        retryable=False,
        fault=Fault.USER,
        gpu_ms=budget_ms + 7,
        attempt=1,
        at=T0,
    )
    await project(db, envelopes(app))

    rows = await db.fetch("SELECT * FROM hold_outcomes ORDER BY settled_position")
    assert len(rows) == len(billed) + 1
    # The sample computed in SQL is the domain's definition of it.
    for row, gpu_ms in zip(rows, billed, strict=False):
        assert row["gpu_ns_per_pixel_step"] == gpu_ns_per_pixel_step(
            gpu_ms, steps=4, width=64, height=64, batch=1
        )
    assert rows[-1]["stopped_at_budget"] and rows[-1]["gpu_ns_per_pixel_step"] is None

    rates = await learned_rates(db, "tiny-sd", 64, 64)
    rate = rates[GpuTier.BASIC]
    assert list(rates) == [GpuTier.BASIC] and rate.usable and rate.samples == len(billed)
    samples = sorted(r["gpu_ns_per_pixel_step"] for r in rows[:-1])
    assert samples[-3] <= rate.gpu_ns_per_pixel_step <= samples[-1]  # an upper quantile
    assert await learned_rates(db, "tiny-sd", 512, 512) == {}

    # Fed back: the next job's hold follows what the jobs before it were billed.
    fed = app.submit_job("u1", idempotency_key="next", params=JOB, at=T0, learned=rates).job_id
    assert fed is not None
    assert app.job(fed).estimate_ms == rate.estimate_ms(steps=4, width=64, height=64, batch_size=1)

    # Tightness needs settled_at within the window: these jobs settled at T0, in the past.
    await db.execute("UPDATE hold_outcomes SET settled_at = now()")
    (basic,) = await hold_tightness(db)
    holds = [r["hold_mc"] for r in rows]
    charged = [r["charged_mc"] for r in rows]
    ratios = sorted(c / h for c, h in zip(charged, holds, strict=True))
    assert basic.tier == "basic" and basic.settled == len(rows) and basic.stopped_at_budget == 1
    assert ratios[0] <= basic.p50 <= basic.p95 <= ratios[-1] == 1.0

    # The ledger report reads the same from the event store alone.
    async def stored() -> AsyncIterator[StoredDomainEvent]:
        for n in app.recorder.select_notifications(start=1, limit=10_000):
            yield StoredDomainEvent(n.id, decode(n))

    report = HoldReport()
    await daily_report(stored(), None, None, report)
    tier = report.tiers["basic"]
    assert tier.settled == len(rows) and tier.stopped_at_budget == 1
    assert sorted(tier.tightness) == ratios


def reads(env: Envelope) -> bool:
    return topic_for(env.type) in HoldOutcomesProjection.topics and HoldOutcomesProjection().wants(
        env
    )


async def test_a_rebuild_gives_the_same_rows(db: asyncpg.Connection) -> None:  # noqa: F811
    app = _app_with_user("u2")
    for i in range(5):
        job = app.submit_job("u2", idempotency_key=f"r{i}", params=JOB, at=T0).job_id
        assert job is not None
        run_to_start(app, job, T0)
        if i % 2:
            app.record_cancelled_run(job, gpu_ms=40, attempt=1, at=T0)
        else:
            app.complete_job(
                job, attempt=1, gpu_ms=90 + i, cuda_ms=None, images=images_for(job, 1), at=T0
            )
    envs = envelopes(app)
    await project(db, envs)
    live = [dict(r) for r in await db.fetch("SELECT * FROM hold_outcomes ORDER BY job_id")]
    await db.execute("TRUNCATE hold_outcomes")
    projection = HoldOutcomesProjection()
    for start in range(0, len(envs), 3):  # batches, as a rebuild sends them
        async with db.transaction():
            await projection.apply_batch(db, [e for e in envs[start : start + 3] if reads(e)])
    rebuilt = [dict(r) for r in await db.fetch("SELECT * FROM hold_outcomes ORDER BY job_id")]
    assert rebuilt == live and len(live) == 5
    assert sum(r["billed"] for r in live) == 5  # cancelled while running: billed
