"""Overspend race on the real PostgreSQL: 16 writers, credit for exactly K jobs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from domain.application import PinkseaApplication
from domain.catalog import ModelFamily
from domain.credits import LotSource
from domain.estimation import estimate_gpu_ms, hold_for_estimate
from domain.jobs import JobParameters
from domain.plans import GpuTier, get_plan
from eventstore.persistence import event_store_env

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, tzinfo=UTC)
TINY = JobParameters(model="tiny-sd", prompt="race", steps=4, width=64, height=64)
THREADS, PER_THREAD, K = 16, 4, 21


def test_sixteen_writers_get_exactly_k_jobs_and_never_overspend(database_url: str) -> None:
    app = PinkseaApplication(env=event_store_env(database_url, pool_size=THREADS))
    user = f"racer-{uuid4()}"
    app.register_user(user, T0)
    # Enough queue room for every attempt, and credit for exactly K holds.
    app.change_plan(
        user,
        to_plan="enterprise",
        actor="test",
        reason="race",
        at=T0,
        custom_terms={
            "credits_per_month": 1,
            "tier": "basic",
            "concurrent_jobs": 100,
            "storage_gb": 1,
        },
    )
    app.adjust_credits(
        user,
        adjustment_id="zero",
        # The trial's credit and the contract's first month (1 credit, granted with the plan).
        amount_mc=-get_plan("trial").credits_per_month_mc - 1000,
        reason="start from nothing",
        actor="test",
        at=T0,
    )
    probe = app.submit_job(user, idempotency_key="probe", params=TINY, at=T0)
    assert probe.rejection == "insufficient_credits"
    hold_mc = hold_for_estimate(
        estimate_gpu_ms(
            ModelFamily.SD15,
            GpuTier.BASIC,
            steps=4,
            width=64,
            height=64,
            batch_size=1,
            model="tiny-sd",
        ),
        GpuTier.BASIC,
    )
    app.grant_credits(
        user,
        grant_id="exactly-k",
        source=LotSource.PURCHASE,
        amount_mc=K * hold_mc,
        valid_from=T0,
        valid_until=None,
        actor="test",
        reason="race",
        at=T0,
    )

    def writer(thread: int) -> list[str]:
        return [
            app.submit_job(user, idempotency_key=f"t{thread}-{i}", params=TINY, at=T0).status
            for i in range(PER_THREAD)
        ]

    with ThreadPoolExecutor(THREADS) as pool:
        statuses = [s for batch in pool.map(writer, range(THREADS)) for s in batch]

    assert statuses.count("accepted") == K
    assert statuses.count("rejected") == THREADS * PER_THREAD - K
    account = app.account(user)
    assert account.available_mc(T0) == 0
    assert account.held_mc == K * hold_mc
    assert all(lot.remaining_mc >= 0 for lot in account.lots.values())
    app.close()
