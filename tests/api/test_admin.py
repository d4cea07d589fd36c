"""Admin actions over HTTP: grants, adjustments, refunds, plan assignment, lookups."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration


def _admin(kit: Kit) -> dict[str, str]:
    return kit.auth("root-admin", admin=True)


async def _signed_up(kit: Kit, user: str) -> None:
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200


async def test_grant_credits_is_idempotent_per_key(kit: Kit, user: str) -> None:
    await _signed_up(kit, user)
    until = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    body = {"user_id": user, "credits": "100.5", "valid_until": until, "reason": "goodwill"}
    headers = {**_admin(kit), "Idempotency-Key": f"grant-{user}"}
    r = await kit.client.post("/v1/admin/grants", json=body, headers=headers)
    assert r.status_code == 201, r.text
    grant = r.json()
    assert grant["amount_mc"] == 100_500 and grant["amount_credits"] == "100.500"
    assert grant["changed"] is True
    again = await kit.client.post("/v1/admin/grants", json=body, headers=headers)
    assert again.status_code == 201 and again.json()["changed"] is False
    conflict = await kit.client.post(
        "/v1/admin/grants", json={**body, "credits": 7}, headers=headers
    )
    assert conflict.status_code == 409 and problem_type(conflict) == "idempotency-conflict"
    position = await kit.project()
    balance = (
        await kit.client.get(
            "/v1/me/balance", headers={**kit.auth(user), "X-Min-Position": str(position)}
        )
    ).json()
    assert balance["available_mc"] == 500_000 + 100_500
    admin_lot = next(lot for lot in balance["lots"] if lot["source"] == "admin")
    assert admin_lot["amount_credits"] == "100.500"


async def test_tester_grant_changes_the_plan(kit: Kit, user: str) -> None:
    await _signed_up(kit, user)
    now = datetime.now(UTC)
    r = await kit.client.post(
        "/v1/admin/grants",
        json={
            "user_id": user,
            "credits": 1000,
            "valid_from": now.isoformat(),
            "valid_until": (now + timedelta(days=14)).isoformat(),
            "reason": "beta tester",
            "plan": "tester",
        },
        headers=_admin(kit),
    )
    assert r.status_code == 201, r.text
    assert r.json()["plan"] == "tester"
    me = (await kit.client.get("/v1/me", headers=kit.auth(user))).json()
    assert me["plan"]["slug"] == "tester"


@pytest.mark.parametrize(
    "change",
    [
        {"credits": 0},
        {"credits": "1.0001"},
        {"credits": -5},
        {"reason": ""},
        {"valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"},
        {"valid_until": "2026-01-01T00:00:00"},
        {"plan": "tester"},  # without valid_until
        {"plan": "pro"},
    ],
)
async def test_bad_grants_are_422(kit: Kit, user: str, change: dict[str, object]) -> None:
    await _signed_up(kit, user)
    body = {"user_id": user, "credits": 10, "reason": "r", **change}
    r = await kit.client.post("/v1/admin/grants", json=body, headers=_admin(kit))
    assert r.status_code == 422, r.text


async def test_grants_to_unknown_users_are_404(kit: Kit) -> None:
    for path, body in [
        ("/v1/admin/grants", {"user_id": "nobody-x", "credits": 1, "reason": "r"}),
        ("/v1/admin/adjustments", {"user_id": "nobody-x", "credits": 1, "reason": "r"}),
    ]:
        r = await kit.client.post(path, json=body, headers=_admin(kit))
        assert r.status_code == 404 and problem_type(r) == "not-found"
    r = await kit.client.put(
        "/v1/admin/users/nobody-x/plan", json={"plan": "pro", "reason": "r"}, headers=_admin(kit)
    )
    assert r.status_code == 404


async def test_adjustments_add_and_debit(kit: Kit, user: str) -> None:
    await _signed_up(kit, user)
    headers = {**_admin(kit), "Idempotency-Key": f"adj-{user}"}
    r = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "-100.25", "reason": "correction"},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["amount_mc"] == -100_250 and r.json()["amount_credits"] == "-100.250"
    again = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "-100.25", "reason": "correction"},
        headers=headers,
    )
    assert again.json()["changed"] is False
    conflict = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "5", "reason": "correction"},
        headers=headers,
    )
    assert conflict.status_code == 409
    zero = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "0", "reason": "x"},
        headers=_admin(kit),
    )
    assert zero.status_code == 422
    too_much = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "-1000", "reason": "x"},
        headers=_admin(kit),
    )
    assert too_much.status_code == 402 and problem_type(too_much) == "insufficient-credits"
    await kit.project()
    balance = (await kit.client.get("/v1/me/balance", headers=kit.auth(user))).json()
    assert balance["available_mc"] == 500_000 - 100_250


async def test_refund_a_job(kit: Kit, user: str) -> None:
    job_id = (await kit.submit(user)).json()["job_id"]
    kit.run_job(job_id, gpu_ms=700)
    path = f"/v1/admin/jobs/{job_id}/refund"
    r = await kit.client.post(path, json={"reason": "bad image"}, headers=_admin(kit))
    assert r.status_code == 202, r.text
    assert r.json()["refunded_mc"] == 700 and r.json()["refunded_credits"] == "0.700"
    again = await kit.client.post(path, json={"reason": "bad image"}, headers=_admin(kit))
    assert again.status_code == 202 and again.json()["changed"] is False
    await kit.project()
    job = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert job["refunded_mc"] == 700
    balance = (await kit.client.get("/v1/me/balance", headers=kit.auth(user))).json()
    assert balance["available_mc"] == 500_000


async def test_a_view_cached_before_the_projection_is_dropped_once_it_applies(
    kit: Kit, user: str
) -> None:
    """A finished job's view read between a refund and its projection would stay cached for a
    day; the route's background task drops it once the jobs projection is past the refund."""
    job_id = (await kit.submit(user)).json()["job_id"]
    kit.run_job(job_id, gpu_ms=700)
    await kit.project()
    path = f"/v1/admin/jobs/{job_id}/refund"
    r = await kit.client.post(path, json={"reason": "bad image"}, headers=_admin(kit))
    stale = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert stale["refunded_mc"] == 0  # read (and cached) before the projection applied it
    forget = asyncio.create_task(
        kit.services.forget_job_view_once_projected(UUID(job_id), r.json()["position"])
    )
    await kit.project()
    await forget
    job = (await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))).json()
    assert job["refunded_mc"] == 700


