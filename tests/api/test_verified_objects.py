"""The contract every verified object keeps (api/verified_objects.py), for uploads and for
users' models (LoRAs) alike, on the real stack: the presigned POST and the server's check of
what arrived, hostile files rejected and deleted, the read model, the storage quota, the
request key's idempotency, the POST policy's size bound, and tenant isolation. What only one
kind does is tested beside it (tests/api/test_uploads.py, tests/api/test_user_models.py)."""

from __future__ import annotations

import json

import pytest

from tests.api import test_uploads, test_user_models
from tests.api.conftest import Kit, problem_type
from tests.api.verified_objects import POSTED, Kind, exists, storage_used_bytes

pytestmark = pytest.mark.integration

KINDS = (test_uploads.KIND, test_user_models.KIND)
kinds = pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])


@kinds
async def test_request_complete_list_quota_and_delete(kit: Kit, user: str, kind: Kind) -> None:
    await kind.allow(kit, user)
    body = kind.file()
    ticket = await kind.ticket(kit, user)
    object_id = ticket[kind.id_field]
    assert ticket["key"] == kind.key(user, object_id)
    assert ticket["fields"]["key"] == ticket["key"] and "policy" in ticket["fields"]
    early = await kind.complete(kit, user, object_id)  # nothing uploaded yet: records nothing
    assert early.status_code == 409 and problem_type(early) == "invalid-transition"
    assert kind.post(ticket, body).status_code in POSTED
    done = await kind.complete(kit, user, object_id)
    assert done.status_code == 200, done.text
    view = done.json()
    assert (view["status"], view["size_bytes"]) == (kind.accepted, len(body))
    kind.describes(view, body)
    again = await kind.complete(kit, user, object_id)  # the same verdict, nothing new
    assert again.status_code == 200 and again.json()["status"] == kind.accepted

    await kit.project()
    assert await kind.listed(kit, user) == [object_id]
    one = await kind.get(kit, user, object_id)
    assert one.status_code == 200 and one.json()["size_bytes"] == len(body)
    assert await storage_used_bytes(kit, user) == len(body)  # it counts in the storage quota

    gone = await kind.delete(kit, user, object_id)
    assert gone.status_code == 204 and int(gone.headers["X-Position"]) > 0
    assert not exists(kit, ticket["key"])
    await kit.project()
    assert await storage_used_bytes(kit, user) == 0
    assert await kind.listed(kit, user) == []
    for r in (await kind.get(kit, user, object_id), await kind.delete(kit, user, object_id)):
        assert r.status_code == 404 and problem_type(r) == "not-found"


@kinds
async def test_the_completions_position_reads_the_storage_used_fresh(
    kit: Kit, user: str, kind: Kind
) -> None:
    """The completion answers its verdict's position; GET /v1/me with it as X-Min-Position
    waits for every projection its figures come from, the uploads' and models' among them
    (here the relay's checkpoint says the jobs topic, theirs, is not consumed that far yet,
    and the subscriptions view, all GET /v1/me waited for before, has nothing to wait for)."""
    await kind.allow(kit, user)
    await kit.project()
    body = kind.file()
    ticket = await kind.ticket(kit, user)
    assert kind.post(ticket, body).status_code in POSTED
    done = await kind.complete(kit, user, ticket[kind.id_field])
    assert done.status_code == 200, done.text
    position = done.json()["position"]
    again = await kind.complete(kit, user, ticket[kind.id_field])  # records nothing
    assert again.status_code == 200 and again.json()["position"] >= position > 0, again.text
    read = {**kit.auth(user), "X-Min-Position": str(position)}
    jobs_topic = kit.settings.topic("pinksea.jobs.v1")
    pool = kit.services.pool
    await pool.execute(
        "INSERT INTO relay_checkpoints (position, offsets) VALUES ($1, $2)",
        position,
        json.dumps({jobs_topic: {"0": 10**9}}),
    )
    try:
        r = await kit.client.get("/v1/me", headers=read)
    finally:
        await pool.execute("DELETE FROM relay_checkpoints WHERE position = $1", position)
    assert r.status_code == 503 and problem_type(r) == "not-yet-consistent", r.text
    await kit.project()
    r = await kit.client.get("/v1/me", headers=read)
    assert r.status_code == 200 and r.json()["storage_used_bytes"] == len(body), r.text


@pytest.mark.parametrize(
    ("kind", "body", "reason"),
    [
        pytest.param(kind, body, reason, id=f"{kind.name}-{case}")
        for kind in KINDS
        for case, body, reason in kind.hostile
    ],
)
async def test_hostile_files_are_rejected_and_deleted(
    kit: Kit, user: str, kind: Kind, body: bytes, reason: str
) -> None:
    await kind.allow(kit, user)
    ticket = await kind.ticket(kit, user)
    object_id = ticket[kind.id_field]
    assert kind.post(ticket, body).status_code in POSTED
    r = await kind.complete(kit, user, object_id)
    assert r.status_code == 422 and problem_type(r) == "upload-rejected", r.text
    assert reason in r.json()["detail"] and r.json()[kind.id_field] == object_id
    assert not exists(kit, ticket["key"])  # nothing half-kept
    again = await kind.complete(kit, user, object_id)  # the verdict is recorded
    assert again.status_code == 422 and problem_type(again) == "upload-rejected"
    await kit.project()
    view = await kind.get(kit, user, object_id)
    assert view.json()["status"] == "rejected" and view.json()["rejection"]
    assert await storage_used_bytes(kit, user) == 0


@kinds
async def test_a_request_key_finds_its_object_again(kit: Kit, user: str, kind: Kind) -> None:
    await kind.allow(kit, user)
    first = await kind.start(kit, user, **{"Idempotency-Key": "one"})
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = await kind.start(kit, user, **{"Idempotency-Key": "one"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()[kind.id_field] == first.json()[kind.id_field]
    assert again.headers["Location"] == first.headers["Location"]
    assert first.headers["Location"] == f"{kind.path}/{first.json()[kind.id_field]}"
    other = await kit.client.post(
        kind.path, json=kind.other_request, headers={**kit.auth(user), "Idempotency-Key": "one"}
    )
    assert other.status_code == 409 and problem_type(other) == "idempotency-conflict", other.text


@kinds
async def test_the_post_policy_bounds_the_size(kit: Kit, user: str, kind: Kind) -> None:
    await kind.allow(kit, user)
    ticket = await kind.ticket(kit, user)
    # S3 enforces the signed policy (the server checks the size again on completion).
    oversized = kind.post(ticket, b"\x00" * (ticket["size_bytes_max"] + 1))
    assert oversized.status_code == 400 and b"EntityTooLarge" in oversized.content
    assert not exists(kit, ticket["key"])


@kinds
async def test_another_users_object_is_a_404_everywhere(
    kit: Kit, user: str, other: str, kind: Kind
) -> None:
    await kind.allow(kit, user)
    await kind.allow(kit, other)
    view = await kind.uploaded(kit, user)
    await kit.project()
    object_id = view[kind.id_field]
    for r in (
        await kind.get(kit, other, object_id),
        await kind.complete(kit, other, object_id),
        await kind.delete(kit, other, object_id),
        *await kind.used_by(kit, other, object_id),
    ):
        assert r.status_code == 404 and problem_type(r) == "not-found", r.text
        assert user not in r.text
    assert await kind.listed(kit, other) == []
    assert exists(kit, kind.key(user, object_id))  # untouched
