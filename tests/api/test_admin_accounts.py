"""The operator's admin gaps over HTTP, on the real stack: deactivating and reactivating an
account (tokens and API keys refused at once, queued jobs cancelled with their holds voided),
and the expiry loop's two plan rules driven with an explicit clock: a tester plan reverting at
the end of its window, and an enterprise contract's monthly credits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from domain.periods import add_months
from tests.api.conftest import TINY, Kit, problem_type
from workflows.expiry import end_tester_plans, start_contract_periods, tick

pytestmark = pytest.mark.integration
TERMS: dict[str, Any] = {
    "credits_per_month": 3_000,
    "tier": "dedicated",
    "concurrent_jobs": 2,
    "storage_gb": 5,
}


def _admin(kit: Kit) -> dict[str, str]:
    return kit.auth("root-admin", admin=True)


async def _status(kit: Kit, user: str, action: str, reason: str = "abuse") -> Any:
    return await kit.client.post(
        f"/v1/admin/users/{user}/{action}", json={"reason": reason}, headers=_admin(kit)
    )


async def _api_key(kit: Kit, user: str) -> str:
    await kit.set_plan(user, "pro")  # a plan with API access
    r = await kit.client.post("/v1/api-keys", json={"name": "ci"}, headers=kit.auth(user))
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def test_deactivation_stops_tokens_and_keys_at_once_and_cancels_queued_jobs(
    kit: Kit, user: str
) -> None:
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200
    key = await _api_key(kit, user)
    queued = (await kit.submit(user, "queued")).json()
    running = (await kit.submit(user, "running")).json()
    assert queued["status"] == running["status"] == "accepted"
    kit.run_job(running["job_id"], complete=False)  # dispatched and started on a worker
    now = datetime.now(UTC)
    before = kit.app.account(user).available_mc(now)

    r = await _status(kit, user, "deactivate")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["deactivated"], body["changed"]) == (True, True)
    assert body["cancelled_jobs"] == [queued["job_id"]]
    assert body["stopping_jobs"] == [running["job_id"]]

    # At once, with no projection run: every token and key of the user is refused.
    for headers in (kit.auth(user), {"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        refused = await kit.client.get("/v1/me", headers=headers)
        assert refused.status_code == 403, refused.text
        assert problem_type(refused) == "account-deactivated"
    submitted = await kit.submit(user, "after")
    assert submitted.status_code == 403 and problem_type(submitted) == "account-deactivated"

    # The queued job's hold is voided: its credit is back; the running one is asked to stop.
    account = kit.app.account(user)
    assert account.available_mc(now) == before + queued["hold_mc"]
    assert account.held_mc == running["hold_mc"]
    assert kit.app.job(UUID(queued["job_id"])).status == "cancelled"
    assert kit.app.job(UUID(running["job_id"])).cancel_requested
    position = await kit.project()
    ledger = await kit.client.get(
        f"/v1/admin/users/{user}/ledger",
        headers={**_admin(kit), "X-Min-Position": str(position)},
    )
    lines = [(line["kind"], line["job_id"]) for line in ledger.json()["items"]]
    assert ("release", queued["job_id"]) in lines

    again = await _status(kit, user, "deactivate")
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["cancelled_jobs"] == []

    back = await _status(kit, user, "reactivate", "appeal upheld")
    assert back.status_code == 200 and back.json()["deactivated"] is False
    assert back.json()["changed"] is True
    for headers in (kit.auth(user), {"X-API-Key": key}):
        assert (await kit.client.get("/v1/me", headers=headers)).status_code == 200
    assert (await kit.submit(user, "back")).status_code == 202
    assert kit.app.job(UUID(queued["job_id"])).status == "cancelled"  # cancelled stays so
    repeat = await _status(kit, user, "reactivate", "appeal upheld")
    assert repeat.status_code == 200 and repeat.json()["changed"] is False


async def test_flags_lost_from_redis_are_rebuilt_from_the_read_model(kit: Kit, user: str) -> None:
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200
    assert (await _status(kit, user, "deactivate")).status_code == 200
    await kit.project()
    flags = kit.services.deactivations
    # Redis loses everything about deactivations (a flush, a failover without persistence).
    await kit.services.redis.delete(flags.marker, flags.key(user))
    refused = await kit.client.get("/v1/me", headers=kit.auth(user))
    assert refused.status_code == 403 and problem_type(refused) == "account-deactivated"
    assert await kit.services.redis.exists(flags.marker, flags.key(user)) == 2
    # A rebuild from a read model older than a command's flag cannot undo the command.
    assert (await _status(kit, user, "reactivate", "appeal")).status_code == 200
    await kit.services.redis.delete(flags.marker)
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200


async def test_without_redis_the_event_store_decides(kit: Kit, user: str) -> None:
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200
    assert (await _status(kit, user, "deactivate")).status_code == 200
    flags = kit.services.deactivations
    await kit.services.redis.delete(flags.key(user))  # a flag Redis never got
    flags.breaker.trip()  # as after a Redis failure: Redis is not asked for a few seconds
    try:
        refused = await kit.client.get("/v1/me", headers=kit.auth(user))
        assert refused.status_code == 403 and problem_type(refused) == "account-deactivated"
    finally:
        flags.breaker.open_until = 0.0
    await _status(kit, user, "reactivate", "appeal")


async def test_deactivation_errors(kit: Kit, user: str) -> None:
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200
    r = await kit.client.post(
        f"/v1/admin/users/{user}/deactivate", json={"reason": "x"}, headers=kit.auth("mallory")
    )
    assert r.status_code == 403 and problem_type(r) == "admin-required"
    missing = await _status(kit, "nobody-at-all", "deactivate")
    assert missing.status_code == 404 and problem_type(missing) == "not-found"
    own = await _status(kit, "root-admin", "deactivate")
    assert own.status_code == 409 and problem_type(own) == "invalid-transition"
    for body in ({"reason": ""}, {}, {"reason": "x", "extra": 1}):
        bad = await kit.client.post(
            f"/v1/admin/users/{user}/deactivate", json=body, headers=_admin(kit)
        )
        assert bad.status_code == 422 and problem_type(bad) == "invalid-request"
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200


async def test_a_tester_plan_reverts_when_the_expiry_loop_reaches_its_end(
    kit: Kit, user: str
) -> None:
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200
    now = datetime.now(UTC)
    until = now + timedelta(hours=1)
    r = await kit.client.post(
        "/v1/admin/grants",
        json={
            "user_id": user,
            "credits": 100,
            "valid_until": until.isoformat(),
            "reason": "beta",
            "plan": "tester",
        },
        headers=_admin(kit),
    )
    assert r.status_code == 201, r.text
    await kit.project()
    pool, app = kit.services.pool, kit.app
    await end_tester_plans(pool, app, until - timedelta(seconds=1))  # not yet
    assert app.subscription(user).plan_slug == "tester"
    assert await end_tester_plans(pool, app, until) >= 1
    sub = app.subscription(user)
    assert (sub.plan_slug, sub.status) == ("trial", "trialing")
    position = await kit.project()
    me = await kit.client.get("/v1/me", headers={**kit.auth(user), "X-Min-Position": str(position)})
    assert me.json()["plan"]["slug"] == "trial"
    # Exactly once: the user is no longer due, and a repeat records nothing.
    version = sub.version
    await end_tester_plans(pool, app, until + timedelta(days=1))
    assert app.end_tester_plan(user, until + timedelta(days=2)).changed is False
    assert app.subscription(user).version == version


async def test_an_enterprise_contract_grants_each_period_once_through_the_loop(
    kit: Kit, user: str
) -> None:
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200
    await kit.set_plan(user, "enterprise", custom_terms=TERMS)
    anchor = kit.app.subscription(user).contract_since
    assert anchor is not None

    async def contract_lots() -> list[tuple[str, int]]:
        position = await kit.project()
        balance = await kit.client.get(
            "/v1/me/balance", headers={**kit.auth(user), "X-Min-Position": str(position)}
        )
        lots = [lot for lot in balance.json()["lots"] if lot["source"] == "contract"]
        return sorted((lot["valid_from"], lot["amount_mc"]) for lot in lots)

    month = TERMS["credits_per_month"] * 1000
    first = await contract_lots()
    assert [mc for _, mc in first] == [month]  # the first period at once, with the plan
    pool, app = kit.services.pool, kit.app
    await start_contract_periods(pool, app, anchor + timedelta(days=10))
    assert await contract_lots() == first
    next_period = add_months(anchor, 1)
    assert await start_contract_periods(pool, app, next_period) >= 1
    lots = await contract_lots()
    assert len(lots) == 2 and lots[1][1] == month
    assert datetime.fromisoformat(lots[1][0]) == next_period
    # A restart repeating the round (the whole round, as `pinksea expire` runs it) grants
    # nothing more.
    changes = await tick(pool, app, next_period + timedelta(hours=1))
    assert set(changes) == {"contract_periods", "tester_plans_ended", "accounts_expired"}
    assert await contract_lots() == lots


async def test_a_deactivated_job_submission_body_is_never_recorded(kit: Kit, user: str) -> None:
    assert (await kit.client.get("/v1/me", headers=kit.auth(user))).status_code == 200
    assert (await _status(kit, user, "deactivate")).status_code == 200
    held = kit.app.account(user).held_mc
    r = await kit.client.post(
        "/v1/jobs", json={**TINY, "steps": 0}, headers={**kit.auth(user), "Idempotency-Key": "x"}
    )
    assert r.status_code == 403  # refused before the body is even looked at
    assert kit.app.account(user).held_mc == held
    await _status(kit, user, "reactivate", "appeal")
