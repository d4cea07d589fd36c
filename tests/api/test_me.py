"""The caller's account: profile, balance (and its cache), statement, usage; plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.plans import PLANS
from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration


async def test_plans_are_public(kit: Kit) -> None:
    r = await kit.client.get("/v1/plans")
    assert r.status_code == 200
    plans = {p["slug"]: p for p in r.json()}
    assert set(plans) == set(PLANS)
    assert plans["pro"]["usd_per_month"] == "75.00"
    assert plans["pro"]["credits_per_month_mc"] == 15_000_000
    assert "flux-dev" in plans["pro"]["models"] and "flux-dev" not in plans["starter"]["models"]
    assert plans["enterprise"]["usd_per_month"] is None


async def test_me_before_and_after_projection(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/me", headers=kit.auth(user))
    assert r.status_code == 200
    early = r.json()
    assert early["plan"]["slug"] == "trial" and early["subscription"]["status"] == "trialing"
    assert early["storage_quota_bytes"] == 5 * 1024**3 and early["storage_used_bytes"] == 0
    assert early["plan"]["api_access"] is False
    position = await kit.project()
    r = await kit.client.get("/v1/me", headers={**kit.auth(user), "X-Min-Position": str(position)})
    late = r.json()
    assert late["created_at"] is not None
    assert late["plan"] == early["plan"]


async def test_enterprise_terms_show_in_me(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    terms = {
        "credits_per_month": 99_000,
        "tier": "dedicated",
        "concurrent_jobs": 4,
        "storage_gb": 1000,
    }
    await kit.set_plan(user, "enterprise", custom_terms=terms)
    await kit.project()
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["plan"]["slug"] == "enterprise"
    assert me["plan"]["credits_per_month"] == 99_000 and me["plan"]["concurrent_jobs"] == 4
    assert me["storage_quota_bytes"] == 1000 * 1024**3
    assert me["subscription"]["custom_terms"] == terms


async def test_balance_needs_the_projection_then_shows_lots(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/me/balance", headers=kit.auth(user))
    assert r.status_code == 503 and problem_type(r) == "not-yet-consistent"
    job = (await kit.submit(user)).json()
    position = await kit.project()
    r = await kit.client.get(
        "/v1/me/balance", headers={**kit.auth(user), "X-Min-Position": str(position)}
    )
    assert r.status_code == 200
    b = r.json()
    assert b["held_mc"] == job["hold_mc"]
    assert b["available_mc"] == 500_000 - job["hold_mc"]
    assert b["available_credits"] == f"{(500_000 - job['hold_mc']) / 1000:.3f}"
    assert b["held_credits"] == job["hold_credits"]
    [lot] = b["lots"]
    assert lot["source"] == "trial" and lot["amount_credits"] == "500.000" and lot["spendable"]


async def test_balance_cache_is_dropped_by_commands(kit: Kit, user: str) -> None:
    await kit.submit(user)
    await kit.project()
    first = (await kit.client.get("/v1/me/balance", headers=kit.auth(user))).json()
    assert await kit.services.balance_cache.get(user) == first
    second = await kit.submit(user)
    assert await kit.services.balance_cache.get(user) is None  # the command dropped it
    await kit.project()
    fresh = (
        await kit.client.get(
            "/v1/me/balance",
            headers={**kit.auth(user), "X-Min-Position": str(second.json()["position"])},
        )
    ).json()
    assert fresh["held_mc"] == first["held_mc"] + second.json()["hold_mc"]


async def test_ledger_pages_and_isolation(kit: Kit, user: str, other: str) -> None:
    for i in range(3):
        await kit.submit(user, key=f"led{i}")
    await kit.submit(other)
    await kit.project()
    r = await kit.client.get("/v1/me/ledger?limit=2", headers=kit.auth(user))
    assert r.status_code == 200
    page = r.json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = (
        await kit.client.get(
            f"/v1/me/ledger?limit=100&cursor={page['next_cursor']}", headers=kit.auth(user)
        )
    ).json()
    lines = page["items"] + rest["items"]
    assert [line["kind"] for line in lines] == ["reserve", "reserve", "reserve", "grant"]
    grant = lines[-1]
    assert grant["amount_mc"] == 500_000 and grant["amount_credits"] == "500.000"
    assert all(line["job_id"] is None or line["kind"] == "reserve" for line in lines)
    theirs = (await kit.client.get("/v1/me/ledger", headers=kit.auth(other))).json()["items"]
    assert {line["event_id"] for line in theirs}.isdisjoint({line["event_id"] for line in lines})
    r = await kit.client.get("/v1/me/ledger?cursor=abc", headers=kit.auth(user))
    assert r.status_code == 422
    # A cursor of another list is refused too.
    jobs = (await kit.client.get("/v1/jobs?limit=1", headers=kit.auth(user))).json()
    r = await kit.client.get(f"/v1/me/ledger?cursor={jobs['next_cursor']}", headers=kit.auth(user))
    assert r.status_code == 422


async def test_usage_by_day_and_model(kit: Kit, user: str) -> None:
    for i, ms in enumerate((600, 400)):  # within the hold's budget
        job_id = (await kit.submit(user, key=f"use{i}")).json()["job_id"]
        kit.run_job(job_id, gpu_ms=ms)
    await kit.project()
    r = await kit.client.get("/v1/me/usage", headers=kit.auth(user))
    assert r.status_code == 200
    usage = r.json()
    assert usage["jobs"] == 2 and usage["gpu_ms"] == 1000
    assert usage["charged_mc"] == 1000 and usage["charged_credits"] == "1.000"
    assert usage["buckets"][0]["key"] == datetime.now(UTC).strftime("%Y-%m-%d")
    r = await kit.client.get("/v1/me/usage?group_by=model", headers=kit.auth(user))
    assert [b["key"] for b in r.json()["buckets"]] == ["tiny-sd"]
    start = datetime.now(UTC) - timedelta(days=400)
    r = await kit.client.get(
        "/v1/me/usage",
        params={"from": start.isoformat(), "to": (start + timedelta(days=1)).isoformat()},
        headers=kit.auth(user),
    )
    assert r.status_code == 200 and r.json()["jobs"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "week"},
        {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2026-01-01T00:00:00"},
        {"from": "0001-01-01T00:00:00Z"},
        {"to": "yesterday"},
    ],
)
async def test_bad_usage_queries_are_422(kit: Kit, user: str, params: dict[str, str]) -> None:
    r = await kit.client.get("/v1/me/usage", params=params, headers=kit.auth(user))
    assert r.status_code == 422, r.text
    assert problem_type(r) == "invalid-request"


async def test_me_shows_the_low_balance_warning(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    position = await kit.project()
    r = await kit.client.get("/v1/me", headers={**kit.auth(user), "X-Min-Position": str(position)})
    assert r.json()["low_balance"] is False
    trial = PLANS["trial"].credits_per_month_mc
    kit.app.adjust_credits(
        user,
        adjustment_id="spend-down",
        amount_mc=-(trial - 1),
        reason="t",
        actor="t",
        at=datetime.now(UTC),
    )
    position = await kit.project()
    r = await kit.client.get("/v1/me", headers={**kit.auth(user), "X-Min-Position": str(position)})
    assert r.json()["low_balance"] is True
