"""Uploads in the image gallery on the real stack (issue 15): a completed upload is one of its
user's images (origin external, category user, named by its upload id), found by the filters,
readable, flagged (starred, intermediate: the upload's events), filed on boards and deletable
through /v1/images and /v1/boards, counted once in the storage quota, never another tenant's;
remixing one is a clear conflict; a replay keeps the rows and `ledger verify` compares them."""

from __future__ import annotations

import asyncio
import io
import uuid

import asyncpg
import httpx
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from domain.uploads import ImageFacts, UploadPurpose
from infra.settings import Settings
from tests.api.conftest import Kit, problem_type
from tests.api.test_image_flags import _replay_jobs, verify_catches
from tests.api.test_images import _job_with_images
from tests.audit.test_verify_and_export import project_everything, run_verify
from tests.integration.streaming_kit import T0, fresh_database, new_app

pytestmark = pytest.mark.integration
MASK = UploadPurpose.MASK


def _png(side: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (30, 160, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _upload(kit: Kit, user: str, body: bytes, **request: str) -> httpx.Response:
    """Request a presigned POST (``request``: more of its body), send ``body`` to S3 as a
    browser would, complete it."""
    r = await kit.client.post(
        "/v1/uploads", json={"content_type": "image/png", **request}, headers=kit.auth(user)
    )
    assert r.status_code == 201, r.text
    ticket = r.json()
    files = {"file": ("image", body, "image/png")}
    sent = httpx.post(ticket["url"], data=ticket["fields"], files=files, timeout=30)
    assert sent.status_code in (200, 201, 204), sent.text
    return await kit.client.post(
        f"/v1/uploads/{ticket['upload_id']}/complete", headers=kit.auth(user)
    )


async def _names(kit: Kit, user: str, query: str = "") -> list[str]:
    r = await kit.client.get(f"/v1/images{query}", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    return [i["name"] for i in r.json()["items"]]


async def _storage_used(kit: Kit, user: str) -> int:
    me = await kit.client.get("/v1/me", headers=kit.auth(user))
    assert me.status_code == 200, me.text
    return int(me.json()["storage_used_bytes"])


def _exists(kit: Kit, key: str) -> bool:
    try:
        kit.services.s3.head_object(Bucket=kit.settings.s3_bucket, Key=key)
    except ClientError:
        return False
    return True


async def test_a_completed_upload_is_an_external_user_image_of_its_owner_only(
    kit: Kit, user: str, other: str
) -> None:
    _, [made] = await _job_with_images(kit, user, count=1)
    png = _png()
    done = await _upload(kit, user, png)
    assert done.status_code == 200, done.text
    upload = done.json()
    name = upload["upload_id"]
    refused = await _upload(kit, user, b"not an image at all")  # rejected: never an image
    assert refused.status_code == 422, refused.text
    await kit.project()

    assert await _names(kit, user) == [name, made["name"]]  # newest first
    for query in ("?origin=external", "?category=user", "?origin=external&category=user"):
        assert await _names(kit, user, query) == [name], query
    assert await _names(kit, user, "?origin=internal") == [made["name"]]
    assert await _names(kit, user, "?category=general") == [made["name"]]
    assert await _names(kit, user, "?category=mask") == []
    assert await _names(kit, user, "?starred=false&origin=external") == [name]

    r = await kit.client.get(f"/v1/images/{name}", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    view = r.json()
    assert (view["image_category"], view["image_origin"]) == ("user", "external")
    assert (view["job_id"], view["upload_id"], view["metadata"]) == (None, name, None)
    assert (view["width"], view["height"], view["size_bytes"]) == (48, 48, len(png))
    assert (view["starred"], view["is_intermediate"]) == (False, False)
    assert httpx.get(view["url"]).content == png  # signed for its own object
    assert httpx.get(view["thumbnail_url"]).content == png  # it has no thumbnail but itself
    signed = {"url", "thumbnail_url", "urls_expire_at"}  # signed anew at each read
    listed = (await kit.client.get("/v1/images", headers=kit.auth(user))).json()["items"][0]
    assert {k: v for k, v in listed.items() if k not in signed} == {
        k: v for k, v in view.items() if k not in signed
    }
    # Counted once in the quota: the upload, and the job's image.
    assert await _storage_used(kit, user) == len(png) + made["size_bytes"]

    # Another tenant: not listed, not readable, not deletable, not remixable.
    assert await _names(kit, other) == []
    assert await _names(kit, other, "?origin=external") == []
    for method, path in (
        ("GET", f"/v1/images/{name}"),
        ("DELETE", f"/v1/images/{name}"),
        ("POST", f"/v1/images/{name}/remix"),
        ("PATCH", f"/v1/images/{name}"),
    ):
        body = {"starred": True} if method == "PATCH" else None
        r = await kit.client.request(method, path, json=body, headers=kit.auth(other))
        assert r.status_code == 404 and problem_type(r) == "not-found", (method, r.text)
    assert _exists(kit, f"users/{user}/uploads/{name}.png")

    # Its owner: no job made it, so no remix (a job takes it as its init_image).
    r = await kit.client.post(f"/v1/images/{name}/remix", headers=kit.auth(user))
    assert r.status_code == 409 and problem_type(r) == "invalid-transition", r.text
    assert f'"init_image": "{name}"' in r.json()["detail"]
    await kit.project()
    assert await _names(kit, user, "?starred=true") == []  # B's PATCH recorded nothing


async def _patch(kit: Kit, user: str, name: str, body: dict[str, bool]) -> dict[str, object]:
    r = await kit.client.patch(f"/v1/images/{name}", json=body, headers=kit.auth(user))
    assert r.status_code == 200, r.text
    assert int(r.headers["X-Position"]) > 0
    view: dict[str, object] = r.json()
    return view


def _upload_events(kit: Kit, upload_id: str) -> list[str]:
    return [type(e).__qualname__ for e in kit.app.events.get(uuid.UUID(upload_id))]


async def test_an_uploads_flags_are_its_owners_and_filter_the_list(
    kit: Kit, user: str, other: str
) -> None:
    _, [made] = await _job_with_images(kit, user, count=1)
    one, two = [(await _upload(kit, user, _png(side))).json()["upload_id"] for side in (32, 40)]
    await kit.project()  # in the gallery (a PATCH of an image not in it yet waits for it)

    view = await _patch(kit, user, one, {"starred": True})
    assert (view["name"], view["upload_id"], view["starred"]) == (one, one, True)
    assert (view["is_intermediate"], view["image_origin"]) == (False, "external")
    assert httpx.get(str(view["url"])).content == _png(32)
    again = await _patch(kit, user, one, {"starred": True})  # as it is: nothing recorded
    assert again["starred"] is True
    view = await _patch(kit, user, two, {"starred": True, "is_intermediate": True})
    assert (view["starred"], view["is_intermediate"]) == (True, True)
    await _patch(kit, user, two, {"starred": False})
    assert _upload_events(kit, one)[-1:] == ["Upload.Starred"]  # once
    assert _upload_events(kit, two)[-3:] == [
        "Upload.Starred",
        "Upload.MarkedIntermediate",
        "Upload.Unstarred",
    ]
    for bad in ({"starred": "yes"}, {"x": 1}):
        r = await kit.client.patch(f"/v1/images/{one}", json=bad, headers=kit.auth(user))
        assert r.status_code == 422 and problem_type(r) == "invalid-request", (bad, r.text)
    r = await kit.client.patch(
        f"/v1/images/{one}", json={"starred": False}, headers=kit.auth(other)
    )
    assert r.status_code == 404 and problem_type(r) == "not-found", r.text

    await kit.project()
    assert await _names(kit, user) == [one, made["name"]]  # the intermediate one left out
    assert await _names(kit, user, "?is_intermediate=true") == [two]
    assert await _names(kit, user, "?starred=true") == [one]
    assert await _names(kit, user, "?starred=true&origin=external") == [one]
    assert await _names(kit, user, "?starred=false") == [made["name"]]
    r = await kit.client.get(f"/v1/images/{two}", headers=kit.auth(user))
    assert (r.json()["starred"], r.json()["is_intermediate"]) == (False, True)
    assert await _names(kit, other, "?starred=true") == []
    assert kit.app.upload(user, uuid.UUID(one)).starred  # B's PATCH changed nothing

    r = await kit.client.delete(f"/v1/images/{one}", headers=kit.auth(user))
    assert r.status_code == 204, r.text
    r = await kit.client.patch(f"/v1/images/{one}", json={"starred": False}, headers=kit.auth(user))
    assert r.status_code == 404 and problem_type(r) == "not-found", r.text  # deleted: gone
    await kit.project()
    assert await _names(kit, user, "?starred=true") == []


async def test_an_upload_flagged_right_after_completion_answers_once_the_gallery_has_it(
    kit: Kit, user: str
) -> None:
    """The gallery is a read model: an upload completed a moment ago may not be in it yet. The
    PATCH is recorded at once (the event store finds the upload by its name) and answers when
    the view has caught up, or, past the read-your-writes wait (1 s here), 503 with
    Retry-After, the change kept; the same request again answers it."""
    one = (await _upload(kit, user, _png(32))).json()["upload_id"]

    async def projected_soon() -> None:
        await asyncio.sleep(0.3)
        await kit.project()

    catching_up = asyncio.create_task(projected_soon())
    view = await _patch(kit, user, one, {"starred": True})
    await catching_up
    assert (view["name"], view["starred"]) == (one, True)

    three = (await _upload(kit, user, _png(40))).json()["upload_id"]
    r = await kit.client.patch(
        f"/v1/images/{three}", json={"starred": True}, headers=kit.auth(user)
    )
    assert r.status_code == 503 and problem_type(r) == "not-yet-consistent", r.text
    assert r.headers["Retry-After"] == "1" and int(r.headers["X-Position"]) > 0
    assert kit.app.upload(user, uuid.UUID(three)).starred  # recorded
    await kit.project()
    view = await _patch(kit, user, three, {"starred": True})
    assert view["starred"] is True
    assert _upload_events(kit, three).count("Upload.Starred") == 1


async def test_an_upload_deleted_right_after_completion_is_deleted(kit: Kit, user: str) -> None:
    """Not in the gallery yet, found in the event store: deleted, its object too; a repeat,
    once the gallery has the deletion, is a 404."""
    upload_id = (await _upload(kit, user, _png())).json()["upload_id"]
    key = kit.app.upload(user, uuid.UUID(upload_id)).key
    r = await kit.client.delete(f"/v1/images/{upload_id}", headers=kit.auth(user))
    assert r.status_code == 204, r.text
    assert _upload_events(kit, upload_id)[-1] == "Upload.Deleted" and not _exists(kit, key)
    await kit.project()
    r = await kit.client.delete(f"/v1/images/{upload_id}", headers=kit.auth(user))
    assert r.status_code == 404 and problem_type(r) == "not-found", r.text


async def _board(kit: Kit, user: str, name: str) -> str:
    r = await kit.client.post("/v1/boards", json={"name": name}, headers=kit.auth(user))
    assert r.status_code == 201, r.text
    return str(r.json()["board_id"])


async def _board_counts(kit: Kit, user: str) -> dict[str, int]:
    r = await kit.client.get("/v1/boards", headers=kit.auth(user))
    assert r.status_code == 200, r.text
    return {b["board_id"]: b["image_count"] for b in r.json()["items"]}


async def test_an_upload_goes_on_its_owners_boards_only_and_leaves_them_deleted(
    kit: Kit, user: str, other: str
) -> None:
    _, [made] = await _job_with_images(kit, user, count=1)
    kept, gone = [(await _upload(kit, user, _png(side))).json()["upload_id"] for side in (32, 40)]
    seas, skies = await _board(kit, user, "Seas"), await _board(kit, user, "Skies")
    theirs = await _board(kit, other, "Theirs")
    auth = kit.auth(user)
    for board, name in ((seas, kept), (seas, made["name"]), (seas, gone), (skies, kept)):
        r = await kit.client.put(f"/v1/boards/{board}/images/{name}", headers=auth)
        assert r.status_code == 204, r.text
    r = await kit.client.put(f"/v1/boards/{skies}/images/{kept}", headers=auth)  # again
    assert r.status_code == 204, r.text
    assert _upload_events(kit, kept).count("Upload.Filed") == 2  # seas, then skies: once each

    # Another tenant: not on their board, not on the owner's, not taken off it.
    for method, board in (("PUT", theirs), ("PUT", skies), ("DELETE", skies)):
        path = f"/v1/boards/{board}/images/{kept}"
        r = await kit.client.request(method, path, headers=kit.auth(other))
        assert r.status_code == 404 and problem_type(r) == "not-found", (method, board, r.text)
    # A pending upload is no image yet; an unknown one is none.
    pending = await kit.client.post("/v1/uploads", json={"content_type": "image/png"}, headers=auth)
    for name in (pending.json()["upload_id"], str(uuid.uuid4())):
        r = await kit.client.put(f"/v1/boards/{seas}/images/{name}", headers=auth)
        assert r.status_code == 404 and problem_type(r) == "not-found", r.text

    await kit.project()
    assert await _names(kit, user, f"?board_id={seas}") == [gone, made["name"]]
    assert await _names(kit, user, f"?board_id={skies}") == [kept]  # it moved
    assert await _names(kit, user, f"?board_id={skies}&origin=external") == [kept]
    assert await _names(kit, other, f"?board_id={skies}") == []
    assert await _board_counts(kit, user) == {seas: 2, skies: 1}
    assert await _board_counts(kit, other) == {theirs: 0}

    # Deleted as an image, it leaves its board; taken off one, it stays, on no board.
    r = await kit.client.delete(f"/v1/images/{gone}", headers=auth)
    assert r.status_code == 204, r.text
    r = await kit.client.delete(f"/v1/boards/{skies}/images/{kept}", headers=auth)
    assert r.status_code == 204, r.text
    r = await kit.client.delete(f"/v1/boards/{skies}/images/{kept}", headers=auth)
    assert r.status_code == 404 and problem_type(r) == "not-found", r.text
    await kit.project()
    assert await _names(kit, user, f"?board_id={seas}") == [made["name"]]
    assert await _names(kit, user, f"?board_id={skies}") == []
    assert await _board_counts(kit, user) == {seas: 1, skies: 0}
    assert kept in await _names(kit, user)
    r = await kit.client.put(f"/v1/boards/{seas}/images/{gone}", headers=auth)
    assert r.status_code == 404 and problem_type(r) == "not-found", r.text


async def test_a_deleted_upload_leaves_the_gallery_and_the_quota(kit: Kit, user: str) -> None:
    one = (await _upload(kit, user, _png(32))).json()
    two = (await _upload(kit, user, _png(40))).json()
    await kit.project()
    assert await _names(kit, user) == [two["upload_id"], one["upload_id"]]
    assert await _storage_used(kit, user) == one["size_bytes"] + two["size_bytes"]

    # Deleted as an image: the upload is deleted (its event), its object removed.
    r = await kit.client.delete(f"/v1/images/{one['upload_id']}", headers=kit.auth(user))
    assert r.status_code == 204, r.text
    key = f"users/{user}/uploads/{one['upload_id']}.png"
    assert int(r.headers["X-Position"]) > 0 and not _exists(kit, key)
    assert kit.app.upload(user, uuid.UUID(two["upload_id"])).usable
    gone = await kit.client.get(f"/v1/uploads/{one['upload_id']}", headers=kit.auth(user))
    assert gone.status_code == 404
    again = await kit.client.delete(f"/v1/images/{one['upload_id']}", headers=kit.auth(user))
    assert again.status_code == 404 and problem_type(again) == "not-found"
    # Deleted as an upload: it leaves the gallery too.
    r = await kit.client.delete(f"/v1/uploads/{two['upload_id']}", headers=kit.auth(user))
    assert r.status_code == 204, r.text
    await kit.project()
    assert await _names(kit, user) == []
    assert await _names(kit, user, "?origin=external") == []
    for upload in (one, two):
        r = await kit.client.get(f"/v1/images/{upload['upload_id']}", headers=kit.auth(user))
        assert r.status_code == 404 and problem_type(r) == "not-found"
    assert await _storage_used(kit, user) == 0


async def test_a_mask_upload_is_listed_as_a_mask(kit: Kit, user: str) -> None:
    photo = (await _upload(kit, user, _png(32))).json()["upload_id"]
    mask = (await _upload(kit, user, _png(40), purpose="mask")).json()["upload_id"]
    await kit.project()
    assert await _names(kit, user, "?category=mask") == [mask]
    assert await _names(kit, user, "?category=user") == [photo]
    assert await _names(kit, user, "?origin=external") == [mask, photo]
    r = await kit.client.get(f"/v1/images/{mask}", headers=kit.auth(user))
    assert (r.json()["image_category"], r.json()["image_origin"]) == ("mask", "external")

    headers = kit.auth(user) | {"Idempotency-Key": f"mask-{uuid.uuid4()}"}
    body = {"content_type": "image/png", "purpose": "mask"}
    first = await kit.client.post("/v1/uploads", json=body, headers=headers)
    assert first.status_code == 201 and first.json()["purpose"] == "mask", first.text
    again = await kit.client.post("/v1/uploads", json=body, headers=headers)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    other = await kit.client.post("/v1/uploads", json=body | {"purpose": "init"}, headers=headers)
    assert other.status_code == 409 and problem_type(other) == "idempotency-conflict", other.text
    assert "purpose" in other.json()["detail"]
    for bad in ("control", "", None, 1):
        r = await kit.client.post(
            "/v1/uploads", json=body | {"purpose": bad}, headers=kit.auth(user)
        )
        assert r.status_code == 422 and problem_type(r) == "invalid-request", (bad, r.text)
    r = await kit.client.post(
        "/v1/uploads", json={"content_type": "image/png"}, headers=kit.auth(user)
    )
    assert r.json()["purpose"] == "init"  # the default


# ------------------------------------------------------------------- replay and verify

_IMAGE_ROWS = (
    "SELECT name, job_id, upload_id, user_id, key, thumbnail_key, size_bytes, width, height,"
    " image_category, image_origin, starred, is_intermediate, deleted_at, created_at, position"
    " FROM images ORDER BY name"
)


async def test_a_replay_keeps_the_upload_images_and_verify_compares_them(
    database_url: str,
) -> None:
    with fresh_database(database_url) as url:
        settings = Settings(database_url=url)
        app = new_app(settings)
        try:
            user = "uploader"
            app.register_user(user, T0)
            facts = ImageFacts(size_bytes=300, format="PNG", width=64, height=48)
            kept, deleted, rejected, _pending = (
                app.request_upload(user, request_key=k, content_type="image/png", at=T0).upload_id
                for k in ("kept", "deleted", "rejected", "pending")
            )
            for upload_id in (kept, deleted):
                app.complete_upload(user, upload_id, facts=facts, at=T0)
            app.complete_upload(
                user, rejected, facts=ImageFacts(size_bytes=5, problem="not an image"), at=T0
            )
            app.flag_upload(user, kept, starred=True, is_intermediate=True, at=T0)
            app.flag_upload(user, kept, is_intermediate=False, at=T0)
            mask = app.request_upload(
                user, request_key="mask", content_type="image/png", at=T0, purpose=MASK
            ).upload_id
            app.complete_upload(user, mask, facts=facts, at=T0)
            board = app.create_board(user, request_key="b", name="Kept", at=T0).board_id
            for upload_id in (kept, deleted):
                app.add_board_image(user, board, image_name=str(upload_id), at=T0)
            app.delete_upload(user, deleted, at=T0)

            pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
            try:
                await project_everything(app, pool)
                async with pool.acquire() as conn:
                    before = [tuple(r) for r in await conn.fetch(_IMAGE_ROWS)]
                    assert [(r[2], r[9]) for r in before if r[2] == mask] == [(mask, "mask")]
                    assert [
                        (r[0], r[2], r[6], r[9], r[10], r[11], r[12], r[13] is None)
                        for r in before
                        if r[2] != mask
                    ] == [
                        (str(u), u, 300, "user", "external", u == kept, False, u == kept)
                        for u in sorted((kept, deleted), key=str)
                    ]  # the rejected and the pending uploads are no images
                    filed = await conn.fetch("SELECT image_name FROM board_images")
                    assert [r["image_name"] for r in filed] == [str(kept)]  # deleted: off it
                    await _replay_jobs(app, conn)  # a rebuild of the jobs projection
                    assert [tuple(r) for r in await conn.fetch(_IMAGE_ROWS)] == before
            finally:
                await pool.close()

            clean = run_verify(settings)
            assert clean.returncode == 0, clean.stdout + clean.stderr
            conn = await asyncpg.connect(url)
            try:
                corruptions = (
                    ("image_origin = 'internal'", "image_origin = 'external'"),
                    ("size_bytes = size_bytes + 1", "size_bytes = size_bytes - 1"),
                    ("deleted_at = now()", "deleted_at = NULL"),
                    ("starred = false", "starred = true"),
                    ("is_intermediate = true", "is_intermediate = false"),
                )
                await verify_catches(settings, conn, corruptions, "upload_id = $1", kept)
                mask_category = (("image_category = 'user'", "image_category = 'mask'"),)
                await verify_catches(settings, conn, mask_category, "upload_id = $1", mask)
                await conn.execute("DELETE FROM images WHERE upload_id = $1", deleted)
                result = run_verify(settings)
                assert result.returncode == 1 and "images = replay" in result.stdout
            finally:
                await conn.close()
        finally:
            app.close()
