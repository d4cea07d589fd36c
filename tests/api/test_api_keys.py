"""API keys: plan gate, shown once, stored hashed, usable, listed, revoked, expired."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration


async def _pro(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    await kit.set_plan(user, "pro")


async def _create(kit: Kit, user: str, **body: object) -> dict[str, object]:
    r = await kit.client.post("/v1/api-keys", json={"name": "ci", **body}, headers=kit.auth(user))
    assert r.status_code == 201, r.text
    return r.json()


async def test_plans_without_api_access_cannot_create_keys(kit: Kit, user: str) -> None:
    r = await kit.client.post("/v1/api-keys", json={"name": "x"}, headers=kit.auth(user))
    assert r.status_code == 403
    assert problem_type(r) == "no-api-access"
    assert "upgrade" in r.json()["detail"].lower()


async def test_create_use_list_revoke(kit: Kit, user: str) -> None:
    await _pro(kit, user)
    created = await _create(kit, user)
    key = str(created["key"])
    assert key.startswith("psk_") and key.startswith(str(created["prefix"]) + "_")
    row = await kit.services.pool.fetchrow(
        "SELECT prefix, hash FROM api_keys WHERE key_id = $1", created["id"]
    )
    assert row["hash"] == hashlib.sha256(key.encode()).hexdigest() and key not in row.values()
    # Usable as a bearer token and as X-API-Key.
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        r = await kit.client.get("/v1/me", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == user and r.json()["auth"] == "api_key"
    r = await kit.client.post("/v1/jobs", json={**_tiny()}, headers={"X-API-Key": key})
    assert r.status_code == 202
    listed = (await kit.client.get("/v1/api-keys", headers=kit.auth(user))).json()["items"]
    assert [k["prefix"] for k in listed] == [created["prefix"]]
    assert listed[0]["last_used_at"] is not None and "key" not in listed[0]
    r = await kit.client.delete(f"/v1/api-keys/{created['id']}", headers=kit.auth(user))
    assert r.status_code == 204
    r = await kit.client.get("/v1/me", headers={"X-API-Key": key})
    assert r.status_code == 401 and problem_type(r) == "unauthorized"
    again = await kit.client.delete(f"/v1/api-keys/{created['id']}", headers=kit.auth(user))
    assert again.status_code == 204
    listed = (await kit.client.get("/v1/api-keys", headers=kit.auth(user))).json()["items"]
    assert listed[0]["revoked_at"] is not None
    # Gone from its own address, as after any DELETE; the list keeps it for the record.
    gone = await kit.client.get(f"/v1/api-keys/{created['id']}", headers=kit.auth(user))
    assert gone.status_code == 404 and problem_type(gone) == "not-found", gone.text
    assert "revoked at" in gone.json()["detail"]


async def test_wrong_secret_with_a_real_prefix_is_401(kit: Kit, user: str) -> None:
    await _pro(kit, user)
    key = str((await _create(kit, user))["key"])
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    r = await kit.client.get("/v1/me", headers={"X-API-Key": forged})
    assert r.status_code == 401


async def test_expired_keys_are_401(kit: Kit, user: str) -> None:
    await _pro(kit, user)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    key = str((await _create(kit, user, expires_at=soon.isoformat()))["key"])
    assert (await kit.client.get("/v1/me", headers={"X-API-Key": key})).status_code == 200
    await asyncio.sleep(1.2)
    assert (await kit.client.get("/v1/me", headers={"X-API-Key": key})).status_code == 401
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    r = await kit.client.post(
        "/v1/api-keys", json={"name": "x", "expires_at": past}, headers=kit.auth(user)
    )
    assert r.status_code == 422


async def test_keys_cannot_manage_keys(kit: Kit, user: str) -> None:
    await _pro(kit, user)
    created = await _create(kit, user)
    headers = {"X-API-Key": str(created["key"])}
    for method, path in [
        ("POST", "/v1/api-keys"),
        ("GET", "/v1/api-keys"),
        ("DELETE", f"/v1/api-keys/{created['id']}"),
    ]:
        r = await kit.client.request(method, path, json={"name": "x"}, headers=headers)
        assert r.status_code == 403, (method, r.text)
        assert problem_type(r) == "forbidden"


async def test_a_replayed_creation_is_a_409_naming_the_key_and_its_location_answers(
    kit: Kit, user: str
) -> None:
    await _pro(kit, user)
    headers = {**kit.auth(user), "Idempotency-Key": "key-1"}
    first = await kit.client.post("/v1/api-keys", json={"name": "a"}, headers=headers)
    assert first.status_code == 201, first.text
    made = first.json()
    assert made["key"].startswith("psk_")
    location = first.headers["location"]
    assert location == f"/v1/api-keys/{made['id']}"
    again = await kit.client.post("/v1/api-keys", json={"name": "a"}, headers=headers)
    # The secret is stored hashed: it is never shown again, and the replay says so.
    assert again.status_code == 409 and problem_type(again) == "idempotency-conflict"
    body = again.json()
    assert (body["key_id"], body["prefix"]) == (made["id"], made["prefix"])
    assert "key" not in body and made["key"] not in again.text
    assert made["id"] in body["detail"] and "cannot be shown again" in body["detail"]
    assert again.headers["location"] == location
    read = await kit.client.get(location, headers=kit.auth(user))
    assert read.status_code == 200, read.text
    assert {k: read.json()[k] for k in ("id", "name", "prefix")} == {
        "id": made["id"],
        "name": "a",
        "prefix": made["prefix"],
    }
    assert "key" not in read.json() and read.json()["revoked_at"] is None
    listed = (await kit.client.get("/v1/api-keys", headers=kit.auth(user))).json()["items"]
    assert [k["id"] for k in listed] == [made["id"]]  # the replay made no second key
    conflict = await kit.client.post("/v1/api-keys", json={"name": "b"}, headers=headers)
    assert conflict.status_code == 409 and problem_type(conflict) == "idempotency-conflict"
    assert "key_id" not in conflict.json()  # a different request: nothing of the first


async def test_reading_a_key_is_the_owners_only(kit: Kit, user: str, other: str) -> None:
    await _pro(kit, user)
    created = await _create(kit, user)
    r = await kit.client.get(f"/v1/api-keys/{created['id']}", headers=kit.auth(other))
    assert r.status_code == 404 and problem_type(r) == "not-found"
    r = await kit.client.get(
        f"/v1/api-keys/{created['id']}", headers={"X-API-Key": str(created["key"])}
    )
    assert r.status_code == 403 and problem_type(r) == "forbidden"  # keys do not manage keys
    r = await kit.client.get("/v1/api-keys/not-a-uuid", headers=kit.auth(user))
    assert r.status_code == 422


async def test_downgrade_disables_keys(kit: Kit, user: str) -> None:
    await _pro(kit, user)
    key = str((await _create(kit, user))["key"])
    await kit.set_plan(user, "starter")
    r = await kit.client.get("/v1/me", headers={"X-API-Key": key})
    assert r.status_code == 403 and problem_type(r) == "no-api-access"


async def test_other_users_keys_are_404(kit: Kit, user: str, other: str) -> None:
    await _pro(kit, user)
    created = await _create(kit, user)
    r = await kit.client.delete(f"/v1/api-keys/{created['id']}", headers=kit.auth(other))
    assert r.status_code == 404
    assert (await kit.client.get("/v1/api-keys", headers=kit.auth(other))).json()["items"] == []
    r = await kit.client.get("/v1/me", headers={"X-API-Key": str(created["key"])})
    assert r.status_code == 200  # untouched


async def test_list_pages_and_limits(kit: Kit, user: str) -> None:
    await _pro(kit, user)
    for i in range(3):
        await _create(kit, user, name=f"k{i}")
    page = (await kit.client.get("/v1/api-keys?limit=2", headers=kit.auth(user))).json()
    assert [k["name"] for k in page["items"]] == ["k2", "k1"]
    rest = (
        await kit.client.get(f"/v1/api-keys?cursor={page['next_cursor']}", headers=kit.auth(user))
    ).json()
    assert [k["name"] for k in rest["items"]] == ["k0"] and rest["next_cursor"] is None
    r = await kit.client.get("/v1/api-keys?cursor=zzz", headers=kit.auth(user))
    assert r.status_code == 422
    for i in range(17):
        await _create(kit, user, name=f"more{i}")
    r = await kit.client.post("/v1/api-keys", json={"name": "21st"}, headers=kit.auth(user))
    assert r.status_code == 409 and problem_type(r) == "invalid-transition"


def _tiny() -> dict[str, object]:
    return {"model": "tiny-sd", "prompt": "k", "steps": 4, "width": 64, "height": 64}
