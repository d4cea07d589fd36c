"""/v1/webhook-endpoints against the real stack: the secret shown once, the SSRF refusals as
problem+json, the cap, per-user isolation, and a job's own webhook checked at submission."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.routers.webhook_endpoints import MAX_ENDPOINTS
from tests.api.conftest import Kit

PUBLIC = "https://93.184.215.14/hook"  # a public address literal: no DNS in the test
BASE = "/v1/webhook-endpoints"


async def _create(kit: Kit, user: str, **body: object) -> dict[str, object]:
    r = await kit.client.post(
        BASE, json={"url": PUBLIC, "enabled_events": ["*"], **body}, headers=kit.auth(user)
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_create_read_update_rotate_delete(kit: Kit, user: str, other: str) -> None:
    created = await _create(kit, user, enabled_events=["job.completed"], description="ci")
    secret, endpoint = str(created["secret"]), str(created["id"])
    assert secret.startswith("whsec_") and created["status"] == "enabled"
    one = (await kit.client.get(f"{BASE}/{endpoint}", headers=kit.auth(user))).json()
    assert "secret" not in one and one["enabled_events"] == ["job.completed"]
    listed = (await kit.client.get(BASE, headers=kit.auth(user))).json()
    assert [e["id"] for e in listed["items"]] == [endpoint] and "secret" not in listed["items"][0]
    r = await kit.client.get(f"{BASE}/{endpoint}", headers=kit.auth(other))
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = await kit.client.patch(
        f"{BASE}/{endpoint}", json={"disabled": True}, headers=kit.auth(user)
    )
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    r = await kit.client.post(f"{BASE}/{endpoint}/rotate-secret", headers=kit.auth(user))
    assert r.status_code == 200 and r.json()["secret"] not in (secret, None)
    deliveries = await kit.client.get(f"{BASE}/{endpoint}/deliveries", headers=kit.auth(user))
    assert deliveries.status_code == 200 and deliveries.json()["items"] == []
    assert (
        await kit.client.delete(f"{BASE}/{endpoint}", headers=kit.auth(user))
    ).status_code == 204
    r = await kit.client.delete(f"{BASE}/{endpoint}", headers=kit.auth(user))
    assert r.status_code == 404


async def test_a_rotation_keeps_the_old_secret_signing_for_the_window_it_chose(
    kit: Kit, user: str
) -> None:
    """A rotation used to cut the receiver off at once: now the old secret lasts a day, or what
    the rotation says (0: not at all; at most a week)."""
    endpoint = str((await _create(kit, user))["id"])
    rotate = f"{BASE}/{endpoint}/rotate-secret"
    r = await kit.client.post(rotate, headers=kit.auth(user))
    assert r.status_code == 200, r.text
    window_s = (
        datetime.fromisoformat(r.json()["previous_secret_expires_at"]) - datetime.now(UTC)
    ).total_seconds()
    assert 23 * 3600 < window_s <= 24 * 3600
    one = (await kit.client.get(f"{BASE}/{endpoint}", headers=kit.auth(user))).json()
    assert one["previous_secret_expires_at"] == r.json()["previous_secret_expires_at"]
    r = await kit.client.post(rotate, json={"expires_in_s": 0}, headers=kit.auth(user))
    assert r.status_code == 200 and r.json()["previous_secret_expires_at"] is None
    r = await kit.client.post(rotate, json={"expires_in_s": 8 * 86400}, headers=kit.auth(user))
    assert r.status_code == 422 and "expires_in_s" in r.text


async def test_a_replayed_creation_returns_the_same_endpoint_and_secret(
    kit: Kit, user: str
) -> None:
    headers = {**kit.auth(user), "Idempotency-Key": "hook-1"}
    body = {"url": PUBLIC, "enabled_events": ["job.failed"]}
    first = await kit.client.post(BASE, json=body, headers=headers)
    again = await kit.client.post(BASE, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["secret"] == first.json()["secret"]
    other = await kit.client.post(BASE, json={**body, "url": PUBLIC + "2"}, headers=headers)
    assert other.status_code == 409


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",  # loopback is not allowed in this API's settings
        "https://localhost/hook",  # a name resolving to loopback
        "https://10.0.0.8/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.1.1/hook",
        "http://93.184.215.14/hook",  # not https
    ],
)
async def test_unsafe_urls_are_422_problems(kit: Kit, user: str, url: str) -> None:
    r = await kit.client.post(
        BASE, json={"url": url, "enabled_events": ["*"]}, headers=kit.auth(user)
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "refused" in r.json()["detail"]
    listed = (await kit.client.get(BASE, headers=kit.auth(user))).json()
    assert listed["items"] == []  # nothing half-written


async def test_unknown_events_and_bad_ids_are_422(kit: Kit, user: str) -> None:
    r = await kit.client.post(
        BASE, json={"url": PUBLIC, "enabled_events": ["job.exploded"]}, headers=kit.auth(user)
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = await kit.client.get(f"{BASE}/not-an-id", headers=kit.auth(user))
    assert r.status_code == 422


async def test_the_cap_per_user_is_a_409(kit: Kit, user: str) -> None:
    for _ in range(MAX_ENDPOINTS):
        await _create(kit, user)
    r = await kit.client.post(
        BASE, json={"url": PUBLIC, "enabled_events": ["*"]}, headers=kit.auth(user)
    )
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"


async def test_a_jobs_own_webhook_is_checked_at_submission(kit: Kit, user: str) -> None:
    r = await kit.submit(user, webhook="https://169.254.169.254/x")
    assert r.status_code == 422 and "refused" in r.json()["detail"]
    r = await kit.submit(user, webhook_events_filter=["job.completed"])  # a filter alone
    assert r.status_code == 422
    secret = await kit.client.get("/v1/webhooks/default/secret", headers=kit.auth(user))
    again = await kit.client.get("/v1/webhooks/default/secret", headers=kit.auth(user))
    assert secret.json()["secret"].startswith("whsec_") and secret.json() == again.json()
