"""Jobs over HTTP: submission and every rejection, idempotency, reading back, cancelling."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from domain.application import PinkseaApplication
from infra import redis_keys
from tests.api.conftest import TINY, Kit, problem_type

pytestmark = pytest.mark.integration


async def test_submit_accepts_and_holds_credits(kit: Kit, user: str) -> None:
    r = await kit.submit(user, key="k1")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "accepted"
    assert body["hold_mc"] > 0 and body["budget_ms"] > 0
    whole, _, milli = body["hold_credits"].partition(".")
    assert len(milli) == 3 and int(whole) * 1000 + int(milli) == body["hold_mc"]
    assert body["replayed"] is False and body["position"] > 0
    assert r.headers["location"] == f"/v1/jobs/{body['job_id']}"
    assert "ratelimit-limit" in r.headers and "ratelimit-remaining" in r.headers


async def test_same_key_same_body_gives_the_first_answer(kit: Kit, user: str) -> None:
    first = await kit.submit(user, key="same")
    again = await kit.submit(user, key="same")
    assert again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["replayed"] is True
    assert again.headers["idempotent-replayed"] == "true"


async def test_same_key_other_body_is_409(kit: Kit, user: str) -> None:
    await kit.submit(user, key="dup")
    r = await kit.submit(user, key="dup", prompt="something else")
    assert r.status_code == 409
    assert problem_type(r) == "idempotency-conflict"


async def test_keys_are_per_user(kit: Kit, user: str, other: str) -> None:
    a = await kit.submit(user, key="shared")
    b = await kit.submit(other, key="shared", prompt="different")
    assert a.status_code == b.status_code == 202
    assert a.json()["job_id"] != b.json()["job_id"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": "no-such-model"}, "invalid-parameters"),
        ({"width": 65}, "invalid-parameters"),
        ({"prompt": "   "}, "invalid-parameters"),
        ({"steps": 0}, "invalid-request"),
        ({"batch_size": 9}, "invalid-request"),
        ({"prompt": "x" * 2001}, "invalid-request"),
        ({"scheduler": "magic"}, "invalid-request"),
        ({"seed": -1}, "invalid-request"),
        ({"unexpected": 1}, "invalid-request"),
        ({"steps": "four"}, "invalid-request"),
    ],
)
async def test_invalid_parameters_are_422(
    kit: Kit, user: str, change: dict[str, object], expected: str
) -> None:
    r = await kit.submit(user, **change)  # type: ignore[arg-type]
    assert r.status_code == 422, r.text
    assert problem_type(r) == expected
    if expected == "invalid-request":
        assert r.json()["errors"]


async def test_invalid_idempotency_key_is_422(kit: Kit, user: str) -> None:
    r = await kit.client.post(
        "/v1/jobs", json=TINY, headers={**kit.auth(user), "Idempotency-Key": "x" * 201}
    )
    assert r.status_code == 422


async def test_not_json_is_400(kit: Kit, user: str) -> None:
    r = await kit.client.post(
        "/v1/jobs",
        content=b"{not json",
        headers={**kit.auth(user), "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert problem_type(r) == "bad-request"


async def test_model_not_in_plan_is_403(kit: Kit, user: str) -> None:
    r = await kit.submit(user, model="flux-schnell", width=256, height=256)
    assert r.status_code == 403
    assert problem_type(r) == "model-not-in-plan"
    body = r.json()
    assert body["reason"] == "model_not_in_plan" and "job_id" not in body
    assert "upgrade" in body["detail"]
    assert "location" not in r.headers  # refused: there is no job to point at


async def test_insufficient_credits_is_402(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))  # sign up: 500 trial credits
    r = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "-499.999", "reason": "test"},
        headers=kit.auth("root", admin=True),
    )
    assert r.status_code == 201, r.text
    r = await kit.submit(user)
    assert r.status_code == 402
    assert problem_type(r) == "insufficient-credits"
    again = await kit.submit(user, key=None)
    assert again.status_code == 402


async def test_a_rejected_submission_retried_with_its_key_after_a_top_up_is_accepted(
    kit: Kit, user: str
) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))  # sign up: 500 trial credits
    drained = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "-499.999", "reason": "test"},
        headers=kit.auth("root", admin=True),
    )
    assert drained.status_code == 201, drained.text
    refused = await kit.submit(user, key="retry-me")
    assert refused.status_code == 402 and problem_type(refused) == "insufficient-credits"
    assert "location" not in refused.headers and "job_id" not in refused.json()
    await kit.project()
    listed = await kit.client.get("/v1/jobs", headers=kit.auth(user))
    assert listed.json()["items"] == []  # a rejection lists no job
    topped = await kit.client.post(
        "/v1/admin/adjustments",
        json={"user_id": user, "credits": "100", "reason": "top-up"},
        headers=kit.auth("root", admin=True),
    )
    assert topped.status_code == 201, topped.text
    accepted = await kit.submit(user, key="retry-me")
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["status"] == "accepted" and job["replayed"] is False
    assert accepted.headers["location"] == f"/v1/jobs/{job['job_id']}"
    assert "idempotent-replayed" not in accepted.headers
    # From now on the key's answer is this job.
    replay = await kit.submit(user, key="retry-me")
    assert replay.status_code == 202 and replay.json()["job_id"] == job["job_id"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["location"] == f"/v1/jobs/{job['job_id']}"
    await kit.project()
    listed = await kit.client.get("/v1/jobs", headers=kit.auth(user))
    assert [j["job_id"] for j in listed.json()["items"]] == [job["job_id"]]


async def test_a_queue_limit_rejection_is_decided_again_once_the_queue_drained(
    kit: Kit, user: str
) -> None:
    accepted = [(await kit.submit(user, key=f"d{i}")).json()["job_id"] for i in range(10)]
    full = await kit.submit(user, key="waiting")
    assert full.status_code == 429 and problem_type(full) == "queue-limit"
    cancelled = await kit.client.post(f"/v1/jobs/{accepted[0]}/cancel", headers=kit.auth(user))
    assert cancelled.status_code == 202, cancelled.text
    again = await kit.submit(user, key="waiting")
    assert again.status_code == 202, again.text
    assert "idempotent-replayed" not in again.headers


async def test_queue_limit_is_429(kit: Kit, user: str) -> None:
    for i in range(10):  # the trial plan's open-job limit
        assert (await kit.submit(user, key=f"q{i}")).status_code == 202
    r = await kit.submit(user, key="q10")
    assert r.status_code == 429
    assert problem_type(r) == "queue-limit"


async def test_storage_quota_is_403(kit: Kit, user: str) -> None:
    job = (await kit.submit(user, key="big")).json()
    image = {
        "name": f"{job['job_id']}-0",
        "key": f"users/{user}/images/{job['job_id']}-0.png",
        "thumbnail_key": f"users/{user}/images/{job['job_id']}-0.webp",
        "size_bytes": 6 * 1024**3,  # more than the trial's 5 GB
        "width": 64,
        "height": 64,
    }
    kit.run_job(job["job_id"], images=[image])  # type: ignore[list-item]
    await kit.project()
    kit.services.storage.drop(user)  # the storage sum is cached for a few seconds
    r = await kit.submit(user, key="after")
    assert r.status_code == 403
    assert problem_type(r) == "storage-quota"


async def test_payment_failed_is_402(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    at = datetime.now(UTC)
    app: PinkseaApplication = kit.app
    app.start_subscription(
        user,
        plan="starter",
        external_id="sub_1",
        period_start=at,
        period_end=at + timedelta(30),
        at=at,
    )
    app.record_payment_failed(user, invoice_id="in_1", at=at)
    r = await kit.submit(user)
    assert r.status_code == 402
    assert problem_type(r) == "payment-failed"


async def test_rate_limit_is_429_with_headers(kit: Kit, user: str) -> None:
    limiter = kit.services.rate_limiter
    saved = limiter.multiplier
    limiter.multiplier = 0.1  # trial: 2 submissions a minute
    try:
        codes = [(await kit.submit(user, key=f"r{i}")) for i in range(3)]
    finally:
        limiter.multiplier = saved
    assert [r.status_code for r in codes] == [202, 202, 429]
    limited = codes[-1]
    assert problem_type(limited) == "rate-limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-limit"] == "2"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert codes[0].headers["ratelimit-remaining"] == "1"


async def test_list_and_get_jobs(kit: Kit, user: str) -> None:
    ids = [(await kit.submit(user, key=f"l{i}")).json()["job_id"] for i in range(3)]
    await kit.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=kit.auth(user))
    await kit.project()
    r = await kit.client.get("/v1/jobs?limit=2", headers=kit.auth(user))
    assert r.status_code == 200
    page = r.json()
    assert [j["job_id"] for j in page["items"]] == [ids[2], ids[1]]
    r = await kit.client.get(
        f"/v1/jobs?limit=2&cursor={page['next_cursor']}", headers=kit.auth(user)
    )
    assert [j["job_id"] for j in r.json()["items"]] == [ids[0]]
    assert r.json()["next_cursor"] is None
    r = await kit.client.get("/v1/jobs?status=cancelled", headers=kit.auth(user))
    assert [j["job_id"] for j in r.json()["items"]] == [ids[0]]
    r = await kit.client.get(f"/v1/jobs/{ids[1]}", headers=kit.auth(user))
    assert r.status_code == 200
    job = r.json()
    assert job["status"] == "accepted" and job["prompt"] == TINY["prompt"]
    assert job["hold_credits"] and job["charged_mc"] == 0


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "status=bogus", "cursor=bm9wZQ", "cursor=%%%"]
)
async def test_bad_list_queries_are_422(kit: Kit, user: str, query: str) -> None:
    r = await kit.client.get(f"/v1/jobs?{query}", headers=kit.auth(user))
    assert r.status_code == 422, r.text
    assert problem_type(r) == "invalid-request"


async def test_other_users_jobs_are_404(kit: Kit, user: str, other: str) -> None:
    job_id = (await kit.submit(user)).json()["job_id"]
    await kit.project()
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
    ]:
        r = await kit.client.request(method, path, headers=kit.auth(other))
        assert r.status_code == 404, (method, path, r.text)
        assert problem_type(r) == "not-found"
    r = await kit.client.get("/v1/jobs", headers=kit.auth(other))
    assert job_id not in {j["job_id"] for j in r.json()["items"]}
    assert (
        await kit.client.get(f"/v1/jobs/{uuid.uuid4()}", headers=kit.auth(user))
    ).status_code == 404
    assert (await kit.client.get("/v1/jobs/not-a-uuid", headers=kit.auth(user))).status_code == 422
    r = await kit.client.post("/v1/jobs/not-a-uuid/cancel", headers=kit.auth(user))
    assert r.status_code == 422


async def test_read_your_writes_with_x_min_position(kit: Kit, user: str) -> None:
    body = (await kit.submit(user)).json()
    headers = {**kit.auth(user), "X-Min-Position": str(body["position"])}
    r = await kit.client.get(f"/v1/jobs/{body['job_id']}", headers=headers)
    assert r.status_code == 503  # not projected (in time)
    assert problem_type(r) == "not-yet-consistent"
    assert r.headers["retry-after"] == "1"
    headers["X-Min-Position"] = str(body["position"] + 10_000)
    r = await kit.client.get(f"/v1/jobs/{body['job_id']}", headers=headers)
    assert r.status_code == 422  # no command ever returned that position
    await kit.project()
    headers["X-Min-Position"] = str(body["position"])
    r = await kit.client.get(f"/v1/jobs/{body['job_id']}", headers=headers)
    assert r.status_code == 200
    assert r.json()["status"] == "accepted"
    for wrong in ("-1", "12a", "9" * 19, "1" * 20):  # digits only, at most 2**63 - 1
        bad = {**kit.auth(user), "X-Min-Position": wrong}
        assert (await kit.client.get("/v1/jobs", headers=bad)).status_code == 422, wrong


async def test_cancel_before_start_releases_the_hold(kit: Kit, user: str) -> None:
    body = (await kit.submit(user)).json()
    r = await kit.client.post(f"/v1/jobs/{body['job_id']}/cancel", headers=kit.auth(user))
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "cancelled"
    again = await kit.client.post(f"/v1/jobs/{body['job_id']}/cancel", headers=kit.auth(user))
    assert again.status_code == 202 and again.json()["status"] == "cancelled"
    await kit.project()
    balance = (await kit.client.get("/v1/me/balance", headers=kit.auth(user))).json()
    assert balance["held_mc"] == 0 and balance["available_mc"] == 500_000


async def test_cancel_running_job_sets_the_worker_flag(kit: Kit, user: str) -> None:
    job_id = (await kit.submit(user)).json()["job_id"]
    kit.run_job(job_id, complete=False)
    r = await kit.client.post(f"/v1/jobs/{job_id}/cancel", headers=kit.auth(user))
    assert r.status_code == 202
    assert r.json() | {"position": 0} == {
        "job_id": job_id,
        "status": "running",
        "cancel_requested": True,
        "position": 0,
    }
    flag = redis_keys.cancel_flag(kit.settings.redis_key_prefix, job_id)
    assert await kit.services.redis.get(flag) == b"1"


async def test_cancel_finished_job_is_409(kit: Kit, user: str) -> None:
    job_id = (await kit.submit(user)).json()["job_id"]
    kit.run_job(job_id)
    r = await kit.client.post(f"/v1/jobs/{job_id}/cancel", headers=kit.auth(user))
    assert r.status_code == 409
    assert problem_type(r) == "invalid-transition"


async def test_finished_jobs_are_cached(kit: Kit, user: str) -> None:
    job_id = (await kit.submit(user)).json()["job_id"]
    kit.run_job(job_id, gpu_ms=321)
    await kit.project()
    first = await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))
    assert first.json()["status"] == "completed" and first.json()["charged_mc"] == 321
    cached = await kit.services.job_cache.get(job_id)
    assert cached is not None and cached["user_id"] == user
    second = await kit.client.get(f"/v1/jobs/{job_id}", headers=kit.auth(user))
    assert second.json() == first.json()
