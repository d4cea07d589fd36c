"""The overspend race over real HTTP: 200 concurrent POST /v1/jobs against credit for 20."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from domain.plans import get_plan
from tests.api.conftest import TINY, Kit, api_process

pytestmark = pytest.mark.integration
REQUESTS, AFFORDABLE = 200, 20


async def test_two_hundred_concurrent_submissions_accept_exactly_what_the_credit_covers(
    kit: Kit, user: str
) -> None:
    app, now = kit.app, datetime.now(UTC)
    app.register_user(user, now)
    # Room for every request in the queue; credit for exactly AFFORDABLE holds.
    app.change_plan(
        user,
        to_plan="enterprise",
        actor="t",
        reason="race",
        at=now,
        custom_terms={
            "credits_per_month": 1,
            "tier": "basic",
            "concurrent_jobs": 100,
            "storage_gb": 1,
        },
    )
    # The hold the API will ask for, from its own quote: it may price tiny-sd by the rate
    # learned from the session's settled jobs (read_models/gpu_rates.py), not the table.
    quote = await kit.client.post("/v1/jobs/quote", json=TINY, headers=kit.auth(user))
    assert quote.status_code == 200, quote.text
    hold = quote.json()["hold_mc"]
    trial = get_plan("trial").credits_per_month_mc
    contract = 1000  # the contract's first month (1 credit), granted with the plan
    app.adjust_credits(
        user,
        adjustment_id="race",
        amount_mc=AFFORDABLE * hold - trial - contract,
        reason="exactly twenty holds",
        actor="t",
        at=now,
    )
    settings = kit.settings.model_copy(update={"rate_limit_multiplier": 1000.0})
    with api_process(settings) as url:
        headers = kit.auth(user)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def one(i: int) -> int:
                r = await client.post(
                    "/v1/jobs", json=TINY, headers={**headers, "Idempotency-Key": f"race-{i}"}
                )
                return r.status_code

            codes = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    assert codes.count(202) == AFFORDABLE, sorted(set(codes))
    assert codes.count(402) == REQUESTS - AFFORDABLE
    account = app.account(user)
    assert account.available_mc(datetime.now(UTC)) == 0
    assert account.held_mc == AFFORDABLE * hold
    assert all(lot.remaining_mc >= 0 for lot in account.lots.values())