async def test_refund_errors(kit: Kit, user: str) -> None:
    job_id = (await kit.submit(user)).json()["job_id"]
    await kit.client.post(f"/v1/jobs/{job_id}/cancel", headers=kit.auth(user))
    r = await kit.client.post(
        f"/v1/admin/jobs/{job_id}/refund", json={"reason": "x"}, headers=_admin(kit)
    )
    assert r.status_code == 409 and problem_type(r) == "invalid-transition"
    r = await kit.client.post(
        "/v1/admin/jobs/00000000-0000-0000-0000-000000000000/refund",
        json={"reason": "x"},
        headers=_admin(kit),
    )
    assert r.status_code == 404
    r = await kit.client.post(f"/v1/admin/jobs/{job_id}/refund", json={}, headers=_admin(kit))
    assert r.status_code == 422


async def test_plan_assignment(kit: Kit, user: str) -> None:
    await _signed_up(kit, user)
    path = f"/v1/admin/users/{user}/plan"
    r = await kit.client.put(path, json={"plan": "studio", "reason": "deal"}, headers=_admin(kit))
    assert r.status_code == 200 and r.json()["changed"] is True
    r = await kit.client.put(path, json={"plan": "studio", "reason": "deal"}, headers=_admin(kit))
    assert r.json()["changed"] is False
    r = await kit.client.put(path, json={"plan": "gold", "reason": "x"}, headers=_admin(kit))
    assert r.status_code == 422
    r = await kit.client.put(path, json={"plan": "enterprise", "reason": "x"}, headers=_admin(kit))
    assert r.status_code == 422 and problem_type(r) == "invalid-parameters"
    terms = {"credits_per_month": 1, "tier": "warp", "concurrent_jobs": 1, "storage_gb": 1}
    r = await kit.client.put(
        path,
        json={"plan": "enterprise", "reason": "x", "custom_terms": terms},
        headers=_admin(kit),
    )
    assert r.status_code == 422
    r = await kit.client.put(path, json={"plan": "pro", "reason": "x"}, headers=kit.auth(user))
    assert r.status_code == 403


async def test_user_lookup_and_ledger(kit: Kit, user: str) -> None:
    await kit.submit(user)
    await kit.project()
    r = await kit.client.get(f"/v1/admin/users?query={user[2:10]}", headers=_admin(kit))
    assert r.status_code == 200
    assert [u["user_id"] for u in r.json()["items"]] == [user]
    r = await kit.client.get(f"/v1/admin/users/{user}/ledger", headers=_admin(kit))
    assert r.status_code == 200
    assert [line["kind"] for line in r.json()["items"]] == ["reserve", "grant"]
    r = await kit.client.get("/v1/admin/users/nobody-y/ledger", headers=_admin(kit))
    assert r.status_code == 404
    r = await kit.client.get("/v1/admin/users?query=%25", headers=_admin(kit))
    assert r.status_code == 200  # LIKE wildcards are taken literally
    assert r.json()["items"] == []
