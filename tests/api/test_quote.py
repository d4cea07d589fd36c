"""Quote before you pay: GET /v1/models and POST /v1/jobs/quote, which answer what a
submission would cost and decide, from the submission's own admission, recording nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from domain import ids
from domain.catalog import MODELS
from tests.api.conftest import TINY, Kit, problem_type

pytestmark = pytest.mark.integration


async def quote(kit: Kit, user: str, **params: Any) -> httpx.Response:
    return await kit.client.post("/v1/jobs/quote", json={**TINY, **params}, headers=kit.auth(user))


def account_version(kit: Kit, user: str) -> int:
    return int(kit.app.repository.get(ids.account_id(user)).version)


async def assert_submission_agrees(kit: Kit, user: str, **params: Any) -> dict[str, Any]:
    """Quote ``params``, submit them at once, and check the submission did what was quoted."""
    q = await quote(kit, user, **params)
    assert q.status_code == 200, q.text
    quoted = q.json()
    r = await kit.submit(user, key=uuid.uuid4().hex, **params)
    assert r.status_code == quoted["submit_status"], (quoted, r.text)
    if quoted["allowed"]:
        accepted = r.json()
        assert accepted["hold_mc"] == quoted["hold_mc"] == quoted["max_charge_mc"]
        assert accepted["budget_ms"] == quoted["budget_ms"]
        assert quoted["reason"] is None and quoted["problem_type"] is None
    else:
        assert problem_type(r) == quoted["problem_type"].rsplit("/", 1)[-1]
        assert r.json()["reason"] == quoted["reason"]
        assert r.json()["detail"] == quoted["detail"]
    return quoted


async def test_models_list_the_catalog_with_costs_and_access(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/models", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    models = {m["key"]: m for m in r.json()}
    assert set(models) == set(MODELS)
    tiny = models["tiny-sd"]
    assert tiny["family"] == "sd1.5" and tiny["your_tier"] == "basic"  # trial
    assert tiny["sizes"] == {"min_px": 32, "max_px": 512, "multiple": 8}
    assert tiny["steps"] == {"min": 1, "max": 150, "default": 4}
    assert "euler" in tiny["schedulers"]
    assert [c["tier"] for c in tiny["costs"]] == ["basic", "high_performance", "dedicated"]
    assert tiny["allowed"] is True and tiny["reason"] is None
    flux = models["flux-dev"]
    assert flux["allowed"] is False and flux["reason"] == "model_not_in_plan"
    assert "upgrade" in flux["detail"]
    # A model's cost on the caller's tier is the quote of its default parameters.
    basic = next(c for c in tiny["costs"] if c["tier"] == "basic")
    d = tiny["defaults"]
    params = {k: d[k] for k in ("steps", "width", "height", "batch_size", "guidance_scale")}
    q = (await quote(kit, user, **params)).json()
    assert (q["estimate_ms"], q["hold_mc"]) == (basic["estimate_ms"], basic["hold_mc"])
    assert basic["hold_credits"] == q["hold_credits"]


async def test_models_need_a_sign_in(kit: Kit) -> None:
    assert (await kit.client.get("/v1/models")).status_code == 401


async def test_quote_records_nothing_and_the_submission_holds_the_quote(
    kit: Kit, user: str
) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))  # sign up
    before = account_version(kit, user)
    q = await quote(kit, user)
    assert q.status_code == 200, q.text
    body = q.json()
    assert body["allowed"] is True and body["affordable"] is True
    assert body["submit_status"] == 202 and body["tier"] == "basic"
    assert body["available_mc"] == 500_000  # the trial's credits
    assert body["estimate_ms"] > 0 and body["hold_mc"] > body["estimate_ms"]
    assert body["max_charge_credits"] == body["hold_credits"]
    assert account_version(kit, user) == before  # no hold, no event
    await kit.project()
    jobs = await kit.client.get("/v1/jobs", headers=kit.auth(user))
    assert jobs.json()["items"] == []
    await assert_submission_agrees(kit, user)
    await assert_submission_agrees(kit, user, steps=20, width=256, height=128, batch_size=2)


async def test_quote_with_a_key_stores_no_idempotency_result(kit: Kit, user: str) -> None:
    headers = {**kit.auth(user), "Idempotency-Key": "quoted"}
    q = await kit.client.post("/v1/jobs/quote", json=TINY, headers=headers)
    assert q.status_code == 200
    r = await kit.submit(user, key="quoted", prompt="another prompt")
    assert r.status_code == 202 and r.json()["replayed"] is False


async def test_quote_gives_the_model_not_in_plan_verdict(kit: Kit, user: str) -> None:
    quoted = await assert_submission_agrees(kit, user, model="flux-schnell", width=256, height=256)
    assert quoted["submit_status"] == 403 and quoted["reason"] == "model_not_in_plan"
    assert quoted["affordable"] is True  # the plan, not the balance, says no


async def test_quote_gives_the_insufficient_credits_verdict(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    r = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "-499.999", "reason": "test"},
        headers=kit.auth("root", admin=True),
    )
    assert r.status_code == 201, r.text
    quoted = await assert_submission_agrees(kit, user)
    assert quoted["submit_status"] == 402 and quoted["reason"] == "insufficient_credits"
    assert quoted["affordable"] is False and quoted["available_mc"] == 1


async def test_quote_gives_the_payment_failed_verdict(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    at = datetime.now(UTC)
    kit.app.start_subscription(
        user,
        plan="starter",
        external_id="sub_q",
        period_start=at,
        period_end=at + timedelta(30),
        at=at,
    )
    kit.app.record_payment_failed(user, invoice_id="in_q", at=at)
    quoted = await assert_submission_agrees(kit, user)
    assert quoted["submit_status"] == 402 and quoted["reason"] == "payment_failed"


async def test_quote_gives_the_queue_limit_verdict(kit: Kit, user: str) -> None:
    for i in range(10):  # the trial plan's open-job limit
        assert (await kit.submit(user, key=f"q{i}")).status_code == 202
    quoted = await assert_submission_agrees(kit, user)
    assert quoted["submit_status"] == 429 and quoted["reason"] == "queue_limit"


@pytest.mark.parametrize(
    ("change", "expected"),
    [({"model": "no-such-model"}, "invalid-parameters"), ({"steps": 0}, "invalid-request")],
)
async def test_quote_rejects_bad_parameters_as_the_submission_does(
    kit: Kit, user: str, change: dict[str, Any], expected: str
) -> None:
    q = await quote(kit, user, **change)
    r = await kit.submit(user, **change)
    assert q.status_code == r.status_code == 422
    assert problem_type(q) == problem_type(r) == expected
